"""Tensors to and from JSON as TensorFlow Serving's REST API writes them (json_tensor.cc)."""

import base64
import json
import os

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

from serving.errors import ServingError  # noqa: E402
from serving.errors import StatusCode  # noqa: E402


def json_value(value):
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return {"b64": base64.b64encode(value).decode("ascii")}
    if isinstance(value, np.generic):
        return value.item()
    return value


def to_json(array: np.ndarray):
    if array.dtype == object:
        return np.vectorize(json_value, otypes=[object])(array).tolist() if array.size else array.tolist()
    return array.tolist()


def from_json(name: str, value, dtype: tf.DType) -> np.ndarray:
    # TensorFlow Serving's JSON reader takes each value only in its tensor's own
    # JSON type: strings (or {"b64": ...}) for a string tensor, integers for an
    # integer one, numbers for a float one, booleans for a bool one
    # (tensorflow_serving/util/json_tensor.cc). NumPy alone would turn 3.9 or
    # "5" into an int id.
    if dtype == tf.string:
        accepted, kind = (str,), "a string"
    elif dtype == tf.bool:
        accepted, kind = (bool,), "a boolean"
    elif dtype.is_integer:
        accepted, kind = (int,), "an integer"
    else:
        accepted, kind = (int, float), "a number"

    def decode(item):
        if isinstance(item, list):
            return [decode(i) for i in item]
        if isinstance(item, dict) and dtype == tf.string:
            if set(item) != {"b64"}:
                raise ServingError(StatusCode.INVALID_ARGUMENT, f"input \"{name}\": objects must be {{\"b64\": ...}}")
            return base64.b64decode(item["b64"], validate=True)  # "!!" is an error, not b""
        if not isinstance(item, accepted) or (isinstance(item, bool) and bool not in accepted):
            raise ServingError(
                StatusCode.INVALID_ARGUMENT,
                f"input \"{name}\" is a {dtype.name} tensor, but a value is {json.dumps(item)[:40]} "
                f"({'null' if item is None else type(item).__name__}), not {kind}",
            )
        return item.encode("utf-8") if dtype == tf.string else item

    try:
        array = np.array(decode(value), dtype=object if dtype == tf.string else dtype.as_numpy_dtype)
    except (TypeError, ValueError, OverflowError) as error:
        raise ServingError(
            StatusCode.INVALID_ARGUMENT, f"input \"{name}\" does not convert to {dtype.name}: {error}"
        ) from None
    except RecursionError:
        raise ServingError(StatusCode.INVALID_ARGUMENT, f"input \"{name}\" is nested too deeply") from None
    if array.dtype == object and not all(isinstance(item, bytes) for item in array.flat):
        raise ServingError(
            StatusCode.INVALID_ARGUMENT, f"input \"{name}\": lists of unequal lengths (a tensor must be rectangular)"
        )
    return array
