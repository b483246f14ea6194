"""Encoder and decoder stacks: N identical layers, plus a final layer
normalization when the layers are pre-norm."""

import keras

from keras_transformer.layers import validation
from keras_transformer.layers.block import BlockArguments
from keras_transformer.layers.decoder_layer import DecoderLayer
from keras_transformer.layers.encoder_layer import EncoderLayer


class _Stack(BlockArguments):
    """Holds `num_layers` and the block arguments of a stack."""

    layer_class = None

    def __init__(self, num_layers, num_heads, d_ff, **kwargs):
        super().__init__(num_heads, d_ff, **kwargs)
        self.num_layers = validation.check_positive_int("num_layers", num_layers)

    def _build_stack(self, inputs_shape, *other_shapes):
        validation.check_rank("inputs", inputs_shape, 3)
        block_args = self.block_config()
        self.stack = []
        for i in range(self.num_layers):
            layer = self.layer_class(**block_args, dtype=self.dtype_policy, name=f"layer_{i}")
            layer.build(inputs_shape, *other_shapes)
            self.stack.append(layer)
        self.final_norm = self._norm("final_norm", inputs_shape) if self.norm_first else None
        self.built = True

    def compute_output_shape(self, inputs_shape, *args, **kwargs):
        return inputs_shape

    def get_config(self):
        config = super().get_config()
        config.update({"num_layers": self.num_layers})
        return config


@keras.saving.register_keras_serializable(package="keras_transformer")
class Encoder(_Stack):
    """A stack of `EncoderLayer`s.

    Args:
        num_layers: int, number of layers.
        num_heads, d_ff, dropout, norm_first, activation, attention_dropout,
        layer_norm_epsilon, kernel_initializer, norm, feed_forward, use_bias,
        num_key_value_heads, position_embedding, rotary_max_wavelength,
        rotary_scaling_factor, sliding_window: as for `EncoderLayer`.

    Call arguments:
        inputs: [B, S, D] embedded sequence; its Keras mask marks padding.
        attention_mask: optional [B, S, S] bool mask; with a cache, [B, 1, L]
            over the cache slots (hides padded slots).
        use_causal_mask: bool, causal self-attention (decoder-only models).
        cache: optional list of per-layer caches from `init_cache`.
        cache_index: position of the first input in the cache.
        training: bool, whether dropout is active.
        positions: optional int [T] or [B, T] positions for rotary
            embeddings (see `MultiHeadAttention`).

    Returns:
        [B, S, D] tensor; `(outputs, cache)` when `cache` is given.
    """

    layer_class = EncoderLayer

    def build(self, inputs_shape):
        self._build_stack(inputs_shape)

    def init_cache(self, batch_size, max_length):
        """Empty per-layer self-attention caches, for causal stacks."""
        return [layer.init_cache(batch_size, max_length) for layer in self.stack]

    def call(
        self, inputs, mask=None, attention_mask=None, use_causal_mask=False,
        cache=None, cache_index=None, training=None, positions=None,
    ):
        x = inputs
        new_cache = []
        for i, layer in enumerate(self.stack):
            x = layer(
                x, mask=mask, attention_mask=attention_mask, use_causal_mask=use_causal_mask,
                cache=None if cache is None else cache[i], cache_index=cache_index, training=training,
                positions=positions,
            )
            if cache is not None:
                x, layer_cache = x
                new_cache.append(layer_cache)
        if self.final_norm is not None:
            x = self.final_norm(x)
        return x if cache is None else (x, new_cache)


@keras.saving.register_keras_serializable(package="keras_transformer")
class Decoder(_Stack):
    """A stack of `DecoderLayer`s.

    Args:
        num_layers: int, number of layers.
        num_heads, d_ff, dropout, norm_first, activation, attention_dropout,
        layer_norm_epsilon, kernel_initializer, norm, feed_forward, use_bias,
        num_key_value_heads, position_embedding, rotary_max_wavelength,
        rotary_scaling_factor, sliding_window: as for `DecoderLayer`.

    Call arguments:
        inputs: [B, T, D] embedded target sequence.
        encoder_output: [B, S, De] encoder output.
        inputs_mask, encoder_output_mask: [B, T] and [B, S] padding masks;
            taken from the Keras masks of the inputs when not given.
        attention_mask: optional [B, T, T] bool mask for self-attention;
            with a cache, [B, 1, L] over the cache slots (hides padded slots).
        return_attention_scores: bool, also return the list of every layer's
            cross-attention scores [B, N, T, S].
        cache: optional list of per-layer caches from `init_cache`.
        cache_index: position of the first input in the cache.
        training: bool, whether dropout is active.
        positions: optional int [T] or [B, T] positions for rotary
            embeddings (see `MultiHeadAttention`).

    Returns:
        [B, T, D] outputs; then the list of scores if
        `return_attention_scores`; then the updated cache if `cache` is given.
    """

    layer_class = DecoderLayer

    def build(self, inputs_shape, encoder_output_shape):
        self._build_stack(inputs_shape, encoder_output_shape)

    def init_cache(self, encoder_output, max_length):
        """Per-layer caches: cross-attention keys/values of `encoder_output`
        and empty self-attention caches of `max_length` positions."""
        return [layer.init_cache(encoder_output, max_length) for layer in self.stack]

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
        x = inputs
        all_scores, new_cache = [], []
        for i, layer in enumerate(self.stack):
            out = layer(
                x, encoder_output, inputs_mask=inputs_mask, encoder_output_mask=encoder_output_mask,
                attention_mask=attention_mask, return_attention_scores=return_attention_scores,
                cache=None if cache is None else cache[i], cache_index=cache_index, training=training,
                positions=positions,
            )
            x, *rest = out if isinstance(out, (tuple, list)) else (out,)
            if return_attention_scores:
                all_scores.append(rest.pop(0))
            new_cache += rest
        if self.final_norm is not None:
            x = self.final_norm(x)
        outputs = (x,)
        if return_attention_scores:
            outputs += (all_scores,)
        if cache is not None:
            outputs += (new_cache,)
        return outputs[0] if len(outputs) == 1 else outputs
