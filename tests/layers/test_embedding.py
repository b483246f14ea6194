import math

import numpy as np
import pytest

from keras_transformer.layers import TokenEmbedding
from tests.backend import keras_mask
from tests.backend import to_numpy
from tests.layer_test_case import run_layer_test


def test_layer_contract():
    run_layer_test(
        TokenEmbedding,
        {"vocab_size": 11, "d_model": 8},
        np.array([[1, 2, 3, 0], [4, 5, 0, 0]]),
        expected_output_shape=(2, 4, 8),
        expected_num_trainable_weights=1,
    )


def test_scaled_lookup_mask_and_reverse_projection():
    layer = TokenEmbedding(vocab_size=11, d_model=16)
    ids = np.array([[1, 2, 0]])
    vectors = layer(ids)
    matrix = to_numpy(layer.embeddings)
    np.testing.assert_allclose(vectors[0, 1], matrix[2] * math.sqrt(16), rtol=1e-6)
    np.testing.assert_array_equal(keras_mask(vectors), [[True, True, False]])
    logits = layer(vectors, reverse=True)
    np.testing.assert_allclose(logits, to_numpy(vectors) @ matrix.T, rtol=1e-5, atol=1e-5)
    assert TokenEmbedding(11, 16, scale=False)(ids).shape == (1, 3, 16)


def test_bad_arguments():
    with pytest.raises(ValueError, match="vocab_size"):
        TokenEmbedding(vocab_size=0, d_model=4)
    with pytest.raises(ValueError, match="d_model.*2.5"):
        TokenEmbedding(vocab_size=3, d_model=2.5)
