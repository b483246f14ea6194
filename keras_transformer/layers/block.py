"""Arguments shared by the encoder and decoder layers and their stacks, and
the residual sublayer connection both layers are made of."""

import keras

from keras_transformer.layers import validation
from keras_transformer.layers.dropout import Dropout
from keras_transformer.layers.attention import MultiHeadAttention
from keras_transformer.layers.feed_forward import FeedForward


def check_heads_divide(d_model, num_heads):
    if d_model % num_heads:
        raise ValueError(
            "The model size d_model must be divisible by `num_heads`. "
            f"Received: d_model={d_model}, num_heads={num_heads}"
        )


class BlockArguments(keras.layers.Layer):
    """Stores and validates the arguments of a Transformer block or a stack of them.

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
    """

    def __init__(
        self,
        num_heads,
        d_ff,
        dropout=0.1,
        norm_first=False,
        activation="relu",
        attention_dropout=None,
        layer_norm_epsilon=1e-6,
        kernel_initializer="glorot_uniform",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.supports_masking = True
        self.num_heads = validation.check_positive_int("num_heads", num_heads)
        self.d_ff = validation.check_positive_int("d_ff", d_ff)
        self.dropout = validation.check_rate("dropout", dropout)
        self.norm_first = bool(norm_first)
        self.activation = keras.activations.get(activation)
        self.attention_dropout = validation.check_rate(
            "attention_dropout", self.dropout if attention_dropout is None else attention_dropout
        )
        self.layer_norm_epsilon = float(layer_norm_epsilon)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)

    def block_config(self):
        """The constructor arguments, for `get_config` and for sublayers."""
        return {
            "num_heads": self.num_heads,
            "d_ff": self.d_ff,
            "dropout": self.dropout,
            "norm_first": self.norm_first,
            "activation": keras.activations.serialize(self.activation),
            "attention_dropout": self.attention_dropout,
            "layer_norm_epsilon": self.layer_norm_epsilon,
            "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
        }

    def get_config(self):
        config = super().get_config()
        config.update(self.block_config())
        return config

    def _norm(self, name, inputs_shape):
        layer = keras.layers.LayerNormalization(
            epsilon=self.layer_norm_epsilon, dtype=self.dtype_policy, name=name
        )
        layer.build(inputs_shape)
        return layer


class TransformerBlock(BlockArguments):
    """A residual Transformer block: builds its sublayers and connects each one.

    Args: as for `BlockArguments`.
    """

    def _attention(self, name, d_model):
        return MultiHeadAttention(
            self.num_heads, d_model // self.num_heads, dropout=self.attention_dropout,
            kernel_initializer=self.kernel_initializer, dtype=self.dtype_policy, name=name,
        )

    def _feed_forward(self, inputs_shape):
        layer = FeedForward(
            self.d_ff, activation=self.activation, kernel_initializer=self.kernel_initializer,
            dtype=self.dtype_policy, name="feed_forward",
        )
        layer.build(inputs_shape)
        return layer

    def _sublayer(self, x, norm, dropout, sublayer, training):
        """The residual connection around one sublayer, post- or pre-norm.

        Post-norm (the paper): norm(x + dropout(sublayer(x))). Pre-norm:
        x + dropout(sublayer(norm(x))). `sublayer` maps the (normed) input to
        its output, or to a tuple whose first item is the output (an
        attention layer's cache or scores); the rest comes back unchanged.

        Returns:
            (outputs, extra): `extra` is a list of the tuple's rest, [] for a plain output.
        """
        y = sublayer(norm(x) if self.norm_first else x)
        y, *extra = y if isinstance(y, (tuple, list)) else (y,)
        x = x + dropout(y, training=training)
        return (x if self.norm_first else norm(x)), extra

    def _self_attention_sublayer(self, x, *, mask, attention_mask, use_causal_mask, cache, cache_index, training):
        """The self-attention sublayer of both layers: (outputs, [new cache] or [])."""
        return self._sublayer(
            x, self.self_attention_norm, self.self_attention_dropout,
            lambda h: self.self_attention(
                h, h, query_mask=mask, value_mask=mask, attention_mask=attention_mask,
                use_causal_mask=use_causal_mask, cache=cache, cache_index=cache_index, training=training,
            ),
            training,
        )

    def _feed_forward_sublayer(self, x, training):
        x, _ = self._sublayer(
            x, self.feed_forward_norm, self.feed_forward_dropout,
            lambda h: self.feed_forward(h, training=training), training,
        )
        return x

    def _dropout(self):
        return Dropout(self.dropout, dtype=self.dtype_policy)
