"""Decoding chosen per sentence: in one batch, each sentence decoded as the
search it asked for would decode it alone; bounds refused, naming the control."""

import re

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_transformer as kt
from keras_transformer.decoding import beam_search
from keras_transformer.decoding import greedy_decode
from keras_transformer.decoding import sample
from keras_transformer.decoding.per_sentence import CONTROLS
from keras_transformer.decoding.per_sentence import EMPTY_LOG_PROB
from keras_transformer.decoding.per_sentence import Limits
from keras_transformer.decoding.per_sentence import check_controls
from keras_transformer.decoding.per_sentence import controls_for
from keras_transformer.decoding.per_sentence import decode_per_sentence

START, END, VOCAB, WIDTH = 2, 3, 24, 5
LIMITS = Limits(max_beam_size=6, max_num_return=WIDTH)


@pytest.fixture(scope="module")
def model():
    keras.utils.set_random_seed(7)
    model = kt.Transformer(VOCAB, VOCAB, num_layers=2, d_model=32, num_heads=4, d_ff=64, dropout=0.0, max_length=40)
    model.build()
    return model


@pytest.fixture(scope="module")
def source():
    rng = np.random.default_rng(8)
    ids = rng.integers(4, VOCAB, size=(6, 8)).astype("int32")
    ids[:, 0] = START
    for row, length in enumerate([8, 5, 3, 7, 6, 4]):
        ids[row, length - 1] = END
        ids[row, length:] = 0
    return ids


@pytest.fixture(scope="module")
def run(model):
    """The signature's path: checked controls, unknown shapes, one graph."""
    specs = [tf.TensorSpec([None, None], tf.int32)] + [tf.TensorSpec([None], d) for d, _ in CONTROLS.values()]

    @tf.function(input_signature=specs)
    def fn(source, *values):
        controls = check_controls(dict(zip(CONTROLS, values)), tf.shape(source)[0], LIMITS)
        return decode_per_sentence(model, source, controls, WIDTH)

    def call(source, **controls):
        values = controls_for(len(source), **controls)
        ids, log_probs = fn(source, *values.values())
        return ids.numpy(), log_probs.numpy()

    return call


def _max_length(source, extra):
    return min(source.shape[1] + extra, 40)


def test_each_sentence_is_decoded_as_its_own_search_would_decode_it_alone(model, source, run):
    # One batch holds beam searches of three sizes (one next to a wider one), greedy decoding
    # (beam_size 0 and 1) and sampling, each sentence with its own length penalty and limit.
    controls = dict(
        beam_size=[3, 0, 6, 1, 1, 2], alpha=[0.6, 0.0, 1.0, 0.6, 0.6, 0.2], max_extra_length=[4, 6, 9, 3, 5, 2],
        num_return=[3, 1, 5, 1, 4, 2], temperature=[0.0, 0.0, 0.0, 0.0, 0.9, 0.0], top_k=[0, 0, 0, 0, 7, 0],
        top_p=[1.0, 1.0, 1.0, 1.0, 0.85, 1.0], seed=[0, 0, 0, 0, 21, 0],
    )
    ids, log_probs = run(source, **controls)
    assert ids.shape[:2] == (6, WIDTH) and log_probs.shape == (6, WIDTH)
    for b in range(6):
        alone = source[b : b + 1]
        c = {name: values[b] for name, values in controls.items()}
        extra = c["max_extra_length"]
        if c["beam_size"] >= 2:
            out = beam_search(model, alone, _max_length(alone, extra), c["beam_size"], c["alpha"],
                              max_extra_length=extra)
            expected_ids, expected_log_probs = out["ids"].numpy()[0], out["log_probs"].numpy()[0]
        elif c["temperature"] > 0:
            out = sample(model, alone, _max_length(alone, extra), c["num_return"], c["temperature"], c["top_k"],
                         c["top_p"], c["seed"], max_extra_length=extra)
            expected_ids, expected_log_probs = out["ids"].numpy()[0], out["log_probs"].numpy()[0]
        else:
            expected_ids = greedy_decode(model, alone, _max_length(alone, extra), max_extra_length=extra).numpy()
        n = c["num_return"]
        length = expected_ids.shape[-1]
        np.testing.assert_array_equal(ids[b, :n, :length], expected_ids[:n] if expected_ids.ndim == 2 else expected_ids)
        assert (ids[b, :, length:] == 0).all()
        if c["beam_size"] >= 2 or c["temperature"] > 0:
            np.testing.assert_allclose(log_probs[b, :n], expected_log_probs[:n], atol=1e-4)
        # Slots past num_return are empty.
        assert (ids[b, n:] == 0).all() and (log_probs[b, n:] == EMPTY_LOG_PROB).all()
        assert np.isfinite(log_probs[b, :n]).all()


def test_num_return_is_the_beams_n_best_distinct_and_in_score_order(model, source, run):
    ids, log_probs = run(source, beam_size=5, num_return=5, alpha=0.6, max_extra_length=6)
    reference = beam_search(model, source, _max_length(source, 6), beam_size=5, alpha=0.6, max_extra_length=6)
    length = reference["ids"].shape[-1]
    np.testing.assert_array_equal(ids[:, :, :length], reference["ids"].numpy())
    np.testing.assert_allclose(log_probs, reference["log_probs"].numpy(), atol=1e-5)
    scores = reference["scores"].numpy()
    assert (np.diff(scores, axis=1) <= 1e-6).all()
    for b in range(len(source)):
        assert len({tuple(row) for row in ids[b]}) == 5


def test_beam_size_one_is_greedy_whatever_its_length_penalty(model, source, run):
    # beam_search(beam_size=1) with alpha > 0 may keep going past an [END]; beam_size 1 here is greedy.
    ids, _ = run(source, beam_size=1, alpha=2.0, max_extra_length=6)
    greedy = greedy_decode(model, source, _max_length(source, 6), max_extra_length=6).numpy()
    np.testing.assert_array_equal(ids[:, 0, : greedy.shape[1]], greedy)


def test_a_sentence_cut_by_its_limit_ends_there_beside_longer_ones(model, source, run):
    ids, _ = run(source, beam_size=[2, 2, 0, 0, 1, 3], max_extra_length=[0, 30, 0, 30, 1, 2], num_return=1)
    lengths = (source != 0).sum(axis=1)
    for b, extra in enumerate([0, 30, 0, 30, 1, 2]):
        generated = int((ids[b, 0] != 0).sum())
        assert generated <= min(lengths[b] + extra, 40)


def test_one_kind_alone_and_an_empty_batch(model, source, run):
    for controls in (dict(beam_size=3, num_return=2), dict(beam_size=0, temperature=0.7, num_return=3, seed=2)):
        ids, log_probs = run(source, **controls)
        assert ids.shape[:2] == (6, WIDTH) and np.isfinite(log_probs[:, : controls["num_return"]]).all()
    ids, log_probs = run(source[:0])
    assert ids.shape[:2] == (0, WIDTH) and log_probs.shape == (0, WIDTH)


def test_a_huge_max_extra_length_is_the_models_max_length(model, source, run):
    # source length + 2**31 - 1 would wrap around in int32.
    ids, _ = run(source, beam_size=[2, 0, 0, 0, 0, 0], max_extra_length=2**31 - 1)
    reference, _ = run(source, beam_size=[2, 0, 0, 0, 0, 0], max_extra_length=40)
    np.testing.assert_array_equal(ids, reference)


BAD = [
    (dict(beam_size=7), "`beam_size` must be between 0 and 6 .* Received: beam_size=7"),
    (dict(beam_size=-1), "`beam_size` must be between 0 and 6 .* Received: beam_size=-1"),
    (dict(num_return=0), "`num_return` must be between 1 and 5, the limit fixed at export. Received: num_return=0"),
    (dict(num_return=6, beam_size=6), "`num_return` must be between 1 and 5.* Received: num_return=6"),
    (dict(num_return=3, beam_size=2), "`num_return` must be at most beam_size .* Received: num_return=3"),
    (dict(num_return=2, beam_size=1), "`num_return` must be at most beam_size .* Received: num_return=2"),
    (dict(temperature=0.5, beam_size=3), "`beam_size` must be 0 or 1 when the temperature is above 0 .*=3"),
    (dict(temperature=-1.0), "`temperature` must be between 0 and 10000 .* Received: temperature=-1"),
    (dict(temperature=float("inf"), beam_size=0), "`temperature` must be between 0 and 10000 .* temperature=inf"),
    (dict(temperature=3e38, beam_size=0), "`temperature` must be between 0 and 10000 .* temperature=3e\\+38"),
    (dict(temperature=float("nan"), beam_size=0), "`temperature` must be between 0 and 10000 .* temperature=nan"),
    (dict(alpha=float("nan")), "`alpha` must be a finite number .* Received: alpha=nan"),
    (dict(top_k=-2), "`top_k` must be at least 0 .* Received: top_k=-2"),
    (dict(top_p=0.0), "`top_p` must be above 0 and at most 1 .* Received: top_p=0"),
    (dict(top_p=1.25), "`top_p` must be above 0 and at most 1 .* Received: top_p=1.25"),
    (dict(max_extra_length=-3), "`max_extra_length` must be at least 0 .* Received: max_extra_length=-3"),
]


@pytest.mark.parametrize("bad,message", BAD)
def test_a_control_out_of_bounds_is_refused_in_the_graph_naming_it(source, run, bad, message):
    # The bad values are the last sentence's only: the message names them, not the good ones.
    controls = {name: [default] * len(source) for name, (_, default) in CONTROLS.items()}
    controls.update(beam_size=[2] * len(source), num_return=[1] * len(source))
    for name, value in bad.items():
        controls[name][-1] = value
    with pytest.raises(tf.errors.InvalidArgumentError) as error:
        run(source, **controls)
    first = error.value.message.split("assertion failed: [", 1)[1].split("]", 1)[0]
    assert re.fullmatch(message, first), first


@pytest.mark.parametrize("bad,message", BAD)
def test_the_same_checks_eagerly_raise_value_errors(bad, message):
    with pytest.raises(ValueError, match=message):
        check_controls(controls_for(1, **{"beam_size": 2, **bad}), 1, LIMITS)


def test_one_value_per_sentence(source, run):
    controls = controls_for(len(source))
    with pytest.raises(ValueError, match="`seed` has 2 values for 6 sentences: give one value per sentence"):
        check_controls({**controls, "seed": tf.constant([1, 2], tf.int64)}, len(source))
    with pytest.raises(ValueError, match=r"`top_k` must be an integer, or one per sentence. Received: top_k=2.5"):
        controls_for(3, top_k=2.5)
    with pytest.raises(ValueError, match=r"unknown decoding control\(s\) \['beams'\]"):
        controls_for(3, beams=2)
