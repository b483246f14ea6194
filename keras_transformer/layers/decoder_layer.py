"""Transformer decoder layer, "Attention Is All You Need" section 3.1."""

import keras

from keras_transformer.layers import validation
from keras_transformer.layers.block import TransformerBlock
from keras_transformer.layers.block import check_heads_divide


@keras.saving.register_keras_serializable(package="keras_transformer")
class DecoderLayer(TransformerBlock):
    """Causal self-attention, cross-attention over the encoder output and a
    feed-forward block, each with residual, dropout and layer normalization
    (post-norm as in the paper, pre-norm with `norm_first=True`).

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
        inputs: [B, T, D] decoder input; its Keras mask marks padding.
        encoder_output: [B, S, De] encoder output; its Keras mask marks
            source padding.
        attention_mask: optional [B, T, T] bool mask for self-attention,
            combined with the causal mask.
        return_attention_scores: bool, also return the cross-attention
            scores [B, N, T, S].
        cache: optional dict from `init_cache` with a self-attention cache
            "self_attention" [B, 2, N, L, H] and the encoder's keys and values
            "cross_attention" [B, 2, N, S, H]; `inputs` then holds the tokens
            at positions `[cache_index, cache_index + T)`.
        cache_index: position of the first input in the cache.
        training: bool, whether dropout is active.
        positions: optional int [T] or [B, T] positions for the rotary
            embedding of the self-attention (see `MultiHeadAttention`).

    Returns:
        [B, T, D] outputs; then the cross-attention scores if
        `return_attention_scores`; then the updated cache if `cache` is given.
    """

    def build(self, inputs_shape, encoder_output_shape):
        validation.check_rank("inputs", inputs_shape, 3)
        validation.check_rank("encoder_output", encoder_output_shape, 3)
        d_model = inputs_shape[-1]
        check_heads_divide(d_model, self.num_heads)
        self.self_attention = self._attention("self_attention", d_model)
        self.self_attention.build(inputs_shape, inputs_shape)
        self.self_attention_norm = self._norm("self_attention_norm", inputs_shape)
        self.self_attention_dropout = self._dropout()
        self.cross_attention = self._attention("cross_attention", d_model, self_attention=False)
        self.cross_attention.build(inputs_shape, encoder_output_shape)
        self.cross_attention_norm = self._norm("cross_attention_norm", inputs_shape)
        self.cross_attention_dropout = self._dropout()
        self.feed_forward = self._feed_forward(inputs_shape)
        self.feed_forward_norm = self._norm("feed_forward_norm", inputs_shape)
        self.feed_forward_dropout = self._dropout()
        self.built = True

    def init_cache(self, encoder_output, max_length):
        """Cache for incremental decoding: the encoder's keys and values
        (computed once) and an empty self-attention cache of `max_length`."""
        batch_size = keras.ops.shape(encoder_output)[0]
        return {
            "self_attention": self.self_attention.init_cache(batch_size, max_length),
            "cross_attention": self.cross_attention.compute_cache(encoder_output),
        }

    def call(
        self,
        inputs,
        encoder_output,
        inputs_mask=None,
        encoder_output_mask=None,
        attention_mask=None,
        return_attention_scores=False,
        cache=None,
        cache_index=None,
        training=None,
        positions=None,
    ):
        self_cache = cross_cache = None
        if cache is not None:
            self_cache, cross_cache = cache["self_attention"], cache["cross_attention"]

        # Causal self-attention block.
        x, new_self_cache = self._self_attention_sublayer(
            inputs, mask=inputs_mask, attention_mask=attention_mask, use_causal_mask=True, cache=self_cache,
            cache_index=cache_index, training=training, positions=positions,
        )

        # Cross-attention block.
        # (Scores only when asked for: without them the attention may take its fused path.)
        x, extra = self._sublayer(
            x, self.cross_attention_norm, self.cross_attention_dropout,
            lambda h: self.cross_attention(
                h, encoder_output, value_mask=encoder_output_mask, return_attention_scores=return_attention_scores,
                cache=cross_cache, training=training,
            ),
            training,
        )
        scores = extra[0] if return_attention_scores else None

        # Feed-forward block.
        x = self._feed_forward_sublayer(x, training)

        outputs = (x,)
        if return_attention_scores:
            outputs += (scores,)
        if cache is not None:
            outputs += ({"self_attention": new_self_cache[0], "cross_attention": cross_cache},)
        return outputs[0] if len(outputs) == 1 else outputs

    def compute_output_shape(self, inputs_shape, encoder_output_shape):
        return inputs_shape
