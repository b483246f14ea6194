import keras
import numpy as np
import pytest
from keras import ops

from keras_transformer.layers import EncoderLayer
from tests import reference
from tests.backend import keras_mask
from tests.backend import to_numpy
from tests.layer_test_case import run_layer_test

B, T, D, N = 2, 6, 16, 4


def _weights(layer):
    return [to_numpy(w).astype(np.float64) for w in layer.weights]


@pytest.mark.parametrize("norm_first", [False, True])
def test_layer_contract(norm_first):
    run_layer_test(
        EncoderLayer,
        {"num_heads": N, "d_ff": 32, "norm_first": norm_first},
        np.random.normal(size=(B, T, D)).astype("float32"),
        expected_output_shape=(B, T, D),
        expected_num_trainable_weights=16,
    )


@pytest.mark.parametrize("norm_first", [False, True])
def test_matches_numpy_reference(norm_first):
    ids = np.array([[3, 4, 5, 6, 0, 0], [6, 7, 8, 9, 10, 11]])
    x = keras.layers.Embedding(20, D, mask_zero=True)(ids)
    layer = EncoderLayer(num_heads=N, d_ff=32, norm_first=norm_first)
    output = layer(x)
    mask = np.broadcast_to((ids != 0)[:, None, :], (B, T, T))
    expected = reference.encoder_layer(to_numpy(x), _weights(layer), N, mask, norm_first)
    np.testing.assert_allclose(output, expected, atol=1e-4)
    np.testing.assert_array_equal(keras_mask(output), ids != 0)


def test_dropout_only_in_training():
    x = np.random.normal(size=(B, T, D)).astype("float32")
    layer = EncoderLayer(num_heads=N, d_ff=32, dropout=0.5)
    np.testing.assert_allclose(layer(x), layer(x, training=False))
    assert not np.allclose(layer(x, training=True), layer(x))


def test_padded_content_does_not_change_unpadded_outputs():
    ids = np.array([[3, 4, 5, 0, 0, 0]])
    embedding = keras.layers.Embedding(20, D, mask_zero=True)
    layer = EncoderLayer(num_heads=N, d_ff=32)
    padded = to_numpy(layer(embedding(ids)))
    trimmed = to_numpy(layer(embedding(ids[:, :3])))
    np.testing.assert_allclose(padded[:, :3], trimmed, atol=1e-5)


def test_causal_cached_layer_equals_full_pass():
    x = np.random.normal(size=(B, T, D)).astype("float32")
    layer = EncoderLayer(num_heads=N, d_ff=32, norm_first=True)
    full = layer(x, use_causal_mask=True)
    cache = layer.init_cache(B, T)
    steps = []
    for t in range(T):
        out, cache = layer(x[:, t : t + 1], cache=cache, cache_index=t)
        steps.append(out)
    np.testing.assert_allclose(ops.concatenate(steps, axis=1), full, atol=1e-5)


def test_bad_arguments():
    with pytest.raises(ValueError, match="divisible by `num_heads`.*d_model=16, num_heads=3"):
        EncoderLayer(num_heads=3, d_ff=8)(np.zeros((1, 2, 16), "float32"))
    with pytest.raises(ValueError, match=r"`dropout` must be a float in the range \[0, 1\)"):
        EncoderLayer(num_heads=2, d_ff=8, dropout=1.5)
    with pytest.raises(ValueError, match="`inputs` must have rank 3"):
        EncoderLayer(num_heads=2, d_ff=8)(np.zeros((2, 16), "float32"))
