"""Decoding chosen per sentence, in one TensorFlow graph: each sentence of a
batch with its own beam size, length penalty, length limit, number of
hypotheses returned and sampling settings.

This is what the exported `translate` signature and `Translator` run. The
settings are tensors of one value per sentence, [B], not scalars per call:
TensorFlow Serving's batching merges the rows of concurrent requests into one
batch, and it refuses an input without a batch dimension
(tensorflow_serving/batching/batching_session.cc, ComputeInputSize), so
requests with different settings share a batch, each row keeping its own.

A sentence with `beam_size` >= 2 is beam searched (`beam_search`), and its
`num_return` best hypotheses are returned. Otherwise (`beam_size` 0 or 1) it
is decoded token by token (`sample`): greedily with `temperature` 0, else
sampled `num_return` times, with top-k and top-p filtering, from `seed`. The
two kinds run as two loops over their own rows; a kind no sentence asks for
does not run.
"""

import dataclasses
import numbers
from typing import Dict, Optional

import numpy as np
import tensorflow as tf

from keras_transformer.decoding.beam_search import BeamSearch
from keras_transformer.decoding.sampling import MAX_TEMPERATURE
from keras_transformer.decoding.sampling import Sampling
from keras_transformer.decoding.sampling import source_key
from keras_transformer.decoding.strategy import decode

# Each control: its dtype and the value `Translator` uses when none is given.
CONTROLS = {
    "beam_size": (tf.int32, 4),
    "alpha": (tf.float32, 0.6),
    "max_extra_length": (tf.int32, 50),
    "num_return": (tf.int32, 1),
    "temperature": (tf.float32, 0.0),
    "top_k": (tf.int32, 0),
    "top_p": (tf.float32, 1.0),
    "seed": (tf.int64, 0),
}


# The log-probability of an empty slot (past a sentence's num_return): finite, not -inf, so a REST
# reply stays standard JSON (TensorFlow Serving writes -inf as -Infinity, which JSON.parse refuses),
# and far below any real translation's.
EMPTY_LOG_PROB = -1e9


@dataclasses.dataclass(frozen=True)
class Limits:
    """Upper bounds on what a sentence may ask for (None: no bound).

    Attributes:
        max_beam_size: the largest `beam_size`.
        max_num_return: the largest `num_return` (the outputs' width at export).
    """

    max_beam_size: Optional[int] = None
    max_num_return: Optional[int] = None


def controls_for(batch, **values) -> Dict[str, tf.Tensor]:
    """Every control as a [B] tensor of its dtype: a value given once is
    repeated for each sentence, a missing one (or None) takes its default.

    Raises:
        ValueError: an unknown control, or a non-integer where an integer is due.
    """
    unknown = sorted(set(values) - set(CONTROLS))
    if unknown:
        raise ValueError(f"unknown decoding control(s) {unknown}; the controls are {sorted(CONTROLS)}")
    out = {}
    for name, (dtype, default) in CONTROLS.items():
        value = values.get(name)
        value = default if value is None else value
        if not isinstance(value, tf.Tensor):
            array = np.asarray(value)
            integral = array.dtype.kind in "iu" or (array.dtype == object and all(
                isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in array.flat))
            if array.dtype.kind == "b" or (dtype.is_integer and not integral) or array.dtype.kind not in "iufO":
                kind = "an integer" if dtype.is_integer else "a number"
                raise ValueError(f"`{name}` must be {kind}, or one per sentence. Received: {name}={value!r}")
        value = tf.convert_to_tensor(value, dtype)
        out[name] = tf.broadcast_to(value, [batch]) if value.shape.rank == 0 else value
    return out


def _as_text(values):
    """The first of `values` (a 0- or 1-element tensor) as a string, or ""."""
    if values.dtype.is_floating:
        text = tf.strings.as_string(values, shortest=True)
    else:
        text = tf.strings.as_string(values)
    return tf.strings.reduce_join(text)


def _require(ok, message, values=None, name=None):
    """An op asserting every element of bool `ok`. Its message is `message`
    (a str or a string tensor) and, with `values`, the first of them that
    fails, as "Received: name=value". No brackets in it: the server reads an
    assertion's message up to the first "]". Eagerly, a failure raises
    ValueError at once.
    """
    if values is not None:
        message = tf.strings.reduce_join(
            [message, f". Received: {name}=", _as_text(tf.boolean_mask(values, ~ok)[:1])]
        )
    if tf.executing_eagerly():
        if not bool(tf.reduce_all(ok)):
            raise ValueError(message.numpy().decode() if isinstance(message, tf.Tensor) else message)
        return tf.no_op()
    return tf.debugging.Assert(tf.reduce_all(ok), [message])


def check_controls(controls: Dict[str, tf.Tensor], batch, limits: Limits = Limits()) -> Dict[str, tf.Tensor]:
    """`controls` ([B] tensors, one per name in `CONTROLS`), each returned only
    once every check has passed: in a graph, a failed check is an
    InvalidArgumentError (TensorFlow Serving's INVALID_ARGUMENT) whose message
    names the control, the bound and the first value out of it; eagerly, a
    ValueError.
    """
    missing = sorted(set(CONTROLS) - set(controls))
    if missing:
        raise ValueError(f"decoding controls missing: {missing}")
    c = controls
    checks = []
    for name in CONTROLS:
        rows = tf.shape(c[name])[0]
        message = tf.strings.format(f"`{name}` has {{}} values for {{}} sentences: give one value per sentence",
                                    [rows, batch])
        checks.append(_require(tf.equal(rows, batch), message))
    with tf.control_dependencies(checks):  # the rest reads rows that must line up
        c = {name: tf.identity(value) for name, value in c.items()}

    def require(name, ok, expected):
        return _require(ok, f"`{name}` must be {expected}", c[name], name)

    def between(name, low, high, why=""):
        if high is None:
            return require(name, c[name] >= low, f"at least {low}{why}")
        return require(name, (c[name] >= low) & (c[name] <= high), f"between {low} and {high:g}{why}")

    def finite(name, why):
        return require(name, tf.math.is_finite(c[name]) & (c[name] >= 0), f"a finite number of at least 0{why}")


    at_export = ", the limit fixed at export"
    sampled = c["temperature"] > 0
    checks = [
        between("beam_size", 0, limits.max_beam_size, " (0 or 1: one hypothesis, decoded greedily or sampled"
                + (")" if limits.max_beam_size is None else f"){at_export}")),
        between("num_return", 1, limits.max_num_return, "" if limits.max_num_return is None else at_export),
        between("max_extra_length", 0, None, " (more than the model's max_length is its max_length)"),
        between("top_k", 0, None, " (0 keeps every token)"),
        finite("alpha", " (the length-penalty exponent)"),
        between("temperature", 0, MAX_TEMPERATURE, " (0: beam search or greedy decoding)"),
        require("top_p", (c["top_p"] > 0) & (c["top_p"] <= 1), "above 0 and at most 1 (1 keeps every token)"),
        require("beam_size", ~sampled | (c["beam_size"] <= 1), "0 or 1 when the temperature is above 0 (sampling)"),
        require("num_return", sampled | (c["num_return"] <= tf.maximum(c["beam_size"], 1)),
                "at most beam_size (the n-best of a beam search), 1 for greedy decoding"),
    ]
    with tf.control_dependencies(checks):
        return {name: tf.identity(value) for name, value in c.items()}


def _fit_width(ids, log_probs, width):
    """[n, K, L] and [n, K] -> [n, width, L] and [n, width]: cut, or padded
    with empty hypotheses (no ids, log-probability EMPTY_LOG_PROB)."""
    ids, log_probs = ids[:, :width], log_probs[:, :width]
    more = tf.maximum(width - tf.shape(ids)[1], 0)
    ids = tf.pad(ids, [[0, 0], [0, more], [0, 0]])
    log_probs = tf.pad(log_probs, [[0, 0], [0, more]], constant_values=EMPTY_LOG_PROB)
    return ids, log_probs


def _max_length(model, source, max_extra_length):
    return tf.minimum(tf.shape(source)[1] + tf.reduce_max(max_extra_length), model.max_length)


def _beam_searched(model, source, c, width, cache_chunk):
    strategy = BeamSearch(tf.reduce_max(c["beam_size"]), c["alpha"], beam_sizes=c["beam_size"])
    out = decode(model, source, _max_length(model, source, c["max_extra_length"]), strategy,
                 max_extra_length=c["max_extra_length"], cache_chunk=cache_chunk)
    return _fit_width(out["ids"], out["log_probs"], width)


def _sampled(model, source, c, width, cache_chunk):
    strategy = Sampling(tf.reduce_max(c["num_return"]), c["temperature"], c["top_k"], c["top_p"], c["seed"],
                        counts=c["num_return"], salt=source_key(source))
    out = decode(model, source, _max_length(model, source, c["max_extra_length"]), strategy,
                 max_extra_length=c["max_extra_length"], cache_chunk=cache_chunk)
    return _fit_width(out["ids"], out["log_probs"], width)


def decode_per_sentence(model, source, controls: Dict[str, tf.Tensor], width, cache_chunk=16):
    """Decodes each sentence of `source` with its own controls.

    Args:
        model: a `Transformer`.
        source: int32 [B, S] source ids, 0-padded.
        controls: the [B] tensors of `check_controls` (checked).
        width: R, the hypotheses returned per sentence (an int or a scalar
            int32 tensor); sentence b fills its first num_return[b].
        cache_chunk: as in `beam_search`.

    Returns:
        ids int32 [B, R, L] (each ending in [END], 0-padded) and log_probs
        float32 [B, R], the model's log-probability of each hypothesis,
        best first: in score order for a beam search, by log-probability
        for samples. Slots past a sentence's `num_return` have no ids and a
        log-probability of EMPTY_LOG_PROB.
    """
    source = tf.convert_to_tensor(source, tf.int32)
    # Past the model's positions a larger limit changes nothing (and source length + it must not wrap).
    controls = {**controls, "max_extra_length": tf.minimum(controls["max_extra_length"], model.max_length)}
    beamed = controls["beam_size"] >= 2
    stitch_rows, stitch_ids, stitch_log_probs = [], [], []
    for rows, run in ((tf.where(beamed)[:, 0], _beam_searched), (tf.where(~beamed)[:, 0], _sampled)):
        rows = tf.cast(rows, tf.int32)
        part = {name: tf.gather(value, rows) for name, value in controls.items()}
        part_source = tf.gather(source, rows)

        def empty():
            return tf.zeros([0, width, 0], tf.int32), tf.zeros([0, width], tf.float32)

        ids, log_probs = tf.cond(
            tf.size(rows) > 0,
            lambda run=run, part=part, part_source=part_source: run(model, part_source, part, width, cache_chunk),
            empty,
        )
        stitch_rows.append(rows)
        stitch_ids.append(ids)
        stitch_log_probs.append(log_probs)
    length = tf.reduce_max([tf.shape(ids)[2] for ids in stitch_ids])
    stitch_ids = [tf.pad(ids, [[0, 0], [0, 0], [0, length - tf.shape(ids)[2]]]) for ids in stitch_ids]
    ids = tf.dynamic_stitch(stitch_rows, stitch_ids)  # [B, R, L], back in the sentences' order
    log_probs = tf.dynamic_stitch(stitch_rows, stitch_log_probs)
    asked = tf.range(width)[None, :] < controls["num_return"][:, None]  # [B, R]
    ids = tf.where(asked[:, :, None], ids, 0)
    log_probs = tf.where(asked, log_probs, EMPTY_LOG_PROB)
    return ids, log_probs

