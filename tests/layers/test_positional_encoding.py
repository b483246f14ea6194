import math

import numpy as np
import pytest
from keras import ops

from keras_transformer.layers import PositionalEncoding
from keras_transformer.layers import positional_encoding
from tests.backend import graph
from tests.backend import is_tensorflow
from tests.layer_test_case import run_layer_test


def test_table_equals_formula():
    table = positional_encoding(50, 6)
    for pos in (0, 1, 7, 49):
        for i in range(3):
            angle = pos / 10000 ** (2 * i / 6)
            assert table[pos, 2 * i] == pytest.approx(math.sin(angle), abs=1e-6)
            assert table[pos, 2 * i + 1] == pytest.approx(math.cos(angle), abs=1e-6)
    # Hand-computed: position 1, d_model 4 -> sin(1), cos(1), sin(0.01), cos(0.01).
    np.testing.assert_allclose(
        positional_encoding(2, 4)[1], [0.841471, 0.540302, 0.0099998, 0.99995], atol=1e-6
    )


def test_odd_model_size():
    table = positional_encoding(3, 5)
    assert table.shape == (3, 5)
    assert table[2, 4] == pytest.approx(math.sin(2 / 10000 ** (4 / 5)), abs=1e-6)


def test_layer_contract():
    run_layer_test(
        PositionalEncoding,
        {"max_length": 16},
        np.random.normal(size=(2, 5, 8)).astype("float32"),
        expected_output_shape=(2, 5, 8),
        expected_num_trainable_weights=0,
        run_fit=False,
    )


def test_adds_table_slice_at_start_index():
    x = np.random.normal(size=(2, 3, 8)).astype("float32")
    layer = PositionalEncoding(max_length=10)
    table = positional_encoding(10, 8)
    np.testing.assert_allclose(layer(x), x + table[:3], atol=1e-6)
    np.testing.assert_allclose(layer(x, start_index=4), x + table[4:7], atol=1e-6)
    in_graph = graph(lambda x, i: layer(x, start_index=i))  # a traced start_index
    np.testing.assert_allclose(in_graph(x, ops.convert_to_tensor(7, "int32")), x + table[7:10], atol=1e-6)


def test_per_row_start_index_offsets_each_row():
    x = np.random.normal(size=(3, 2, 8)).astype("float32")
    layer = PositionalEncoding(max_length=10)
    table = positional_encoding(10, 8)
    expected = np.stack([x[0] + table[0:2], x[1] + table[5:7], x[2] + table[8:10]])
    starts = ops.convert_to_tensor([0, 5, 8], "int32")
    np.testing.assert_allclose(layer(x, start_index=starts), expected, atol=1e-6)
    in_graph = graph(lambda x, i: layer(x, start_index=i))
    np.testing.assert_allclose(in_graph(x, starts), expected, atol=1e-6)
    too_far = ops.convert_to_tensor([0, 5, 9], "int32")
    _assert_refused_past_max_length(layer, in_graph, x, too_far)
    with pytest.raises(ValueError, match=r"scalar or a \[batch\] vector"):
        layer(x, start_index=ops.zeros([3, 1], "int32"))


def _assert_refused_past_max_length(layer, in_graph, x, start_index):
    """A tensor `start_index` that runs past `max_length` is refused by name.

    On TensorFlow the check is a graph assertion (`tf.debugging.assert_less_equal`), which runs inside
    `tf.function` too: InvalidArgumentError. Off TensorFlow the library checks a concrete value, eagerly,
    with a ValueError; a value traced by `jax.jit` cannot be checked (jit has no runtime errors,
    keras_transformer/layers/validation.py, `assert_at_most`), so on JAX the eager call is the check.
    """
    if is_tensorflow():
        import tensorflow as tf

        with pytest.raises(tf.errors.InvalidArgumentError, match="longer than `max_length`"):
            in_graph(x, start_index)
    else:
        with pytest.raises(ValueError, match=r"longer than `max_length` \(\d+\) of PositionalEncoding"):
            layer(x, start_index=start_index)


def test_too_long_sequence_is_a_clear_error():
    layer = PositionalEncoding(max_length=4)
    with pytest.raises(ValueError, match=r"exceed `max_length`.*4.*length=5"):
        layer(ops.zeros([1, 5, 8]))
    with pytest.raises(ValueError, match=r"start_index=3, length=2"):
        layer(ops.zeros([1, 2, 8]), start_index=3)
    in_graph = graph(lambda x, i: layer(x, start_index=i))
    _assert_refused_past_max_length(layer, in_graph, ops.zeros([1, 2, 8]), ops.convert_to_tensor(3, "int32"))
    with pytest.raises(ValueError, match="max_length"):
        PositionalEncoding(max_length=0)
