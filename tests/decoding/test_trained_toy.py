"""Decoding a model that has learned something: a copy task trained in seconds."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_transformer as kt
from keras_transformer import training
from keras_transformer.decoding import beam_search
from keras_transformer.decoding import greedy_decode
from keras_transformer.decoding import length_penalty

START, END, VOCAB, LENGTH = 2, 3, 16, 6


def _copy_batch(rng, n):
    """[START, w_1 .. w_k, END, 0 ..] sequences of k = 1 .. LENGTH words, and k."""
    lengths = rng.integers(1, LENGTH + 1, size=n)
    body = rng.integers(4, VOCAB, size=(n, LENGTH)) * (np.arange(LENGTH) < lengths[:, None])
    seq = np.zeros((n, LENGTH + 2), np.int32)
    seq[:, 0], seq[:, 1:LENGTH + 1] = START, body
    seq[np.arange(n), lengths + 1] = END
    return seq, lengths


def _end_steps(ids):
    return [int(np.argmax(row == END)) if (row == END).any() else len(row) for row in ids]


@pytest.fixture(scope="module")
def trained():
    # A copy task of 1 to 6 words: a model that has learned it ends each
    # output after as many words as its source has, so sentences of a batch
    # end at different steps because their sources differ in length (not
    # because of how one machine's training happened to turn out).
    keras.utils.set_random_seed(0)
    seq, _ = _copy_batch(np.random.default_rng(0), 4096)
    model = kt.Transformer(VOCAB, VOCAB, num_layers=1, d_model=32, num_heads=2, d_ff=64, dropout=0.0, max_length=32)
    model.build()
    training.compile_for_translation(model, warmup_steps=100, learning_rate_scale=2.0, label_smoothing=0.0)
    model.fit({"source": seq, "target": seq[:, :-1]}, seq[:, 1:], batch_size=64, epochs=5, verbose=0)
    test_source, test_lengths = _copy_batch(np.random.default_rng(1), 32)
    return model, test_source, test_lengths


def _rescore(model, source, ids):
    length = int(np.argmax(ids == END)) + 1
    target = np.concatenate([[START], ids[: length - 1]])[None]
    log_probs = tf.nn.log_softmax(model({"source": source[None], "target": target})).numpy()[0]
    return float(log_probs[np.arange(length), ids[:length]].sum()), length


def test_trained_model_copies(trained):
    model, source, lengths = trained
    ids = greedy_decode(model, source, 10).numpy()
    copied = [np.array_equal(ids[b, : lengths[b] + 1], source[b, 1 : lengths[b] + 2]) for b in range(len(source))]
    assert np.mean(copied) > 0.6  # 0.81 to 1.0 over four training seeds
    # The precondition of the cached-decoding tests below: sentences end at
    # several different steps.
    assert len(set(_end_steps(ids))) >= 4


@pytest.mark.parametrize("cache_chunk", [2, 16, None])
def test_cached_equals_uncached_on_the_trained_model(trained, cache_chunk):
    # Sources of 1 to 6 words: the short sentences end first; with a growing
    # cache (2, 16) they also leave the decoder's batch, with a preallocated
    # one (None) they stay.
    model, source, _ = trained
    uncached_greedy = greedy_decode(model, source, 10, use_cache=False).numpy()
    assert len(set(_end_steps(uncached_greedy))) >= 3  # sentences end at different steps
    np.testing.assert_array_equal(greedy_decode(model, source, 10, cache_chunk=cache_chunk).numpy(), uncached_greedy)
    cached = beam_search(model, source, 10, beam_size=3, cache_chunk=cache_chunk)
    uncached = beam_search(model, source, 10, beam_size=3, use_cache=False)
    np.testing.assert_array_equal(cached["ids"].numpy(), uncached["ids"].numpy())
    np.testing.assert_allclose(cached["log_probs"].numpy(), uncached["log_probs"].numpy(), atol=1e-4)
    np.testing.assert_allclose(cached["scores"].numpy(), uncached["scores"].numpy(), atol=1e-4)


def test_beam_never_worse_than_greedy_and_scores_rescore(trained):
    model, source, _ = trained
    greedy = greedy_decode(model, source, 10).numpy()
    out = beam_search(model, source, 10, beam_size=4, alpha=0.6)
    for b in range(0, 32, 3):
        greedy_log_prob, length = _rescore(model, source[b], greedy[b])
        assert out["scores"].numpy()[b, 0] >= greedy_log_prob / float(length_penalty(length, 0.6)) - 1e-5
        best_log_prob, _ = _rescore(model, source[b], out["ids"].numpy()[b, 0])
        assert out["log_probs"].numpy()[b, 0] == pytest.approx(best_log_prob, abs=1e-4)


def test_xla_and_mixed_precision(trained):
    model, source, _ = trained
    expected = beam_search(model, source, 10, beam_size=2)["ids"].numpy()
    compiled = tf.function(lambda s: beam_search(model, s, 10, beam_size=2)["ids"], jit_compile=True)
    np.testing.assert_array_equal(compiled(tf.constant(source)).numpy(), expected)
    greedy_xla = tf.function(lambda s: greedy_decode(model, s, 10), jit_compile=True)
    np.testing.assert_array_equal(greedy_xla(tf.constant(source)).numpy(), greedy_decode(model, source, 10).numpy())

    bf16 = kt.Transformer.from_config({**model.get_config(), "dtype": "mixed_bfloat16"})
    bf16.build()
    bf16.set_weights(model.get_weights())
    ids = beam_search(bf16, source, 10, beam_size=2)["ids"].numpy()
    # bfloat16 rounding may flip a near tie, not the copies.
    assert np.mean(ids[:, 0] == expected[:, 0]) > 0.9
