"""Argument checks shared by the layers, decoding, data, training and export:
each error names the argument, what was expected and what was received."""

import math
import numbers
import warnings

import keras


def check_positive_int(name: str, value) -> int:
    return check_int_at_least(name, value, 1)


def check_int_at_least(name: str, value, minimum: int, why: str = "") -> int:
    """`value` as an int, refused unless it is an integer >= `minimum` (`why`: the reason, for the message)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        expected = "a positive integer" if minimum == 1 else f"an integer of at least {minimum}"
        raise ValueError(f"`{name}` must be {expected}{why}. Received: {name}={value!r}")
    return int(value)


def check_rate(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value < 1:
        raise ValueError(
            f"`{name}` must be a float in the range [0, 1). Received: {name}={value!r}"
        )
    return float(value)


def check_rank(name: str, shape, expected_rank: int) -> None:
    if shape is None or getattr(shape, "rank", 0) is None:  # (unknown rank: nothing to check yet)
        return
    rank = len(shape)
    if rank != expected_rank:
        raise ValueError(
            f"`{name}` must have rank {expected_rank}. Received: {name}.shape={tuple(shape)}"
        )


FLOAT32_MAX = 3.4028234663852886e38


def check_rotary_options(rotary: bool, max_wavelength, scaling_factor) -> tuple:
    """(`rotary_max_wavelength`, `rotary_scaling_factor`) as floats: finite
    numbers above 1 and at least 1. Without rotary embeddings (`rotary`
    False) they change nothing: changed values are ignored with a warning
    (not refused: configs saved before this check hold them) and the
    defaults (10000, 1) returned, so a config written afterwards drops them."""
    for name, value, valid, bound in (
        ("rotary_max_wavelength", max_wavelength, lambda v: v > 1, "above 1"),
        ("rotary_scaling_factor", scaling_factor, lambda v: v >= 1, "of at least 1"),
    ):
        try:  # (an int or Fraction too large for a float raises OverflowError)
            number = None if isinstance(value, bool) or not isinstance(value, numbers.Real) else float(value)
        except OverflowError:
            number = None
        # (finite in float32, where the embedding computes: 1e39 passed, then failed in the first call)
        if number is None or not math.isfinite(number) or abs(number) > FLOAT32_MAX or not valid(number):
            raise ValueError(f"`{name}` must be a finite number {bound} (a float32). Received: {name}={value!r}")
    if not rotary:
        if max_wavelength != 10000 or scaling_factor != 1:
            warnings.warn(
                "`rotary_max_wavelength` and `rotary_scaling_factor` are ignored without "
                f"position_embedding='rotary'. Received: rotary_max_wavelength={max_wavelength!r}, "
                f"rotary_scaling_factor={scaling_factor!r}",
                stacklevel=3,
            )
        return 10000.0, 1.0
    return float(max_wavelength), float(scaling_factor)


def check_choice(name: str, value, choices) -> None:
    # (A string or None, as every choice is: an array equal to a choice passed `in`; a list was unhashable.)
    if not (value is None or isinstance(value, str)) or value not in choices:
        raise ValueError(
            f"`{name}` must be one of {sorted(choices, key=repr)}. Received: {name}={value!r}"
        )


def assert_at_most(value, limit: int, message: str, then):
    """`then`, once the scalar tensor `value` is checked to be at most `limit`.

    On TensorFlow it is `tf.debugging.assert_less_equal` (InvalidArgumentError),
    eager or inside a `tf.function`, where it runs before anything computed
    from `then`. Elsewhere an eager value is checked at once (ValueError). A traced JAX
    value cannot be checked (jit has no runtime errors): there the caller's
    static checks are all there is.
    """
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf  # TensorFlow's own assertion: it runs inside graphs too

        check = tf.debugging.assert_less_equal(value, tf.cast(limit, value.dtype), message=message)
        with tf.control_dependencies([check]):
            return tf.identity(then)
    try:
        concrete = int(keras.ops.convert_to_numpy(value))
    except Exception:  # a traced value (JAX jit): not known before it runs
        return then
    if concrete > limit:
        raise ValueError(f"{message}. Received {concrete} > {limit}")
    return then
