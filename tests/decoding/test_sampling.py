"""Sampling: the token picker against NumPy references and its own
distribution, and `sample` on the decoding loop (reproducible, independent of
the batch, scored as the model scores, greedy at temperature 0)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_transformer as kt
from keras_transformer.decoding import greedy_decode
from keras_transformer.decoding import sample
from keras_transformer.decoding.sampling import Sampling
from keras_transformer.decoding.sampling import filter_mask
from keras_transformer.decoding.sampling import sample_tokens
from keras_transformer.decoding.sampling import source_key
from keras_transformer.decoding.sampling import uniform_noise
from keras_transformer.decoding.strategy import decode_fixed

START, END, VOCAB = 2, 3, 24


def _reference_filter(log_probs, top_k, top_p):
    """What survives top-k then top-p, written plainly: HF-style sequential filters, ties at the edge kept."""
    keep = np.ones_like(log_probs, bool)
    if top_k > 0:
        kth = np.sort(log_probs)[::-1][min(top_k, len(log_probs)) - 1]
        keep &= log_probs >= kth
    if top_p < 1:
        order = np.argsort(-log_probs, kind="stable")
        probs = np.where(keep, np.exp(log_probs - log_probs.max()), 0.0)
        probs /= probs.sum()
        total, chosen = 0.0, []
        for index in order:
            if not keep[index]:
                continue
            chosen.append(index)
            total += probs[index]
            if total >= top_p:
                break
        threshold = log_probs[chosen].min()
        keep &= log_probs >= threshold
    return keep


@pytest.mark.parametrize("top_k,top_p", [(0, 1.0), (1, 1.0), (3, 1.0), (0, 0.5), (0, 0.9), (4, 0.6), (30, 0.99)])
def test_filter_mask_equals_a_plain_reference(top_k, top_p):
    rng = np.random.default_rng(top_k * 100 + int(top_p * 10))
    log_probs = np.log(rng.dirichlet(np.ones(12) * 0.5, size=6)).astype("float32")
    kept = keras.ops.convert_to_numpy(filter_mask(log_probs, top_k, top_p))
    for row in range(6):
        np.testing.assert_array_equal(kept[row], _reference_filter(log_probs[row], top_k, top_p))
    assert kept.any(axis=-1).all()  # the most likely token always survives


def test_filter_mask_takes_one_setting_per_row_and_keeps_ties():
    log_probs = np.log(np.array([[0.4, 0.2, 0.2, 0.1, 0.1]] * 3, "float32"))
    kept = keras.ops.convert_to_numpy(filter_mask(log_probs, np.array([2, 0, 1]), np.array([1.0, 0.5, 1.0])))
    # Row 0: top 2, and the 0.2 tied with the second; row 1: 0.4 + 0.2 reaches 0.5, the tie kept; row 2: top 1.
    np.testing.assert_array_equal(kept, [[1, 1, 1, 0, 0], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]])


def test_filtering_the_top_tokens_only_equals_filtering_all():
    # With a top_k in every row, the filters look at the max(top_k) most likely tokens (a partial
    # sort, computed in the graph on TensorFlow) instead of sorting the whole vocabulary.
    rng = np.random.default_rng(3)
    log_probs = np.log(rng.dirichlet(np.ones(40) * 0.3, size=8)).astype("float32")
    top_k, top_p = rng.integers(1, 12, size=8), rng.uniform(0.3, 1.0, size=8).astype("float32")
    full = keras.ops.convert_to_numpy(filter_mask(log_probs, top_k, top_p))
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(filter_mask(log_probs, top_k, top_p, width=11)), full)
    logits = np.tile(log_probs, (50, 1))
    seeds = np.arange(400)
    as_tensor = tf.function(lambda k: sample_tokens(logits, seeds, 0, 1.0, k, np.tile(top_p, 50)))(np.tile(top_k, 50))
    plain = [int(sample_tokens(logits[i], seeds[i], 0, 1.0, int(np.tile(top_k, 50)[i]), float(np.tile(top_p, 50)[i])))
             for i in range(0, 400, 37)]
    np.testing.assert_array_equal(as_tensor.numpy()[::37], plain)


@pytest.mark.parametrize("temperature,top_k,top_p", [(1.0, 0, 1.0), (0.6, 0, 1.0), (2.0, 4, 1.0), (1.0, 0, 0.7),
                                                     (0.8, 5, 0.8)])
def test_drawn_tokens_follow_the_filtered_tempered_distribution(temperature, top_k, top_p):
    # 40,000 draws of one row of logits, one seed each: the frequencies are the
    # reference distribution's within 5 standard deviations, and filtered-out
    # tokens never come.
    rng = np.random.default_rng(1)
    logits = rng.normal(0, 1.5, 8).astype("float32")
    draws = 40_000
    tokens = keras.ops.convert_to_numpy(sample_tokens(
        np.tile(logits, (draws, 1)), np.arange(draws), step=3, temperature=temperature, top_k=top_k, top_p=top_p
    ))
    frequency = np.bincount(tokens, minlength=8) / draws
    log_probs = logits - np.log(np.exp(logits).sum())
    tempered = log_probs / temperature
    keep = _reference_filter(tempered, top_k, top_p)
    expected = np.where(keep, np.exp(tempered - tempered.max()), 0.0)
    expected /= expected.sum()
    assert (frequency[~keep] == 0).all()
    np.testing.assert_allclose(frequency, expected, atol=5 * np.sqrt(0.25 / draws))


def test_temperature_zero_is_the_arg_max_and_a_mask_is_never_crossed():
    logits = np.array([[0.0, 5.0, 1.0, 4.9], [3.0, -1.0, 2.0, 0.0]], "float32")
    greedy = sample_tokens(logits, seed=[1, 2], step=0, temperature=0.0)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(greedy), [1, 0])
    # A per-row temperature tensor of 0 is the arg-max too (the noise is drawn, times 0).
    greedy = sample_tokens(logits, seed=[1, 2], step=0, temperature=np.zeros(2, "float32"))
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(greedy), [1, 0])
    # At a temperature so high that every token is nearly equally likely, masked tokens still never come.
    mask = np.array([[True, False, True, False]] * 2)
    draws = keras.ops.convert_to_numpy(sample_tokens(
        np.repeat(logits, 500, axis=0), np.arange(1000), 0, temperature=1e6, mask=np.repeat(mask, 500, axis=0)
    ))
    assert set(draws) == {0, 2}


def test_noise_depends_on_seed_sample_and_step_only():
    one = keras.ops.convert_to_numpy(uniform_noise(np.int64(7), 1, 4, 50))
    assert one.shape == (50,) and 0 < one.min() and one.max() < 1
    np.testing.assert_array_equal(one, keras.ops.convert_to_numpy(uniform_noise(np.int32(7), 1, 4, 50)))
    for other in [uniform_noise(8, 1, 4, 50), uniform_noise(7, 2, 4, 50), uniform_noise(7, 1, 5, 50),
                  uniform_noise(np.int64(7 + 2**32), 1, 4, 50)]:  # the seed's high word counts too
        assert not np.allclose(keras.ops.convert_to_numpy(other), one)
    # Negative seeds read alike as int32 and int64 (sign-extended), and differ from positive ones.
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(uniform_noise(np.int32(-5), 0, 0, 9)),
                                  keras.ops.convert_to_numpy(uniform_noise(np.int64(-5), 0, 0, 9)))
    # Uniform: the mean and spread of 10,000 values are those of U(0, 1).
    many = keras.ops.convert_to_numpy(uniform_noise(np.arange(100), 0, 0, 100)).ravel()
    assert abs(many.mean() - 0.5) < 0.01 and abs(many.std() - np.sqrt(1 / 12)) < 0.01


def test_the_noise_is_never_one_so_no_forbidden_token_can_win():
    # Seed 27751, token 970 of 1,000: the hash's top 24 bits are all ones, whose centred value
    # rounded to 1.0 in float32; its Gumbel noise was +inf, and 0 * inf or -inf + inf made NaN,
    # which XLA's and JAX's arg-max return: a token outside top-k 1, a masked token, and a greedy
    # (temperature 0) row that was not the arg-max. 23 bits are exact: the largest is 1 - 2**-24.
    vocab, seed, token = 1000, np.int64(27751), 970
    noise = keras.ops.convert_to_numpy(uniform_noise(seed, 0, 0, vocab))
    assert noise.max() == np.float32(1 - 2**-24) and noise[token] == noise.max() and noise.min() >= 2**-24
    logits = np.zeros([1, vocab], "float32")
    logits[0, 5], logits[0, token] = 10.0, -20.0
    forbid = np.ones([1, vocab], bool)
    forbid[0, token] = False
    for jit in (False, True):
        draw = tf.function(lambda t, k, m: sample_tokens(logits, seed, 0, t, top_k=k, mask=m), jit_compile=jit)
        assert int(draw(tf.ones([1]), tf.constant([1]), np.ones([1, vocab], bool))[0]) == 5  # top-k 1
        assert int(draw(tf.ones([1]), tf.constant([0]), forbid)[0]) != token  # masked
        assert int(draw(tf.zeros([1]), tf.constant([0]), np.ones([1, vocab], bool))[0]) == 5  # greedy


def test_sentences_sharing_a_seed_draw_independent_noise():
    # One seed for a whole batch (Translator's, the clients') gave every sentence the same noise:
    # two sentences with similar distributions drew the same token half the time. `sample` hashes
    # each sentence's source ids into its noise (padding and position in the batch do not count).
    keys = keras.ops.convert_to_numpy(source_key(np.array([[2, 5, 6, 3, 0], [2, 6, 5, 3, 0], [2, 5, 6, 3, 0]])))
    assert keys[0] == keys[2] and keys[0] != keys[1]  # the same ids, the same key; order counts
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(source_key(np.array([[2, 5, 6, 3]]))), keys[:1])
    rng = np.random.default_rng(2)
    p, q = rng.dirichlet(np.ones(10), size=2)
    seeds = np.arange(20_000)
    draw = lambda probs, key: keras.ops.convert_to_numpy(  # noqa: E731
        sample_tokens(np.tile(np.log(probs), (len(seeds), 1)).astype("float32"), seeds, 0, salt=key))
    same = np.mean(draw(p, keys[0]) == draw(q, keys[1]))
    independent = float(p @ q)
    assert abs(same - independent) < 5 * np.sqrt(independent / len(seeds)), (same, independent)


@pytest.fixture(scope="module")
def model():
    keras.utils.set_random_seed(5)
    model = kt.Transformer(VOCAB, VOCAB, num_layers=2, d_model=32, num_heads=4, d_ff=64, dropout=0.0)
    model.build()
    return model


@pytest.fixture(scope="module")
def source():
    rng = np.random.default_rng(4)
    ids = rng.integers(4, VOCAB, size=(3, 7)).astype("int32")
    ids[:, 0] = START
    ids[1, 4:] = 0
    ids[2, 2:] = 0
    return ids


def _rescore(model, source, ids):
    """The model's log-probability of `ids` (up to [END], or all of it) given `source`, by a full pass."""
    length = int(np.argmax(ids == END)) + 1 if (ids == END).any() else len(ids)
    target = np.concatenate([[START], ids[: length - 1]])[None]
    log_probs = tf.nn.log_softmax(model({"source": source[None], "target": target})).numpy()[0]
    return float(log_probs[np.arange(length), ids[:length]].sum())


def test_samples_are_scored_as_the_model_scores_them_most_likely_first(model, source):
    out = sample(model, source, 10, num_samples=4, temperature=1.0, top_p=0.95, seed=3)
    ids, log_probs = out["ids"].numpy(), out["log_probs"].numpy()
    assert ids.shape == (3, 4, 10) and log_probs.shape == (3, 4)
    assert (np.diff(log_probs, axis=1) <= 0).all()
    for b in range(3):
        for k in range(4):
            assert log_probs[b, k] == pytest.approx(_rescore(model, source[b], ids[b, k]), abs=1e-4)
        generated = ids[b][ids[b] != 0]
        assert not np.isin(generated, [0, START]).any()
    # The four samples of a sentence are drawn apart: a random model makes them differ.
    assert len({tuple(row) for row in ids[0]}) > 1


def test_the_same_seed_gives_the_same_samples_alone_or_in_any_batch(model, source):
    settings = dict(num_samples=3, temperature=0.9, top_k=8, seed=11)
    together = sample(model, source, 10, **settings)["ids"].numpy()
    np.testing.assert_array_equal(sample(model, source, 10, **settings)["ids"].numpy(), together)
    for b in range(3):
        trimmed = source[b : b + 1, : int((source[b] != 0).sum())]
        np.testing.assert_array_equal(sample(model, trimmed, 10, **settings)["ids"].numpy()[0], together[b])
    reordered = sample(model, source[::-1], 10, **settings)["ids"].numpy()
    np.testing.assert_array_equal(reordered[::-1], together)
    # Another seed draws other samples.
    assert not np.array_equal(sample(model, source, 10, **{**settings, "seed": 12})["ids"].numpy(), together)


def test_one_seed_per_sentence(model, source):
    seeds = np.array([4, 9, 4], "int64")
    per_sentence = sample(model, source, 10, temperature=1.0, seed=seeds)["ids"].numpy()
    for b, seed in enumerate(seeds):
        alone = sample(model, source[b : b + 1], 10, temperature=1.0, seed=int(seed))["ids"].numpy()
        np.testing.assert_array_equal(per_sentence[b], alone[0])


def test_temperature_zero_is_greedy_decoding(model, source):
    greedy = greedy_decode(model, source, 10, max_extra_length=5).numpy()
    out = sample(model, source, 10, num_samples=2, temperature=0.0, max_extra_length=5)
    np.testing.assert_array_equal(out["ids"].numpy()[:, 0], greedy)
    np.testing.assert_array_equal(out["ids"].numpy()[:, 1], greedy)  # no noise: every sample is the arg-max
    # A temperature of 0 given per sentence (a tensor) is greedy as well.
    tensor = sample(model, source, 10, temperature=tf.zeros([3]), max_extra_length=5, seed=tf.constant([1, 2, 3]))
    np.testing.assert_array_equal(tensor["ids"].numpy()[:, 0], greedy)


@pytest.mark.parametrize("cache", ["uncached", "chunk_1", "preallocated", "fixed_shapes"])
def test_every_loop_draws_the_same_samples(model, source, cache):
    settings = dict(num_samples=3, temperature=1.2, top_k=10, top_p=0.9, seed=5, max_extra_length=4)
    reference = sample(model, source, 12, **settings)
    if cache == "fixed_shapes":  # the loop JAX and PyTorch run, here on TensorFlow
        strategy = Sampling(3, 1.2, 10, 0.9, 5, salt=source_key(source))
        out = decode_fixed(model, source, 12, strategy, max_extra_length=4)
    else:
        kwargs = {"uncached": dict(use_cache=False), "chunk_1": dict(cache_chunk=1),
                  "preallocated": dict(cache_chunk=None)}[cache]
        out = sample(model, source, 12, **settings, **kwargs)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(out["ids"]), reference["ids"].numpy())
    np.testing.assert_allclose(keras.ops.convert_to_numpy(out["log_probs"]), reference["log_probs"].numpy(),
                               atol=1e-4)


def test_sampling_runs_in_a_tf_function_with_python_settings(model, source):
    # Traced, the loop's logits once lost their static vocabulary size, and a Python top_k then
    # failed ("Using a symbolic tf.Tensor as a Python bool").
    settings = dict(num_samples=2, temperature=0.9, top_k=6, top_p=0.8, seed=9, max_extra_length=4)
    traced = tf.function(lambda s: sample(model, s, 10, **settings)["ids"])
    np.testing.assert_array_equal(traced(source).numpy(), sample(model, source, 10, **settings)["ids"].numpy())


def test_sampling_runs_compiled_by_xla_with_tensor_settings(model, source):
    fn = tf.function(
        lambda s, t, k, p, seed: sample(model, s, 10, 2, t, k, p, seed, max_extra_length=4, cache_chunk=None)["ids"],
        jit_compile=True,
    )
    settings = (tf.constant([0.7, 1.0, 0.0]), tf.constant([5, 0, 0]), tf.constant([1.0, 0.8, 1.0]),
                tf.constant([1, 2, 3], tf.int64))
    expected = sample(model, source, 10, 2, *settings, max_extra_length=4)["ids"].numpy()
    np.testing.assert_array_equal(fn(source, *settings).numpy(), expected)


@pytest.mark.parametrize("name,value", [("temperature", -0.1), ("temperature", float("nan")), ("temperature", 1e5),
                                        ("top_k", -1),
                                        ("top_k", 2.5), ("top_p", 0.0), ("top_p", 1.5), ("num_samples", 0)])
def test_bad_python_settings_are_named(name, value):
    with pytest.raises(ValueError, match=f"`{name}` must be"):
        sample(None, [[2, 3]], 4, **{name: value})
