import numpy as np
from keras import ops

from keras_transformer.layers import masks


def test_causal_mask_values():
    np.testing.assert_array_equal(
        masks.causal_mask(3, 3), [[1, 0, 0], [1, 1, 0], [1, 1, 1]]
    )
    # Two new queries at positions 2 and 3 of a 5-slot cache.
    np.testing.assert_array_equal(
        masks.causal_mask(2, 5, offset=2), [[1, 1, 1, 0, 0], [1, 1, 1, 1, 0]]
    )


def test_merge_masks_combines_all_three():
    key_mask = ops.convert_to_tensor([[True, True, False]])
    explicit = ops.convert_to_tensor([[[1, 0, 1], [1, 1, 1], [0, 1, 1]]], "int32")
    merged = masks.merge_masks(key_mask, explicit, masks.causal_mask(3, 3))
    np.testing.assert_array_equal(merged, [[[1, 0, 0], [1, 1, 0], [0, 1, 0]]])
    assert masks.merge_masks() is None
    assert masks.merge_masks(key_mask=key_mask).shape == (1, 1, 3)


def test_padding_mask_and_bias():
    mask = masks.padding_mask(ops.convert_to_tensor([[4, 0, 7]], "int32"))
    np.testing.assert_array_equal(mask, [[True, False, True]])
    np.testing.assert_array_equal(masks.attention_bias(mask), [[0.0, masks.MASK_BIAS, 0.0]])
