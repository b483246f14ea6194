"""Pure mask helpers: the library's one mask contract.

Masks are boolean, `True` where a position may be attended to. Padding masks
come from the Keras mask of a sequence ([B, S]); `merge_masks` combines them
with a causal mask and an explicit `attention_mask` into one [B, T, S] mask,
and `attention_bias` turns that into the additive bias used before softmax.

Written in `keras.ops`: they run on every Keras backend.

Shape legend: B batch, T query length, S key length.
"""

from keras import ops

# Added to the logits of masked keys. Finite so that a row with every key
# masked stays finite (it becomes uniform) instead of producing NaN.
MASK_BIAS = -1e9


def padding_mask(token_ids, padding_id: int = 0):
    """[B, S] int ids -> [B, S] bool, `True` on real (non-padding) tokens."""
    return ops.not_equal(token_ids, padding_id)


def causal_mask(query_length, key_length, offset=0):
    """[T, S] bool mask where query t sees keys s <= t + offset.

    `offset` is the position of the first query among the keys: 0 for a full
    pass, the decoding step for a cached pass.
    """
    rows = ops.expand_dims(ops.arange(query_length, dtype="int32") + ops.cast(offset, "int32"), 1)
    cols = ops.expand_dims(ops.arange(key_length, dtype="int32"), 0)
    return ops.less_equal(cols, rows)


def merge_masks(key_mask=None, attention_mask=None, causal=None):
    """Combine masks into one [B, T, S] (or broadcastable) bool mask.

    Args:
        key_mask: [B, S] bool, `True` on keys that are not padding, or None.
        attention_mask: [B, T, S] bool or 0/1 mask, or None.
        causal: [T, S] bool from `causal_mask`, or None.

    Returns:
        A bool tensor broadcastable to [B, T, S], or None when no mask is given.
    """
    mask = None
    if key_mask is not None:
        mask = ops.expand_dims(ops.cast(key_mask, "bool"), 1)  # [B, 1, S]
    if causal is not None:
        causal = ops.expand_dims(causal, 0)  # [1, T, S]
        mask = causal if mask is None else ops.logical_and(mask, causal)
    if attention_mask is not None:
        attention_mask = ops.cast(attention_mask, "bool")
        mask = attention_mask if mask is None else ops.logical_and(mask, attention_mask)
    return mask


def attention_bias(mask, dtype="float32"):
    """Bool mask -> additive bias: 0 where `True`, `MASK_BIAS` where `False`."""
    return (1.0 - ops.cast(mask, dtype)) * ops.cast(MASK_BIAS, dtype)
