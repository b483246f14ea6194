"""The encoder-only (BERT-style) and decoder-only (Llama-style) models and the
encoder-decoder's variant options: sizes against the published parameter
counts, cached generation against the full pass, padding, `.keras` files."""

import os

import keras
import numpy as np
import pytest
from keras import ops

from keras_transformer.models import CAUSAL_LM_PRESETS
from keras_transformer.models import ENCODER_PRESETS
from keras_transformer.models import CausalLM
from keras_transformer.models import EncoderBackbone
from keras_transformer.models import Transformer
from tests.backend import to_numpy


def parameter_count(config, vocab_size, kind):
    """The parameters a config's model has, counted by hand (no weights made)."""
    d, ff, layers = config["d_model"], config["d_ff"], config["num_layers"]
    kv_heads = config.get("num_key_value_heads") or config["num_heads"]
    head = d // config["num_heads"]
    llama = kind == "causal_lm"
    bias = config.get("use_bias", not llama)
    gated = config.get("feed_forward", "swiglu" if llama else "gelu") in ("swiglu", "geglu")
    rms = config.get("norm", "rms" if llama else "layer") == "rms"
    norm = d if rms else 2 * d
    kv = kv_heads * head  # the size of the keys (and of the values)
    attention = 2 * d * d + 2 * d * kv + (2 * d + 2 * kv if bias else 0)
    feed_forward = (3 if gated else 2) * d * ff + ((2 * ff if gated else ff) + d if bias else 0)
    total = vocab_size * d + layers * (attention + feed_forward + 2 * norm)
    position = config.get("position_embedding", "rotary" if llama else "learned")
    if position == "learned":
        total += config.get("max_length", 2048 if llama else 512) * d
    total += norm  # a final norm (pre-norm) or the embeddings' norm (post-norm)
    if llama and not config.get("tie_embeddings", True):
        total += vocab_size * d
    return total


SMALL_VARIANTS = [
    ("causal_lm", dict(num_layers=2, d_model=32, num_heads=4, num_key_value_heads=2, d_ff=48)),
    ("causal_lm", dict(num_layers=1, d_model=32, num_heads=4, d_ff=40, use_bias=True, norm="layer",
                       feed_forward="relu", tie_embeddings=False, position_embedding="learned", max_length=64)),
    ("encoder", dict(num_layers=2, d_model=32, num_heads=4, d_ff=64, max_length=40)),
    ("encoder", dict(num_layers=1, d_model=32, num_heads=4, d_ff=64, norm="rms", feed_forward="geglu",
                     use_bias=False, norm_first=True, position_embedding="rotary", num_key_value_heads=1)),
]


@pytest.mark.parametrize("kind, config", SMALL_VARIANTS)
def test_the_hand_count_of_parameters_is_the_built_models(kind, config):
    model = (CausalLM if kind == "causal_lm" else EncoderBackbone)(vocab_size=50, **config)
    model.build()
    assert model.count_params() == parameter_count(config, 50, kind)


@pytest.mark.parametrize(
    "kind, preset, vocab_size, published",
    [
        # Published counts: Llama 2 7B (vocabulary 32,000, separate output matrix), Llama 3 8B (128,256),
        # Mistral 7B (32,000); BERT-base (30,522) is 109,482,240 with its 2 segment embeddings and its
        # pooler (1,536 + 590,592), which this backbone leaves to the model built on it.
        ("causal_lm", "llama2_7b", 32000, 6_738_415_616),
        ("causal_lm", "llama3_8b", 128256, 8_030_261_248),
        ("causal_lm", "mistral_7b", 32000, 7_241_732_096),
        ("encoder", "bert_base", 30522, 109_482_240 - 1_536 - 590_592),
    ],
)
def test_presets_have_the_published_sizes(kind, preset, vocab_size, published):
    presets = CAUSAL_LM_PRESETS if kind == "causal_lm" else ENCODER_PRESETS
    assert parameter_count(presets[preset], vocab_size, kind) == published
    if kind == "causal_lm":  # (their output matrices are their own)
        assert CausalLM.from_preset(preset, vocab_size=vocab_size).tie_embeddings is False


def test_presets_build_and_take_overrides():
    lm = CausalLM.from_preset("llama_tiny", vocab_size=64, num_layers=1)
    lm.build()
    assert lm.num_layers == 1 and lm.encoder.stack[0].self_attention.num_key_value_heads == 2
    assert CausalLM.from_preset("mistral_7b", vocab_size=8).block_options["sliding_window"] == 4096
    with pytest.raises(ValueError, match="`preset`"):
        CausalLM.from_preset("llama9", vocab_size=8)
    with pytest.raises(ValueError, match="`preset`"):
        EncoderBackbone.from_preset("llama_tiny", vocab_size=8)


def _ids(batch, length, vocab=50, seed=0):
    return np.random.RandomState(seed).randint(1, vocab, size=(batch, length)).astype("int32")


@pytest.mark.parametrize("window", [None, 3])
def test_cached_generation_steps_equal_the_full_pass(window):
    lm = CausalLM(50, num_layers=2, d_model=32, num_heads=4, num_key_value_heads=2, d_ff=48, sliding_window=window)
    ids = _ids(2, 8)
    full = to_numpy(lm(ids))
    cache = lm.init_cache(2, 8)
    # A prompt of 3 in one pass, then one token a step.
    logits, cache = lm.call_with_cache(ids[:, :3], cache, 0)
    outputs = [to_numpy(logits)]
    for t in range(3, 8):
        logits, cache = lm.call_with_cache(ids[:, t : t + 1], cache, t)
        outputs.append(to_numpy(logits))
    np.testing.assert_allclose(np.concatenate(outputs, axis=1), full, atol=1e-4)


def test_rows_at_different_positions_decode_as_each_alone():
    # Row 1 is a shorter prompt, right-padded: its padding slots are masked and its positions given.
    lm = CausalLM(50, num_layers=2, d_model=32, num_heads=4, num_key_value_heads=1, d_ff=48)
    ids = _ids(2, 6)
    lengths = np.array([6, 4])
    padded = ids.copy()
    padded[1, 4:] = 0
    cache = lm.init_cache(2, 8)
    slots = np.zeros((2, 8), bool)
    slots[0, :6], slots[1, :4] = True, True
    slots[:, 6:] = True  # slots the next step writes
    logits, cache = lm.call_with_cache(padded, cache, 0, attention_mask=slots[:, None, :])
    last = to_numpy(logits)[np.arange(2), lengths - 1]
    step = np.array([[7], [9]], "int32")
    positions = lengths[:, None].astype("int32")
    next_logits, _ = lm.call_with_cache(step, cache, 6, positions=positions, attention_mask=slots[:, None, :])
    for row in range(2):
        alone = np.concatenate([ids[row : row + 1, : lengths[row]], step[row : row + 1]], axis=1)
        expected = to_numpy(lm(alone))
        np.testing.assert_allclose(last[row], expected[0, lengths[row] - 1], atol=1e-4)
        np.testing.assert_allclose(to_numpy(next_logits)[row, 0], expected[0, -1], atol=1e-4)


def test_an_encoder_backbones_tokens_do_not_depend_on_padding():
    backbone = EncoderBackbone.from_preset("bert_tiny", vocab_size=50, dropout=0.0)
    ids = _ids(2, 6)
    padded = np.concatenate([ids, np.zeros((2, 4), "int32")], axis=1)
    np.testing.assert_allclose(to_numpy(backbone(padded))[:, :6], to_numpy(backbone(ids)), atol=1e-5)
    mask = backbone.compute_mask(ops.convert_to_tensor(padded))
    np.testing.assert_array_equal(to_numpy(mask), padded != 0)


@pytest.mark.parametrize(
    "make",
    [
        # Options set to the paper's values on models whose defaults are not: the file keeps them.
        lambda: CausalLM(50, num_layers=1, d_model=32, num_heads=4, d_ff=48, norm="layer", feed_forward="relu",
                         use_bias=True, sliding_window=3, tie_embeddings=False),
        lambda: EncoderBackbone(50, num_layers=1, d_model=32, num_heads=4, d_ff=48, feed_forward=None,
                                position_embedding="rotary", norm="rms"),
        lambda: Transformer(50, 50, num_layers=1, d_model=32, num_heads=4, d_ff=48, position_embedding="rotary",
                            norm="rms", feed_forward="swiglu", norm_first=True, use_bias=False, num_key_value_heads=2),
    ],
    ids=["causal_lm", "encoder", "transformer"],
)
def test_keras_files_round_trip(tmp_path, make):
    model = make()
    ids = _ids(2, 5)
    inputs = {"source": ids, "target": ids} if isinstance(model, Transformer) else ids
    expected = to_numpy(model(inputs))
    path = os.path.join(tmp_path, "model.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.get_config() == model.get_config()
    np.testing.assert_allclose(to_numpy(loaded(inputs)), expected, atol=1e-6)


def test_a_transformer_with_the_variants_decodes_step_by_step_as_its_full_pass():
    model = Transformer(50, 50, num_layers=2, d_model=32, num_heads=4, d_ff=48, position_embedding="rotary",
                        norm="rms", feed_forward="swiglu", norm_first=True, num_key_value_heads=2)
    source, target = _ids(2, 7), _ids(2, 5, seed=1)
    source[1, 5:] = 0
    full = to_numpy(model({"source": source, "target": target}))
    encoded, source_mask = model.encode(source)
    cache = model.init_cache(encoded, 5)
    outputs = []
    for t in range(5):
        logits, cache = model.decode(target[:, t : t + 1], encoded, source_mask, cache=cache, cache_index=t)
        outputs.append(to_numpy(logits))
    np.testing.assert_allclose(np.concatenate(outputs, axis=1), full, atol=1e-4)
    assert cache[0]["self_attention"].shape[2] == 2  # key/value heads only
    # Rotary: no sinusoids are added to the embeddings.
    assert model.get_config()["position_embedding"] == "rotary"


def test_the_papers_transformer_config_is_unchanged():
    config = Transformer(50, 50, num_layers=1, d_model=32, num_heads=4, d_ff=48).get_config()
    for key in ("position_embedding", "norm", "feed_forward", "use_bias", "num_key_value_heads"):
        assert key not in config
    with pytest.raises(ValueError, match="`position_embedding`"):
        Transformer(50, 50, position_embedding="learned")


def test_left_padded_rows_under_a_sliding_window_decode_as_each_alone():
    # The window counts cache slots: rows of unequal length are left-padded (a right-padded row's padding
    # would take window places, and `positions` is refused there). Rotary scores see only distances.
    lm = CausalLM(50, num_layers=2, d_model=32, num_heads=4, num_key_value_heads=2, d_ff=48, sliding_window=3)
    ids = _ids(2, 6)
    pad = np.array([0, 2])
    padded = ids.copy()
    padded[1, :2] = 0
    window = 3
    cache = lm.init_cache(2, 10)
    real = padded != 0
    # The prefill's keys: the 3 (empty) slots, then its 6 tokens.
    mask = np.concatenate([np.zeros((2, window), bool), real], axis=1)[:, None, :]
    logits, cache = lm.call_with_cache(padded, cache, 0, attention_mask=mask)
    slot_real = np.zeros((2, window), bool)
    for position in range(6):
        slot_real[:, position % window] = real[:, position]
    step = np.array([[7], [9]], "int32")
    mask = np.concatenate([slot_real, np.ones((2, 1), bool)], axis=1)[:, None, :]
    next_logits, _ = lm.call_with_cache(step, cache, 6, attention_mask=mask)
    for row in range(2):
        alone = np.concatenate([ids[row : row + 1, pad[row] :], step[row : row + 1]], axis=1)
        expected = to_numpy(lm(alone))
        np.testing.assert_allclose(to_numpy(logits)[row, -1], expected[0, -2], atol=1e-4)
        np.testing.assert_allclose(to_numpy(next_logits)[row, 0], expected[0, -1], atol=1e-4)
    with pytest.raises(ValueError, match="cannot be given under a sliding window"):
        lm.call_with_cache(step, cache, 6, positions=np.array([[6], [4]], "int32"))


@pytest.mark.parametrize("make", [
    lambda: CausalLM(50, num_layers=1, d_model=32, num_heads=4, d_ff=48),
    lambda: EncoderBackbone(50, num_layers=1, d_model=32, num_heads=4, d_ff=48),
    lambda: Transformer(50, 50, num_layers=1, d_model=32, num_heads=4, d_ff=48),
], ids=["causal_lm", "encoder", "transformer"])
def test_a_model_saved_before_its_first_call_keeps_its_weights(tmp_path, make):
    # Keras writes the weights of built layers only: a model saved unbuilt held none and loaded, without a
    # word, as a new random model. Saving builds it (its weights do not depend on input shapes).
    model = make()
    path = os.path.join(tmp_path, "model.keras")
    model.save(path)
    ids = _ids(2, 5)
    inputs = {"source": ids, "target": ids} if isinstance(model, Transformer) else ids
    np.testing.assert_allclose(to_numpy(keras.saving.load_model(path)(inputs)), to_numpy(model(inputs)), atol=1e-6)


def test_the_rotary_scaling_factor_reaches_every_block_and_the_keras_file(tmp_path):
    # (The backbones took every other rotary option but not this one: passing it failed in keras.Model.)
    config = dict(num_layers=2, d_model=32, num_heads=4, d_ff=48, max_length=64)
    lm = CausalLM(50, rotary_scaling_factor=4.0, **config)
    ids = _ids(1, 12)
    scaled = to_numpy(lm(ids))
    assert [block.self_attention._rotary.scaling_factor for block in lm.encoder.stack] == [4.0, 4.0]
    plain = CausalLM(50, **config)
    plain(ids)
    plain.set_weights(lm.get_weights())
    assert np.abs(to_numpy(plain(ids)) - scaled).max() > 1e-3  # the factor changes the logits
    path = str(tmp_path / "lm.keras")
    lm.save(path)
    np.testing.assert_allclose(to_numpy(keras.saving.load_model(path)(ids)), scaled, atol=1e-5)
    encoder = EncoderBackbone(50, position_embedding="rotary", rotary_scaling_factor=2.0, **config)
    encoder(ids)
    assert encoder.encoder.stack[0].self_attention._rotary.scaling_factor == 2.0
    assert EncoderBackbone.from_config(encoder.get_config()).block_options["rotary_scaling_factor"] == 2.0
    # Refused by name (an infinite factor turned the rotation off; 1e39 failed only in the first call).
    for bad in (0.5, True, "4", None, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="`rotary_scaling_factor` must be a finite number of at least 1 \\(a float32\\)"):
            CausalLM(50, rotary_scaling_factor=bad, **config)
    with pytest.raises(ValueError, match="`rotary_max_wavelength` must be a finite number above 1 \\(a float32\\)"):
        CausalLM(50, rotary_max_wavelength=1e39, **config)


def test_rotary_options_without_rotary_embeddings_are_ignored_with_a_warning_and_old_files_load():
    # 180e07f wrote rotary_max_wavelength into the configs of models without rotary embeddings
    # (the backbones always, Transformer when set), and a preset override such as llama3_8b with learned
    # positions keeps the preset's wavelength: refusing them made those files and overrides fail.
    config = dict(num_layers=1, d_model=32, num_heads=4, d_ff=48, max_length=64)
    old_files = [
        (Transformer, dict(source_vocab_size=50, target_vocab_size=50, rotary_max_wavelength=500.0, **config)),
        (EncoderBackbone, dict(vocab_size=50, rotary_max_wavelength=500.0, **config)),
        (CausalLM, dict(vocab_size=50, position_embedding="learned", rotary_max_wavelength=500.0, **config)),
    ]
    for cls, old_config in old_files:
        with pytest.warns(UserWarning, match="ignored without position_embedding='rotary'"):
            model = cls.from_config(old_config)
        assert "rotary_max_wavelength" not in model.get_config()  # (saved again: dropped)
    with pytest.warns(UserWarning, match="ignored without position_embedding='rotary'"):
        CausalLM.from_preset("llama3_8b", vocab_size=50, position_embedding="learned")
    import warnings

    with warnings.catch_warnings(record=True) as caught:  # (once, not once per stack)
        warnings.simplefilter("always")
        Transformer(50, 50, rotary_max_wavelength=500.0, **config)
    assert sum("ignored without position_embedding='rotary'" in str(w.message) for w in caught) == 1


def test_configs_hold_plain_floats_and_only_options_older_versions_lack_when_set():
    from fractions import Fraction
    import json

    config = dict(num_layers=1, d_model=32, num_heads=4, d_ff=48, max_length=64)
    for model in (CausalLM(50, rotary_scaling_factor=Fraction(3, 2), rotary_max_wavelength=np.float32(500), **config),
                  Transformer(50, 50, position_embedding="rotary", rotary_scaling_factor=Fraction(3, 2), **config)):
        saved = model.get_config()
        json.dumps(saved)  # (a Fraction or a NumPy float made the model unsaveable)
        assert type(saved["rotary_scaling_factor"]) is float and saved["rotary_scaling_factor"] == 1.5
    # NumPy integers too (a block kept np.int64 key/value heads and windows: json.dumps failed).
    saved = CausalLM(50, num_key_value_heads=np.int64(2), sliding_window=np.int64(8), **config).get_config()
    json.dumps(saved)
    assert type(saved["num_key_value_heads"]) is int and type(saved["sliding_window"]) is int
    # A backbone of default options writes none of them: a version before an option loads the file.
    assert "rotary_scaling_factor" not in CausalLM(50, **config).get_config()
    assert "rotary_scaling_factor" not in EncoderBackbone(50, **config).get_config()


def test_token_ids_of_unknown_rank_are_not_refused_for_their_rank():
    import tensorflow as tf

    from keras_transformer.layers import validation

    validation.check_rank("token_ids", tf.TensorShape(None), 2)  # (unknown: nothing to check yet)


def test_token_ids_of_the_wrong_rank_are_refused_by_name():
    # One sentence's ids without the batch axis failed deep in a block ("`inputs` must have rank 3").
    config = dict(num_layers=1, d_model=32, num_heads=4, d_ff=48, max_length=64)
    ids = np.array([5, 6, 7], "int32")
    lm = CausalLM(50, **config)
    with pytest.raises(ValueError, match="`token_ids` must have rank 2. Received: token_ids.shape=\\(3,\\)"):
        lm(ids)
    with pytest.raises(ValueError, match="`token_ids` must have rank 2"):
        lm.call_with_cache(ids, lm.init_cache(1, 8), 0)
    with pytest.raises(ValueError, match="`token_ids` must have rank 2"):
        EncoderBackbone(50, **config)(ids)
    model = Transformer(50, 50, num_layers=1, d_model=32, num_heads=4, d_ff=48, max_length=64)
    with pytest.raises(ValueError, match="`source` must have rank 2"):
        model({"source": ids, "target": ids[None]})
    with pytest.raises(ValueError, match="`target` must have rank 2"):
        model({"source": ids[None], "target": ids})


def test_a_subclass_with_other_block_defaults_round_trips_its_config():
    # A config leaves out the options equal to the class's own defaults, not to the library's: a
    # Transformer subclass whose default norm is "rms", built with norm="layer", came back with "rms".
    class RmsTransformer(Transformer):
        def __init__(self, *args, norm="rms", **kwargs):
            super().__init__(*args, norm=norm, **kwargs)

    config = dict(num_layers=1, d_model=32, num_heads=4, d_ff=48, max_length=64)
    model = RmsTransformer(50, 50, norm="layer", **config)
    assert RmsTransformer.from_config(model.get_config()).encoder.options["norm"] == "layer"
    assert RmsTransformer.from_config(RmsTransformer(50, 50, **config).get_config()).encoder.options["norm"] == "rms"


def test_rotary_numbers_too_large_for_a_float_are_refused_by_name():
    from fractions import Fraction

    for huge in (10**400, Fraction(10**400)):  # (math.isfinite raised OverflowError on these)
        with pytest.raises(ValueError, match="`rotary_max_wavelength` must be a finite number above 1"):
            CausalLM(50, rotary_max_wavelength=huge, num_layers=1, d_model=32, num_heads=4, d_ff=48)


def test_a_subclass_with_another_position_embedding_default_round_trips_its_config():
    # position_embedding is written against the class's own default too: written against the library's
    # ("sinusoidal"), a subclass defaulting to "rotary" built with "sinusoidal" came back rotary.
    class RotaryTransformer(Transformer):
        def __init__(self, *args, position_embedding="rotary", **kwargs):
            super().__init__(*args, position_embedding=position_embedding, **kwargs)

    config = dict(num_layers=1, d_model=32, num_heads=4, d_ff=48, max_length=64)
    model = RotaryTransformer(50, 50, position_embedding="sinusoidal", **config)
    assert RotaryTransformer.from_config(model.get_config()).position_embedding == "sinusoidal"


def test_numpy_arguments_leave_a_json_config_and_arrays_are_not_choices():
    import json
    import warnings

    config = dict(num_layers=1, d_model=32, num_heads=4, d_ff=48, max_length=64)
    saved = Transformer(50, 50, attention_dropout=np.float32(0.25), **config).get_config()
    json.dumps(saved)  # (a NumPy attention_dropout stayed in the config: not JSON)
    assert type(saved["attention_dropout"]) is float and saved["attention_dropout"] == 0.25
    # An array equal to a choice passed `in` and stayed in the config; a list raised TypeError (unhashable).
    for bad in (np.array("rms"), ["rms"]):
        with pytest.raises(ValueError, match="`norm` must be one of"):
            EncoderBackbone(50, norm=bad, **config)
    with warnings.catch_warnings():  # (a float16 factor warned of an overflow in its comparison)
        warnings.simplefilter("error")
        model = EncoderBackbone(50, position_embedding="rotary", rotary_scaling_factor=np.float16(2), **config)
    assert model.block_options["rotary_scaling_factor"] == 2.0
