"""Arguments shared by the encoder and decoder layers and their stacks, and
the residual sublayer connection both layers are made of."""

import inspect

import keras

from keras_transformer.layers import validation
from keras_transformer.layers.dropout import Dropout
from keras_transformer.layers.attention import MultiHeadAttention
from keras_transformer.layers.feed_forward import FeedForward
from keras_transformer.layers.normalization import RMSNormalization


NORMS = ("layer", "rms")
# feed_forward choice -> (activation, gated)
FEED_FORWARDS = {"relu": ("relu", False), "gelu": ("gelu", False), "swiglu": ("silu", True), "geglu": ("gelu", True)}
# The options added after the paper's blocks, with their defaults: a config holds them only when set,
# so configs of the paper's blocks are unchanged and load in the versions before them.
OPTION_DEFAULTS = {
    "norm": "layer",
    "feed_forward": None,
    "use_bias": True,
    "num_key_value_heads": None,
    "position_embedding": None,
    "rotary_max_wavelength": 10000.0,
    "rotary_scaling_factor": 1.0,
    "sliding_window": None,
}


def changed_options(options):
    """The block options of `options` that differ from their defaults (what a config holds)."""
    return {key: value for key, value in options.items() if value != OPTION_DEFAULTS[key]}


def model_config_options(model, options):
    """The options of `options` that differ from the defaults of
    `type(model).__init__` (a subclass may change them): what a model's
    get_config writes, so a version before an option loads the rest."""
    defaults = inspect.signature(type(model).__init__).parameters
    return {key: value for key, value in options.items() if key not in defaults or value != defaults[key].default}


def check_model_sizes(num_layers, d_model, num_heads, d_ff, dropout, max_length):
    """The sizes every model of the library takes, checked: a dict of them."""
    sizes = dict(
        num_layers=validation.check_positive_int("num_layers", num_layers),
        d_model=validation.check_positive_int("d_model", d_model),
        num_heads=validation.check_positive_int("num_heads", num_heads),
        d_ff=validation.check_positive_int("d_ff", d_ff),
        dropout=validation.check_rate("dropout", dropout),
        max_length=validation.check_positive_int("max_length", max_length),
    )
    check_heads_divide(sizes["d_model"], sizes["num_heads"])
    return sizes


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
        norm: "layer" (LayerNormalization, the paper's; default) or "rms"
            (`RMSNormalization`: no centering, no bias).
        feed_forward: None (a plain feed-forward network with
            `activation`; default), "relu" or "gelu" (plain, that
            activation), "swiglu" or "geglu" (gated: `FeedForward(gated=True)`
            with SiLU or GELU).
        use_bias: bool, biases in the attention projections and the
            feed-forward layers. Default True (False: Llama's blocks).
        num_key_value_heads: grouped-query attention: key/value heads in
            every attention (see `MultiHeadAttention`). Default `num_heads`.
        position_embedding: None (default) or "rotary": rotary embeddings
            in the self-attention (not the cross-attention).
        rotary_max_wavelength, rotary_scaling_factor: of the rotary embedding.
        sliding_window: int or None: the self-attention's window (see
            `MultiHeadAttention`); its cache is then a rolling one.
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
        norm="layer",
        feed_forward=None,
        use_bias=True,
        num_key_value_heads=None,
        position_embedding=None,
        rotary_max_wavelength=10000.0,
        rotary_scaling_factor=1.0,
        sliding_window=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.supports_masking = True
        self.num_heads = validation.check_positive_int("num_heads", num_heads)
        self.d_ff = validation.check_positive_int("d_ff", d_ff)
        validation.check_choice("norm", norm, NORMS)
        if feed_forward is not None:
            validation.check_choice("feed_forward", feed_forward, FEED_FORWARDS)
            chosen = FEED_FORWARDS[feed_forward][0]
            if keras.activations.get(activation) not in (keras.activations.get("relu"), keras.activations.get(chosen)):
                raise ValueError(
                    f"`feed_forward` sets the activation ({chosen!r}); leave `activation` out. "
                    f"Received: feed_forward={feed_forward!r}, activation={activation!r}"
                )
            activation = chosen
        if num_key_value_heads is not None:
            num_key_value_heads = validation.check_positive_int("num_key_value_heads", num_key_value_heads)
            if num_heads % num_key_value_heads:
                raise ValueError(
                    "`num_key_value_heads` must divide `num_heads`. "
                    f"Received: num_heads={num_heads}, num_key_value_heads={num_key_value_heads}"
                )
        if position_embedding is not None:
            validation.check_choice("position_embedding", position_embedding, (None, "rotary"))
        if sliding_window is not None:
            sliding_window = validation.check_positive_int("sliding_window", sliding_window)
        rotary_max_wavelength, rotary_scaling_factor = validation.check_rotary_options(
            position_embedding == "rotary", rotary_max_wavelength, rotary_scaling_factor
        )
        self.options = {
            "norm": norm,
            "feed_forward": feed_forward,
            "use_bias": bool(use_bias),
            "num_key_value_heads": num_key_value_heads,
            "position_embedding": position_embedding,
            "rotary_max_wavelength": rotary_max_wavelength,
            "rotary_scaling_factor": rotary_scaling_factor,
            "sliding_window": sliding_window,
        }
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
            **changed_options(self.options),
        }

    def get_config(self):
        config = super().get_config()
        config.update(self.block_config())
        return config

    def _norm(self, name, inputs_shape):
        norm = RMSNormalization if self.options["norm"] == "rms" else keras.layers.LayerNormalization
        layer = norm(epsilon=self.layer_norm_epsilon, dtype=self.dtype_policy, name=name)
        layer.build(inputs_shape)
        return layer


class TransformerBlock(BlockArguments):
    """A residual Transformer block: builds its sublayers and connects each one.

    Args: as for `BlockArguments`.
    """

    def _attention(self, name, d_model, self_attention=True):
        """An attention sublayer; the rotary embedding and the sliding window
        are the self-attention's only."""
        options = self.options
        positional = {}
        if self_attention:
            positional = dict(
                position_embedding=options["position_embedding"], sliding_window=options["sliding_window"],
                rotary_max_wavelength=options["rotary_max_wavelength"],
                rotary_scaling_factor=options["rotary_scaling_factor"],
            )
        return MultiHeadAttention(
            self.num_heads, d_model // self.num_heads, dropout=self.attention_dropout,
            use_bias=options["use_bias"], num_key_value_heads=options["num_key_value_heads"],
            kernel_initializer=self.kernel_initializer, dtype=self.dtype_policy, name=name, **positional,
        )

    def _feed_forward(self, inputs_shape):
        feed_forward = self.options["feed_forward"]
        layer = FeedForward(
            self.d_ff, activation=self.activation, kernel_initializer=self.kernel_initializer,
            gated=feed_forward is not None and FEED_FORWARDS[feed_forward][1], use_bias=self.options["use_bias"],
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

    def _self_attention_sublayer(
        self, x, *, mask, attention_mask, use_causal_mask, cache, cache_index, training, positions=None
    ):
        """The self-attention sublayer of both layers: (outputs, [new cache] or [])."""
        return self._sublayer(
            x, self.self_attention_norm, self.self_attention_dropout,
            lambda h: self.self_attention(
                h, h, query_mask=mask, value_mask=mask, attention_mask=attention_mask,
                use_causal_mask=use_causal_mask, cache=cache, cache_index=cache_index, training=training,
                positions=positions,
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
