"""The variants since the paper as options of the same layers: rotary position
embeddings, grouped-query attention, RMSNorm, gated feed-forward networks and
sliding-window attention with its rolling cache; each against a NumPy
reference (tests/reference.py), through the cache, in `.keras` files and under
mixed precision."""

import os

import keras
import numpy as np
import pytest
from keras import ops

from keras_transformer.layers import DecoderLayer
from keras_transformer.layers import EncoderLayer
from keras_transformer.layers import FeedForward
from keras_transformer.layers import MultiHeadAttention
from keras_transformer.layers import RotaryEmbedding
from tests import reference
from tests.backend import compiled
from tests.backend import to_numpy

B, T, D, N, H = 2, 7, 16, 4, 4


def _random(*shape, seed=0):
    return np.random.RandomState(seed).normal(size=shape).astype("float32")


# -- RotaryEmbedding -------------------------------------------------------------------------------


@pytest.mark.parametrize("scaling_factor", [1.0, 4.0])
def test_rotary_embedding_rotates_feature_pairs_by_position(scaling_factor):
    x = _random(B, T, N, 8)
    rope = RotaryEmbedding(max_wavelength=500, scaling_factor=scaling_factor)
    expected = reference.rotary(x, np.arange(T), 500, scaling_factor)
    np.testing.assert_allclose(to_numpy(rope(x)), expected, atol=1e-5)
    # From a start index (a decoding step), and per-row positions.
    np.testing.assert_allclose(
        to_numpy(rope(x, start_index=5)), reference.rotary(x, np.arange(T) + 5, 500, scaling_factor), atol=1e-4
    )
    rows = np.stack([np.arange(T) + 3, np.arange(T) + 11])
    np.testing.assert_allclose(
        to_numpy(rope(x, positions=rows)), reference.rotary(x, rows, 500, scaling_factor), atol=1e-4
    )
    # Heads first, [B, N, T, H], with sequence_axis=2.
    heads_first = RotaryEmbedding(max_wavelength=500, scaling_factor=scaling_factor, sequence_axis=2)
    np.testing.assert_allclose(
        to_numpy(heads_first(np.transpose(x, (0, 2, 1, 3), ), positions=rows)),
        np.transpose(reference.rotary(x, rows, 500, scaling_factor), (0, 2, 1, 3)), atol=1e-4,
    )


def test_rotated_dot_products_depend_only_on_distance():
    rope = RotaryEmbedding()
    q, k = _random(1, 1, 1, 16, seed=1), _random(1, 1, 1, 16, seed=2)

    def score(query_position, key_position):
        rq = to_numpy(rope(q, positions=[query_position]))
        rk = to_numpy(rope(k, positions=[key_position]))
        return float(np.sum(rq * rk))

    assert score(9, 4) == pytest.approx(score(105, 100), abs=1e-4)
    assert score(9, 4) != pytest.approx(score(9, 5), abs=1e-3)
    # A rotation: norms are kept.
    np.testing.assert_allclose(np.linalg.norm(to_numpy(rope(q, positions=[77]))), np.linalg.norm(q), rtol=1e-6)


def test_rotary_embedding_refuses_odd_features_and_bad_arguments():
    with pytest.raises(ValueError, match="even"):
        RotaryEmbedding()(_random(1, 2, 1, 3))
    with pytest.raises(ValueError, match="max_wavelength"):
        RotaryEmbedding(max_wavelength=1)
    with pytest.raises(ValueError, match="scaling_factor"):
        RotaryEmbedding(scaling_factor=0.5)
    with pytest.raises(ValueError, match="key_dim must be even|`key_dim` must be even"):
        MultiHeadAttention(2, 3, position_embedding="rotary")
    with pytest.raises(ValueError, match="position_embedding"):
        MultiHeadAttention(2, 4, position_embedding="alibi")


# -- MultiHeadAttention: grouped-query, rotary, window ----------------------------------------------


def _no_bias_attention(**kwargs):
    return MultiHeadAttention(N, H, use_bias=False, **kwargs)


@pytest.mark.parametrize("kv_heads", [1, 2, 4])
@pytest.mark.parametrize("rotary", [False, True])
def test_attention_matches_the_numpy_reference(kv_heads, rotary):
    x = _random(B, T, D)
    layer = _no_bias_attention(num_key_value_heads=kv_heads, position_embedding="rotary" if rotary else None)
    mask = np.random.RandomState(3).uniform(size=(B, T, T)) > 0.3
    mask[:, :, 0] = True
    out, scores = layer(x, x, attention_mask=mask, return_attention_scores=True)
    expected, expected_scores = reference.grouped_query_attention(
        x, x, [to_numpy(w) for w in layer.weights], N, mask, positions=np.arange(T) if rotary else None
    )
    np.testing.assert_allclose(to_numpy(out), expected, atol=1e-5)
    np.testing.assert_allclose(to_numpy(scores), expected_scores, atol=1e-5)


def test_grouped_query_attention_equals_multi_head_with_repeated_key_value_heads():
    x, memory = _random(B, T, D), _random(B, 9, D, seed=1)
    grouped = MultiHeadAttention(N, H, num_key_value_heads=2)
    grouped(x, memory)
    full = MultiHeadAttention(N, H)
    full(x, memory)
    wq, bq, wk, bk, wv, bv, wo, bo = [to_numpy(w) for w in grouped.weights]
    assert wk.shape == (D, 2, H) and bk.shape == (2, H)
    repeat = lambda w: np.repeat(w, N // 2, axis=-2)  # noqa: E731 (head n reads key/value head n // 2)
    full.set_weights([wq, bq, repeat(wk), repeat(bk), repeat(wv), repeat(bv), wo, bo])
    np.testing.assert_allclose(to_numpy(grouped(x, memory)), to_numpy(full(x, memory)), atol=1e-5)
    # The fused path (repeated heads for the fused kernels) gives the same output.
    fused = MultiHeadAttention(N, H, num_key_value_heads=2, fused_attention=True)
    fused(x, memory)
    fused.set_weights(grouped.get_weights())
    np.testing.assert_allclose(to_numpy(fused(x, memory)), to_numpy(grouped(x, memory)), atol=1e-5)


def test_the_cache_holds_only_the_key_value_heads():
    for kv_heads in (1, 2, 4):
        layer = MultiHeadAttention(N, H, num_key_value_heads=kv_heads)
        assert tuple(layer.init_cache(3, 10).shape) == (3, 2, kv_heads, 10, H)
        layer(_random(1, 2, D), _random(1, 5, D))
        assert tuple(layer.compute_cache(_random(1, 5, D)).shape) == (1, 2, kv_heads, 5, H)
    with pytest.raises(ValueError, match="must divide `num_heads`"):
        MultiHeadAttention(N, H, num_key_value_heads=3)


@pytest.mark.parametrize("causal", [True, False])
def test_sliding_window_hides_keys_outside_it(causal):
    x = _random(B, T, D)
    layer = _no_bias_attention(sliding_window=3)
    _, scores = layer(x, x, use_causal_mask=causal, return_attention_scores=True)
    window = reference.window_mask(T, T, 3, causal)
    assert np.all(to_numpy(scores)[:, :, ~window] == 0)
    _, expected = reference.grouped_query_attention(
        x, x, [to_numpy(w) for w in layer.weights], N, np.broadcast_to(window, (B, T, T))
    )
    np.testing.assert_allclose(to_numpy(scores), expected, atol=1e-6)


def _step_by_step(layer, x, chunk, cache_length, **call_kwargs):
    cache = layer.init_cache(x.shape[0], cache_length)
    outputs, index = [], 0
    while index < x.shape[1]:
        piece = x[:, index : index + chunk]
        out, cache = layer(piece, piece, cache=cache, cache_index=index, **call_kwargs)
        outputs.append(to_numpy(out))
        index += piece.shape[1]
    return np.concatenate(outputs, axis=1), cache


@pytest.mark.parametrize("chunk", [1, 2, 5])
@pytest.mark.parametrize(
    "options",
    [
        dict(num_key_value_heads=1, position_embedding="rotary"),
        dict(num_key_value_heads=2, sliding_window=3),
        dict(position_embedding="rotary", sliding_window=3),
    ],
    ids=["mqa-rope", "gqa-window", "rope-window"],
)
def test_cached_steps_equal_the_full_pass(options, chunk):
    # Chunks longer than the window (5 > 3) write only their last 3 keys to the rolling cache,
    # after their own queries have read all of them.
    x = _random(B, 11, D)
    layer = MultiHeadAttention(N, H, **options)
    full = to_numpy(layer(x, x, use_causal_mask=True))
    stepped, cache = _step_by_step(layer, x, chunk, cache_length=16)
    np.testing.assert_allclose(stepped, full, atol=1e-5)
    if "sliding_window" in options:
        assert cache.shape[3] == 3  # a rolling cache of the window's slots, not max_length


def test_a_rolling_cache_holds_the_last_window_of_keys_in_slot_position_mod_window():
    x = _random(1, 8, D)
    layer = MultiHeadAttention(N, H, sliding_window=3)
    _, cache = _step_by_step(layer, x, 1, cache_length=8)
    _, keys, _ = layer._project(x, x, x)  # [1, N, 8, H], positions 0..7
    keys = to_numpy(keys)
    for position in (5, 6, 7):  # the last three, in slots 2, 0, 1
        np.testing.assert_allclose(to_numpy(cache)[0, 0, :, position % 3], keys[0, :, position], atol=1e-6)


def test_rotary_cached_steps_with_per_row_positions_equal_the_full_pass():
    # Row 1 starts at position 4 (as if 4 tokens came before it): its positions are given.
    x = _random(B, 6, D)
    positions = np.stack([np.arange(6), np.arange(6) + 4]).astype("int32")
    layer = MultiHeadAttention(N, H, position_embedding="rotary", use_bias=False)
    full = to_numpy(layer(x, x, use_causal_mask=True, positions=positions))
    expected, _ = reference.grouped_query_attention(
        x, x, [to_numpy(w) for w in layer.weights], N, np.broadcast_to(np.tril(np.ones((6, 6), bool)), (B, 6, 6)),
        positions=positions,
    )
    np.testing.assert_allclose(full, expected, atol=1e-5)
    cache = layer.init_cache(B, 6)
    outputs = []
    for t in range(6):
        step = x[:, t : t + 1]
        out, cache = layer(step, step, cache=cache, cache_index=t, positions=positions[:, t : t + 1])
        outputs.append(to_numpy(out))
    np.testing.assert_allclose(np.concatenate(outputs, axis=1), full, atol=1e-5)


def test_rolling_cache_steps_compile_with_traced_indices():
    x = _random(B, 9, D)
    layer = MultiHeadAttention(N, H, num_key_value_heads=2, position_embedding="rotary", sliding_window=4)
    full = to_numpy(layer(x, x, use_causal_mask=True))

    @compiled
    def three_chunks(x, first, second, third):
        cache = layer.init_cache(B, 9)
        a, cache = layer(x[:, :5], x[:, :5], cache=cache, cache_index=first)
        b, cache = layer(x[:, 5:6], x[:, 5:6], cache=cache, cache_index=second)
        c, cache = layer(x[:, 6:], x[:, 6:], cache=cache, cache_index=third)
        return ops.concatenate([a, b, c], axis=1)

    indices = [ops.convert_to_tensor(i, "int32") for i in (0, 5, 6)]
    np.testing.assert_allclose(to_numpy(three_chunks(ops.convert_to_tensor(x), *indices)), full, atol=1e-5)


def test_a_padding_mask_over_a_rolling_cache_hides_padded_slots():
    # Row 0's first two tokens are padding: masked in the full pass (key padding) and, step by step,
    # by an attention mask over the cache's slots then the step's token ([B, 1, L + 1]).
    x = _random(B, 6, D)
    real = np.ones((B, 6), bool)
    real[0, :2] = False
    layer = MultiHeadAttention(N, H, sliding_window=3, position_embedding="rotary")
    full = to_numpy(layer(x, x, value_mask=real, use_causal_mask=True))
    cache = layer.init_cache(B, 6)
    slot_real = np.zeros((B, 3), bool)  # what each of the 3 slots holds
    outputs = []
    for t in range(6):
        mask = np.concatenate([slot_real, real[:, t : t + 1]], axis=1)[:, None, :]
        out, cache = layer(x[:, t : t + 1], x[:, t : t + 1], attention_mask=mask, cache=cache, cache_index=t)
        slot_real[:, t % 3] = real[:, t]
        outputs.append(to_numpy(out))
    stepped = np.concatenate(outputs, axis=1)
    np.testing.assert_allclose(stepped[:, 2:], full[:, 2:], atol=1e-5)  # (a padded query's own output is moot)


def test_a_cross_attention_cache_refuses_rotary_embeddings():
    layer = MultiHeadAttention(N, H, position_embedding="rotary")
    layer(_random(1, 3, D), _random(1, 3, D))
    with pytest.raises(ValueError, match="cross-attention cache"):
        layer.compute_cache(_random(1, 3, D))


# -- RMSNorm and gated feed-forward -------------------------------------------------------------


def test_rms_normalization_matches_numpy():
    x = _random(B, T, D) * 3 + 1
    layer = EncoderLayer(N, 32, norm="rms", dropout=0.0)
    layer(x)
    norm = layer.self_attention_norm
    norm.scale.assign(_random(D, seed=5))
    np.testing.assert_allclose(
        to_numpy(norm(x)), reference.rms_norm(x.astype(np.float64), to_numpy(norm.scale), 1e-6), atol=1e-5
    )


@pytest.mark.parametrize("kind, activation", [("swiglu", reference.silu), ("geglu", reference.gelu)])
def test_gated_feed_forward_matches_numpy(kind, activation):
    x = _random(B, T, D)
    layer = FeedForward(32, activation="silu" if kind == "swiglu" else "gelu", gated=True, use_bias=False)
    out = to_numpy(layer(x))
    inner, outer = to_numpy(layer.inner.kernel), to_numpy(layer.outer.kernel)
    assert inner.shape == (D, 64) and len(layer.weights) == 2
    expected = reference.gated_feed_forward(x.astype(np.float64), inner[:, :32], inner[:, 32:], outer, activation)
    np.testing.assert_allclose(out, expected, atol=1e-5)
    # The gate and the linear halves start different (each has its own initializer).
    assert not np.allclose(inner[:, :32], inner[:, 32:])


def test_block_options_match_a_numpy_llama_block():
    # Pre-norm RMSNorm, grouped-query rotary self-attention without biases, SwiGLU, causal.
    x = _random(B, T, D)
    layer = EncoderLayer(
        N, 24, dropout=0.0, norm_first=True, norm="rms", feed_forward="swiglu", use_bias=False,
        num_key_value_heads=2, position_embedding="rotary",
    )
    out = to_numpy(layer(x, use_causal_mask=True))
    wq, wk, wv, wo, g1, inner, outer, g2 = [to_numpy(w).astype(np.float64) for w in layer.weights]
    causal = np.broadcast_to(np.tril(np.ones((T, T), bool)), (B, T, T))
    h = x + reference.grouped_query_attention(
        reference.rms_norm(x, g1, 1e-6), reference.rms_norm(x, g1, 1e-6), [wq, wk, wv, wo], N, causal,
        positions=np.arange(T),
    )[0]
    expected = h + reference.gated_feed_forward(reference.rms_norm(h, g2, 1e-6), inner[:, :24], inner[:, 24:], outer,
                                                reference.silu)
    np.testing.assert_allclose(out, expected, atol=1e-4)


def test_block_option_errors_name_the_argument():
    with pytest.raises(ValueError, match="`norm`"):
        EncoderLayer(2, 8, norm="batch")
    with pytest.raises(ValueError, match="`feed_forward`"):
        EncoderLayer(2, 8, feed_forward="reglu")
    with pytest.raises(ValueError, match="leave `activation` out"):
        EncoderLayer(2, 8, feed_forward="swiglu", activation="tanh")
    with pytest.raises(ValueError, match="must divide `num_heads`"):
        EncoderLayer(4, 8, num_key_value_heads=3)
    with pytest.raises(ValueError, match="sliding_window"):
        EncoderLayer(4, 8, sliding_window=0)


def test_the_papers_block_configs_hold_no_new_keys():
    # Configs of the paper's blocks are unchanged, so they load in the versions before these options.
    config = EncoderLayer(2, 8).get_config()
    for key in ("norm", "feed_forward", "use_bias", "num_key_value_heads", "position_embedding", "sliding_window"):
        assert key not in config
    assert "num_key_value_heads" not in MultiHeadAttention(2, 4).get_config()


# -- blocks: cache, round trips, mixed precision ---------------------------------------------------

LLAMA = dict(
    norm_first=True, norm="rms", feed_forward="swiglu", use_bias=False, num_key_value_heads=2,
    position_embedding="rotary", dropout=0.0,
)


@pytest.mark.parametrize("window", [None, 3])
def test_a_llama_style_encoder_layer_decodes_step_by_step_as_its_full_pass(window):
    x = _random(B, 9, D)
    layer = EncoderLayer(N, 24, sliding_window=window, **LLAMA)
    full = to_numpy(layer(x, use_causal_mask=True))
    cache = layer.init_cache(B, 9)
    outputs = []
    for t in range(9):
        out, cache = layer(x[:, t : t + 1], cache=cache, cache_index=t)
        outputs.append(to_numpy(out))
    np.testing.assert_allclose(np.concatenate(outputs, axis=1), full, atol=1e-5)
    assert cache.shape == (B, 2, 2, 9 if window is None else window, H)


def test_a_decoder_layer_with_the_options_decodes_step_by_step_as_its_full_pass():
    x, memory = _random(B, 6, D), _random(B, 5, D, seed=1)
    memory_mask = np.array([[True] * 5, [True] * 3 + [False] * 2])
    layer = DecoderLayer(N, 24, sliding_window=4, **LLAMA)
    full = to_numpy(layer(x, memory, encoder_output_mask=memory_mask))
    cache = layer.init_cache(memory, 6)
    assert cache["cross_attention"].shape == (B, 2, 2, 5, H)  # grouped-query cross-attention too
    outputs = []
    for t in range(6):
        out, cache = layer(x[:, t : t + 1], memory, encoder_output_mask=memory_mask, cache=cache, cache_index=t)
        outputs.append(to_numpy(out))
    np.testing.assert_allclose(np.concatenate(outputs, axis=1), full, atol=1e-5)


def test_causal_outputs_do_not_see_later_tokens():
    x = _random(1, 8, D)
    layer = EncoderLayer(N, 24, sliding_window=3, **LLAMA)
    changed = x.copy()
    changed[:, 5:] = _random(1, 3, D, seed=9)
    a, b = to_numpy(layer(x, use_causal_mask=True)), to_numpy(layer(changed, use_causal_mask=True))
    np.testing.assert_allclose(a[:, :5], b[:, :5], atol=1e-6)
    assert not np.allclose(a[:, 5:], b[:, 5:], atol=1e-3)


@pytest.mark.parametrize("layer_class", [EncoderLayer, DecoderLayer])
def test_keras_files_round_trip_the_options(tmp_path, layer_class):
    x = _random(B, 5, D)
    inputs = keras.Input((None, D))
    layer = layer_class(N, 24, sliding_window=4, rotary_max_wavelength=500.0, rotary_scaling_factor=2.0, **LLAMA)
    outputs = layer(inputs, use_causal_mask=True) if layer_class is EncoderLayer else layer(inputs, inputs)
    model = keras.Model(inputs, outputs)
    expected = to_numpy(model(x))
    path = os.path.join(tmp_path, "model.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_allclose(to_numpy(loaded(x)), expected, atol=1e-6)
    restored = loaded.layers[1]
    attention = restored.self_attention
    assert (attention.num_key_value_heads, attention.sliding_window, attention.position_embedding) == (2, 4, "rotary")
    assert (attention._rotary.max_wavelength, attention._rotary.scaling_factor) == (500.0, 2.0)
    assert restored.options["norm"] == "rms" and restored.feed_forward.gated


def test_the_options_run_under_mixed_precision():
    x = _random(B, 9, D)
    layer = EncoderLayer(N, 24, sliding_window=4, **LLAMA)
    reference_output = to_numpy(layer(x, use_causal_mask=True))
    mixed = EncoderLayer(N, 24, sliding_window=4, **LLAMA, dtype="mixed_bfloat16")
    mixed(x)
    mixed.set_weights(layer.get_weights())
    out = mixed(x, use_causal_mask=True)
    assert keras.backend.standardize_dtype(out.dtype) == "bfloat16"
    np.testing.assert_allclose(to_numpy(ops.cast(out, "float32")), reference_output, atol=0.1)
    cache = mixed.init_cache(B, 9)
    assert keras.backend.standardize_dtype(cache.dtype) == "bfloat16" and cache.shape[2:4] == (2, 4)
    outputs = []
    for t in range(9):
        step, cache = mixed(x[:, t : t + 1], cache=cache, cache_index=t)
        outputs.append(to_numpy(ops.cast(step, "float32")))
    np.testing.assert_allclose(np.concatenate(outputs, axis=1), reference_output, atol=0.1)


def test_rotary_attention_refuses_keys_of_another_length():
    layer = MultiHeadAttention(N, H, position_embedding="rotary")
    with pytest.raises(ValueError, match="for self-attention"):
        layer(_random(1, 2, D), _random(1, 3, D))


def test_a_mask_over_the_slots_only_is_refused_with_a_rolling_cache():
    layer = MultiHeadAttention(N, H, sliding_window=3)
    cache = layer.init_cache(1, 8)
    x = _random(1, 1, D)
    with pytest.raises(ValueError, match="its last axis must be 4"):
        layer(x, x, attention_mask=np.ones((1, 1, 3), bool), cache=cache, cache_index=0)


def test_float_positions_and_windowed_cross_attention_caches_are_refused():
    # Float positions would be rounded to the compute dtype under mixed precision (Keras autocasts
    # floating call arguments); a cached cross-attention step does not know its query positions.
    with pytest.raises(ValueError, match="must be integers"):
        RotaryEmbedding()(_random(1, 3, 1, 4), positions=np.arange(3, dtype="float32"))
    layer = MultiHeadAttention(N, H, sliding_window=2)
    layer(_random(1, 4, D), _random(1, 6, D))
    with pytest.raises(ValueError, match="cross-attention cache"):
        layer.compute_cache(_random(1, 6, D))


def test_rotary_options_are_refused_by_name_and_without_rotary_embeddings():
    with pytest.raises(ValueError, match="`rotary_max_wavelength` must be a finite number above 1 \\(a float32\\)"):
        MultiHeadAttention(N, H, position_embedding="rotary", rotary_max_wavelength=1)
    with pytest.warns(UserWarning, match="ignored without position_embedding='rotary'"):
        MultiHeadAttention(N, H, rotary_scaling_factor=2.0)
    with pytest.warns(UserWarning, match="ignored without position_embedding='rotary'"):
        layer = EncoderLayer(N, 16, rotary_max_wavelength=500.0)
    assert layer.options["rotary_max_wavelength"] == 10000.0
    assert EncoderLayer(N, 16, position_embedding="rotary", rotary_scaling_factor=2).options[
        "rotary_scaling_factor"] == 2.0


def test_a_cache_shorter_than_the_window_is_not_rolled():
    # init_cache(max_length < W) holds every position: it decodes as the full pass, and a step past its end
    # fails as without a window (it wrapped around and overwrote keys still in the window, silently).
    x = _random(1, 4, D)
    layer = MultiHeadAttention(N, H, sliding_window=6)
    full = to_numpy(layer(x, x, use_causal_mask=True))
    stepped, cache = _step_by_step(layer, x, 1, cache_length=4)
    np.testing.assert_allclose(stepped, full, atol=1e-5)
    assert cache.shape[3] == 4
    with pytest.raises(ValueError, match="run past the cache's 4 slots"):
        layer(x[:, :1], x[:, :1], cache=cache, cache_index=4)


@pytest.mark.parametrize("window", [None, 3])
def test_a_cache_index_that_is_negative_or_runs_past_the_cache_is_refused(window):
    # JAX's scatter writes index -1 into the last slot and drops slots past the end, without a word, and
    # the causal mask then shows the queries the wrong keys; TensorFlow's fails deep in a scatter op.
    layer = MultiHeadAttention(N, H, sliding_window=window)
    x = _random(1, 2, D)
    cache = layer.init_cache(1, 4)
    # (NumPy scalars and eager tensors too: Keras's __call__ makes NumPy scalars tensors before `call`.)
    for negative in (-1, np.int64(-1), np.array(-1), ops.convert_to_tensor(-1)):
        with pytest.raises(ValueError, match="`cache_index` must be an integer of at least 0"):
            layer(x, x, cache=cache, cache_index=negative)
    if window is None:
        for past in (3, np.int32(3), ops.convert_to_tensor(3)):
            with pytest.raises(ValueError, match="2 token\\(s\\) at `cache_index` 3 run past the cache's 4 slots"):
                layer(x, x, cache=cache, cache_index=past)
    else:  # a rolling cache has no end
        layer(x, x, cache=layer.init_cache(1, 8), cache_index=np.int64(7))
    with pytest.raises(ValueError, match="`cache_index` must be a scalar integer"):
        layer(x, x, cache=cache, cache_index=np.array([0, 1]))
