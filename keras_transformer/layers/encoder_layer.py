"""Transformer encoder layer, "Attention Is All You Need" section 3.1."""

import keras

from keras_transformer.layers import validation
from keras_transformer.layers.block import TransformerBlock
from keras_transformer.layers.block import check_heads_divide


@keras.saving.register_keras_serializable(package="keras_transformer")
class EncoderLayer(TransformerBlock):
    """Self-attention and feed-forward blocks, each with residual, dropout and
    layer normalization.

    Post-norm as in the paper (`x = norm(x + dropout(sublayer(x)))`) by
    default; pre-norm (`x = x + dropout(sublayer(norm(x)))`) with
    `norm_first=True`. d_model is inferred from the input.

    With `use_causal_mask=True` and a cache this is also the block of a
    decoder-only language model.

    Args:
        num_heads: int, attention heads; must divide d_model.
        d_ff: int, inner size of the feed-forward network.
        dropout: float in [0, 1), residual dropout. Default 0.1.
        norm_first: bool, pre-norm instead of post-norm. Default False.
        activation: feed-forward activation. Default "relu".
        attention_dropout: float in [0, 1), dropout on attention
            probabilities. Defaults to `dropout`.
        layer_norm_epsilon: float. Default 1e-6.
        kernel_initializer: initializer for all kernels.
        norm, feed_forward, use_bias, num_key_value_heads,
        position_embedding, rotary_max_wavelength, rotary_scaling_factor,
        sliding_window: the variants since the paper, as for
            `keras_transformer.layers.block.BlockArguments` (docs/layers.md):
            RMSNorm, gated feed-forward (SwiGLU, GeGLU), no biases,
            grouped-query attention, rotary embeddings, a sliding window.

    Call arguments:
        inputs: [B, T, D] tensor; its Keras mask marks padding.
        attention_mask: optional [B, T, T] bool mask.
        use_causal_mask: bool, each position attends only to itself and the
            positions before it. Default False.
        cache: optional self-attention cache [B, 2, K, L, H] from `init_cache`
            (K key/value heads).
        cache_index: position of the first input in the cache.
        positions: optional int [T] or [B, T] positions for the rotary
            embedding (see `MultiHeadAttention`).
        training: bool, whether dropout is active.

    Returns:
        [B, T, D] tensor; `(outputs, cache)` when `cache` is given.
    """

    def build(self, inputs_shape):
        validation.check_rank("inputs", inputs_shape, 3)
        d_model = inputs_shape[-1]
        check_heads_divide(d_model, self.num_heads)
        self.self_attention = self._attention("self_attention", d_model)
        self.self_attention.build(inputs_shape, inputs_shape)
        self.self_attention_norm = self._norm("self_attention_norm", inputs_shape)
        self.self_attention_dropout = self._dropout()
        self.feed_forward = self._feed_forward(inputs_shape)
        self.feed_forward_norm = self._norm("feed_forward_norm", inputs_shape)
        self.feed_forward_dropout = self._dropout()
        self.built = True

    def init_cache(self, batch_size, max_length):
        """Empty self-attention cache [B, 2, K, L, H]."""
        return self.self_attention.init_cache(batch_size, max_length)

    def call(
        self,
        inputs,
        mask=None,
        attention_mask=None,
        use_causal_mask=False,
        cache=None,
        cache_index=None,
        training=None,
        positions=None,
    ):
        # Self-attention block.
        x, new_cache = self._self_attention_sublayer(
            inputs, mask=mask, attention_mask=attention_mask, use_causal_mask=use_causal_mask, cache=cache,
            cache_index=cache_index, training=training, positions=positions,
        )

        # Feed-forward block.
        x = self._feed_forward_sublayer(x, training)
        return x if cache is None else (x, new_cache[0])

    def compute_output_shape(self, inputs_shape):
        return inputs_shape
