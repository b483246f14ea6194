import keras
import numpy as np
import pytest
from keras import ops

from keras_transformer.layers import Dropout
from tests.backend import compiled_call
from tests.backend import dtype
from tests.backend import gradients
from tests.backend import to_numpy
from tests.layer_test_case import run_layer_test


def test_layer_contract():
    run_layer_test(
        Dropout,
        {"rate": 0.2, "seed": 3},
        np.random.normal(size=(2, 5, 8)).astype("float32"),
        expected_output_shape=(2, 5, 8),
        expected_num_trainable_weights=0,
        run_fit=False,
    )


def test_identity_unless_training():
    x = np.random.normal(size=(3, 7, 5)).astype("float32")
    np.testing.assert_array_equal(Dropout(0.3)(x), x)
    np.testing.assert_array_equal(Dropout(0.3)(x, training=False), x)
    np.testing.assert_array_equal(Dropout(0.0)(x, training=True), x)


@pytest.mark.parametrize("rate", [0.1, 0.3])
def test_drops_the_rate_and_scales_the_rest(rate):
    x = np.random.uniform(1.0, 2.0, size=(250, 41, 97)).astype("float32")  # odd size: 994,250
    y = to_numpy(Dropout(rate, seed=3)(x, training=True))
    dropped = y == 0
    # Binomial standard deviation: sqrt(0.3 * 0.7 / 994,250) = 0.00046.
    assert abs(dropped.mean() - rate) < 0.003
    np.testing.assert_allclose(y[~dropped], x[~dropped] / (1 - rate), rtol=1e-4)
    # Inverted dropout keeps the expectation: mean(y) ~ mean(x).
    assert abs(y.mean() / x.mean() - 1) < 0.01
    # Masks are not correlated along any axis: each row drops about `rate`.
    assert np.abs(dropped.mean(axis=(0, 1)) - rate).max() < 0.03
    assert np.abs(dropped.mean(axis=(0, 2)) - rate).max() < 0.03


def test_gradient_is_the_mask():
    layer = Dropout(0.25, seed=5)
    x = np.random.uniform(1.0, 2.0, size=(4, 9, 16)).astype("float32")

    def forward(call, x):
        y = call(x, training=True)
        return ops.sum(y * 3.0), y

    y, grad, _ = gradients(layer, forward, x)
    kept = y != 0
    np.testing.assert_allclose(grad[kept], 3.0 / 0.75, rtol=1e-6)
    np.testing.assert_array_equal(grad[~kept], 0.0)


def test_new_mask_each_call_same_masks_from_same_seed():
    x = np.ones((64, 64), "float32")
    first, second = Dropout(0.5, seed=7), Dropout(0.5, seed=7)
    a1, a2 = to_numpy(first(x, training=True)), to_numpy(first(x, training=True))
    b1, b2 = to_numpy(second(x, training=True)), to_numpy(second(x, training=True))
    assert (a1 != a2).mean() > 0.4  # independent masks differ at ~half the places
    np.testing.assert_array_equal(a1, b1)
    np.testing.assert_array_equal(a2, b2)


def test_seed_state_resumes_the_stream():
    x = np.ones((32, 32), "float32")
    layer = Dropout(0.5, seed=11)
    layer(x, training=True)
    state = [to_numpy(v) for v in layer.variables]
    expected = to_numpy(layer(x, training=True))
    for variable, value in zip(layer.variables, state):
        variable.assign(value)
    np.testing.assert_array_equal(layer(x, training=True), expected)


def test_mixed_precision_and_xla():
    keras.config.set_dtype_policy("mixed_bfloat16")
    layer = Dropout(0.2, seed=1)
    x = ops.ones((16, 33, 8), "bfloat16")
    y = compiled_call(layer, training=True)(x)
    assert dtype(y) == "bfloat16"
    values = np.unique(to_numpy(y).astype("float32"))
    np.testing.assert_allclose(values, [0.0, 1.25], rtol=1e-2)  # bfloat16 holds 1.25 exactly


def test_config_round_trip_and_bad_rate():
    layer = Dropout(0.2, seed=4, name="drop")
    clone = Dropout.from_config(layer.get_config())
    assert (clone.rate, clone.seed, clone.name) == (0.2, 4, "drop")
    with pytest.raises(ValueError, match="rate"):
        Dropout(1.0)
    with pytest.raises(ValueError, match="rate"):
        Dropout(-0.1)
