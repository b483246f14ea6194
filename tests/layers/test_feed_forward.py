import numpy as np
import pytest

from keras_transformer.layers import FeedForward
from tests.backend import to_numpy
from tests.layer_test_case import run_layer_test


def test_layer_contract():
    run_layer_test(
        FeedForward,
        {"d_ff": 32},
        np.random.normal(size=(2, 5, 8)).astype("float32"),
        expected_output_shape=(2, 5, 8),
        expected_num_trainable_weights=4,
    )


def test_equals_formula():
    x = np.random.normal(size=(2, 5, 8)).astype("float32")
    layer = FeedForward(d_ff=32)
    output = layer(x)
    w1, b1, w2, b2 = [to_numpy(w) for w in layer.weights]
    np.testing.assert_allclose(output, np.maximum(x @ w1 + b1, 0) @ w2 + b2, atol=1e-5)


def test_bad_arguments():
    with pytest.raises(ValueError, match="d_ff"):
        FeedForward(d_ff=-3)
    with pytest.raises(ValueError, match="activation_dropout"):
        FeedForward(d_ff=3, activation_dropout=2)
