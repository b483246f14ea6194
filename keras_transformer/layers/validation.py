"""Argument checks shared by the layers: each error names the argument,
what was expected and what was received."""

import numbers


def check_positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
        raise ValueError(
            f"`{name}` must be a positive integer. Received: {name}={value!r}"
        )
    return int(value)


def check_rate(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value < 1:
        raise ValueError(
            f"`{name}` must be a float in the range [0, 1). Received: {name}={value!r}"
        )
    return float(value)


def check_rank(name: str, shape, expected_rank: int) -> None:
    if shape is None:
        return
    rank = len(shape)
    if rank != expected_rank:
        raise ValueError(
            f"`{name}` must have rank {expected_rank}. Received: {name}.shape={tuple(shape)}"
        )


def check_choice(name: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(
            f"`{name}` must be one of {sorted(choices)}. Received: {name}={value!r}"
        )
