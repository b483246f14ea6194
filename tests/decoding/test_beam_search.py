import numpy as np
import pytest
import tensorflow as tf

import keras_transformer as kt
from keras_transformer.decoding import beam_search
from keras_transformer.decoding import greedy_decode
from keras_transformer.decoding import length_penalty

START, END, VOCAB = 2, 3, 24


@pytest.fixture(scope="module")
def model():
    import keras

    keras.utils.set_random_seed(11)
    model = kt.Transformer(VOCAB, VOCAB, num_layers=2, d_model=32, num_heads=4, d_ff=64, dropout=0.0)
    model.build()
    return model


@pytest.fixture(scope="module")
def source():
    rng = np.random.default_rng(2)
    ids = rng.integers(4, VOCAB, size=(3, 6)).astype("int32")
    ids[1, 4:] = 0
    ids[2, 2:] = 0
    return ids


def _full_pass_log_prob(model, source, ids):
    """Sum of token log-probabilities of `ids` (up to [END]) by one full pass."""
    length = int(np.argmax(ids == END)) + 1 if (ids == END).any() else len(ids)
    target = np.concatenate([[START], ids[: length - 1]])[None]
    logits = model({"source": source[None], "target": target}).numpy()[0]
    log_probs = tf.nn.log_softmax(logits).numpy()
    return float(log_probs[np.arange(length), ids[:length]].sum()), length


def test_beam_of_one_without_penalty_is_greedy(model, source):
    greedy = greedy_decode(model, source, 10).numpy()
    beam = beam_search(model, source, 10, beam_size=1, alpha=0.0)["ids"].numpy()[:, 0]
    np.testing.assert_array_equal(beam, greedy)


def test_scores_are_the_models_own_log_probs(model, source):
    out = beam_search(model, source, 10, beam_size=4, alpha=0.6)
    ids, scores, log_probs = out["ids"].numpy(), out["scores"].numpy(), out["log_probs"].numpy()
    assert ids.shape == (3, 4, 10)
    for b in range(3):
        assert (np.diff(scores[b]) <= 1e-6).all()  # best first
        for h in range(4):
            reference, length = _full_pass_log_prob(model, source[b], ids[b, h])
            assert log_probs[b, h] == pytest.approx(reference, abs=1e-4)
            expected = reference / float(length_penalty(length, 0.6))
            assert scores[b, h] == pytest.approx(expected, abs=1e-4)


def test_beam_is_never_worse_than_greedy(model, source):
    greedy = greedy_decode(model, source, 10).numpy()
    best = beam_search(model, source, 10, beam_size=4, alpha=0.6)["scores"].numpy()[:, 0]
    for b in range(3):
        log_prob, length = _full_pass_log_prob(model, source[b], greedy[b])
        assert best[b] >= log_prob / float(length_penalty(length, 0.6)) - 1e-5


def test_padding_in_the_batch_changes_nothing(model, source):
    together = beam_search(model, source, 10, beam_size=3)["ids"].numpy()
    for b in range(3):
        trimmed = source[b : b + 1, : int((source[b] != 0).sum())]
        alone = beam_search(model, trimmed, 10, beam_size=3)["ids"].numpy()
        np.testing.assert_array_equal(alone[0], together[b])


def test_attention_rows_are_distributions_over_real_source_tokens(model, source):
    out = beam_search(model, source, 10, beam_size=2, return_attention=True)
    attention, ids = out["attention"].numpy(), out["ids"].numpy()
    assert attention.shape == (3, 2, 10, 6)
    generated = ids != 0
    np.testing.assert_allclose(attention.sum(-1)[generated], 1.0, atol=1e-5)
    assert (attention.sum(-1)[~generated] == 0).all()
    assert (attention[2][..., 2:] == 0).all()  # source padding gets nothing


def test_runs_in_a_tf_function_with_unknown_shapes(model, source):
    fn = tf.function(
        lambda s: beam_search(model, s, tf.shape(s)[1] + 4, beam_size=2)["ids"],
        input_signature=[tf.TensorSpec([None, None], tf.int32)],
    )
    np.testing.assert_array_equal(fn(source).numpy(), beam_search(model, source, 10, beam_size=2)["ids"].numpy())


def test_per_head_attention_equals_a_full_pass_over_the_best_hypothesis(model, source):
    out = beam_search(model, source, 10, beam_size=3, return_attention="heads")
    heads, ids = out["attention"].numpy(), out["ids"].numpy()
    assert heads.shape == (3, 3, 10, 4, 6)
    mean = beam_search(model, source, 10, beam_size=3, return_attention=True)["attention"].numpy()
    np.testing.assert_allclose(heads.mean(axis=3), mean, atol=1e-6)
    for b in range(3):
        best = ids[b, 0]
        length = int(np.argmax(best == END)) + 1 if (best == END).any() else len(best)
        target = np.concatenate([[START], best[: length - 1]])[None].astype("int32")
        encoder_output, source_mask = model.encode(source[b : b + 1])
        _, scores = model.decode(target, encoder_output, source_mask, return_attention_scores=True)
        expected = np.transpose(scores[-1].numpy()[0], [1, 0, 2])  # [N, T, S] -> [T, N, S]
        np.testing.assert_allclose(heads[b, 0, :length], expected, atol=1e-5)
        assert (heads[b, 0, length:] == 0).all()


@pytest.mark.parametrize("use_beam", [False, True])
def test_a_growing_cache_gives_the_same_output_as_a_preallocated_one_and_recompute(model, source, use_beam):
    def run(**kwargs):
        if use_beam:
            out = beam_search(model, source, 11, beam_size=3, end_id=-1, **kwargs)
            return out["ids"].numpy(), out["log_probs"].numpy()
        return greedy_decode(model, source, 11, end_id=-1, **kwargs).numpy(), None

    reference_ids, reference_log_probs = run(use_cache=False)
    for chunk in (1, 3, 16, None):  # grows at every step, 3 times, never; preallocated
        ids, log_probs = run(cache_chunk=chunk)
        np.testing.assert_array_equal(ids, reference_ids)
        if use_beam:
            np.testing.assert_allclose(log_probs, reference_log_probs, atol=1e-4)


def test_bad_decoding_options_are_refused_by_name(model, source):
    with pytest.raises(ValueError, match="cache_chunk"):
        beam_search(model, source, 10, cache_chunk=0)
    with pytest.raises(ValueError, match="cache_chunk"):
        greedy_decode(model, source, 10, cache_chunk=2.5)
    with pytest.raises(ValueError, match="return_attention"):
        beam_search(model, source, 10, return_attention="max")


@pytest.mark.parametrize("search", ["greedy", "beam"])
def test_max_length_is_checked_whatever_its_type(model, source, search):
    def run(max_length):
        if search == "greedy":
            return greedy_decode(model, source, max_length)
        return beam_search(model, source, max_length, beam_size=2)["ids"]

    # True is an int to Python but never a length.
    with pytest.raises(ValueError, match="max_length"):
        run(True)
    # NumPy integers and eager tensors are checked like Python ints.
    for too_long in (np.int64(model.max_length + 1), tf.constant(model.max_length + 1), np.int32(0)):
        with pytest.raises(ValueError, match="max_length"):
            run(too_long)
    with pytest.raises(ValueError, match="max_length"):
        run(2.0)
    # 0-d arrays and variables are lengths too.
    assert run(np.array(5)).shape[-1] == 5
    assert run(tf.Variable(5)).shape[-1] == 5
    with pytest.raises(ValueError, match="max_length"):
        run(tf.Variable(model.max_length + 1))
    # A length known only when the graph runs is asserted there, naming it
    # (the message is the loop's own: the positional encoding's check says
    # "Sequence is longer than").
    for dtype in (tf.int32, tf.int64):
        fn = tf.function(lambda n: run(n), input_signature=[tf.TensorSpec([], dtype)])
        for bad in (model.max_length + 1, -1, 2**32 + 5):  # 2**32 + 5 would wrap to 5 in int32
            if dtype == tf.int32 and bad > 2**31:
                continue
            with pytest.raises(tf.errors.InvalidArgumentError, match=r"must be in \[0, "):
                fn(tf.constant(bad, dtype))
        assert fn(tf.constant(5, dtype)).shape[-1] == 5
        assert fn(tf.constant(0, dtype)).shape[-1] == 0  # nothing to generate


def test_a_strategy_state_holds_no_empty_placeholders(model):
    # Attention is kept only when asked for: no [B, K, 0, 0] stand-ins for
    # the loop to special-case.
    from keras_transformer.decoding.beam_search import BeamSearch

    state = BeamSearch(2, 0.6).initial_state(3, 10, 6)
    assert all(0 not in t.shape.as_list() for t in tf.nest.flatten(state))
    with_heads = BeamSearch(2, 0.6, attention="heads", num_heads=4).initial_state(3, 10, 6)
    assert sum(t.shape.as_list() == [3, 2, 10, 4, 6] for t in tf.nest.flatten(with_heads)) == 2


def test_a_beam_search_strategy_refuses_bad_attention_settings():
    from keras_transformer.decoding.beam_search import BeamSearch

    with pytest.raises(ValueError, match="num_heads"):
        BeamSearch(2, 0.6, attention="heads")  # the maps' shape needs the head count
    with pytest.raises(ValueError, match="attention"):
        BeamSearch(2, 0.6, attention="max")
    with pytest.raises(ValueError, match="beam_size"):
        BeamSearch(0, 0.6)


def test_decoding_asks_for_attention_scores_only_when_the_strategy_uses_them(model, source, monkeypatch):
    asked = []
    decode = type(model).decode

    def spy(self, *args, **kwargs):
        asked.append(kwargs.get("return_attention_scores", False))
        return decode(self, *args, **kwargs)

    monkeypatch.setattr(type(model), "decode", spy)
    for use_cache in (True, False):
        asked.clear()
        greedy_decode(model, source, 4, use_cache=use_cache)
        beam_search(model, source, 4, beam_size=2, use_cache=use_cache)
        assert asked and not any(asked)
        beam_search(model, source, 4, beam_size=2, return_attention=True, use_cache=use_cache)
        assert any(asked)


def test_attention_over_an_empty_source_is_empty_not_an_error(model):
    empty = np.zeros([2, 0], "int32")
    for attention, shape in ((True, (2, 2, 5, 0)), ("heads", (2, 2, 5, 4, 0))):
        assert beam_search(model, empty, 5, beam_size=2, return_attention=attention)["attention"].shape == shape
    fn = tf.function(lambda s: beam_search(model, s, 5, beam_size=2, return_attention=True)["attention"],
                     input_signature=[tf.TensorSpec([None, None], tf.int32)])
    assert fn(empty).shape == (2, 2, 5, 0)


@pytest.mark.parametrize("use_beam", [False, True])
def test_the_variants_decode_with_a_growing_cache_as_by_recompute(use_beam):
    # Rotary embeddings at each step's cache index, grouped-query caches of 2 key/value heads, RMSNorm, SwiGLU:
    # beam search reorders and grows those caches as it does the paper's.
    model = kt.Transformer(30, 30, num_layers=2, d_model=32, num_heads=4, d_ff=48, dropout=0.0, norm_first=True,
                           position_embedding="rotary", norm="rms", feed_forward="swiglu", num_key_value_heads=2)
    model.build()
    source = np.random.default_rng(3).integers(4, 30, size=(3, 6)).astype("int32")
    source[1, 4:] = 0

    def run(**kwargs):
        if use_beam:
            out = beam_search(model, source, 9, beam_size=3, end_id=-1, **kwargs)
            return out["ids"].numpy(), out["log_probs"].numpy()
        return greedy_decode(model, source, 9, end_id=-1, **kwargs).numpy(), None

    reference_ids, reference_log_probs = run(use_cache=False)
    for chunk in (1, 4, None):
        ids, log_probs = run(cache_chunk=chunk)
        np.testing.assert_array_equal(ids, reference_ids)
        if use_beam:
            np.testing.assert_allclose(log_probs, reference_log_probs, atol=1e-4)
