"""Position-wise feed-forward network, "Attention Is All You Need" section 3.3."""

import keras

from keras_transformer.layers import validation
from keras_transformer.layers.dropout import Dropout
from keras_transformer.layers.initializers import clone_initializer


def _halves(initializer, rows, cols):
    """A [rows, 2 * cols] kernel drawn as two [rows, cols] matrices, each from
    its own clone of `initializer` (each half's fans are its own)."""
    first, second = clone_initializer(initializer), clone_initializer(initializer)

    def initialize(shape, dtype=None):
        return keras.ops.concatenate([first((rows, cols), dtype=dtype), second((rows, cols), dtype=dtype)], axis=-1)

    return initialize


@keras.saving.register_keras_serializable(package="keras_transformer")
class FeedForward(keras.layers.Layer):
    """Two dense layers applied at every position: max(0, xW1 + b1)W2 + b2.

    Gated (`gated=True`, Shazeer 2020, "GLU Variants Improve Transformer"):
    (activation(xW) * xV)W2, SwiGLU with `activation="silu"`, GeGLU with
    "gelu". W and V are the two halves of one kernel, `inner` [D, 2 d_ff]
    (W its first d_ff columns), so one matmul computes both.

    Args:
        d_ff: int, inner size.
        activation: activation of the inner layer. Default "relu".
        activation_dropout: float in [0, 1), dropout after the activation.
            Default 0 (the paper has none there).
        kernel_initializer: initializer of every kernel (each gets its own
            clone, so they start different).
        gated: bool, a gated linear unit. Default False.
        use_bias: bool, whether the dense layers have biases. Default True.

    Call arguments:
        inputs: [B, T, D] tensor.
        training: bool, whether dropout is active.

    Returns:
        [B, T, D] tensor (D inferred from the input).
    """

    def __init__(
        self, d_ff, activation="relu", activation_dropout=0.0, kernel_initializer="glorot_uniform",
        gated=False, use_bias=True, **kwargs
    ):
        super().__init__(**kwargs)
        self.supports_masking = True
        self.d_ff = validation.check_positive_int("d_ff", d_ff)
        self.activation = keras.activations.get(activation)
        self.activation_dropout = validation.check_rate("activation_dropout", activation_dropout)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.gated = bool(gated)
        self.use_bias = bool(use_bias)

    def build(self, inputs_shape):
        validation.check_rank("inputs", inputs_shape, 3)
        if self.gated:
            self.inner = keras.layers.Dense(
                2 * self.d_ff, kernel_initializer=_halves(self.kernel_initializer, inputs_shape[-1], self.d_ff),
                use_bias=self.use_bias, dtype=self.dtype_policy, name="inner",
            )
        else:
            self.inner = keras.layers.Dense(
                self.d_ff, activation=self.activation, kernel_initializer=clone_initializer(self.kernel_initializer),
                use_bias=self.use_bias, dtype=self.dtype_policy, name="inner",
            )
        self.inner.build(inputs_shape)
        self.inner_dropout = Dropout(self.activation_dropout, dtype=self.dtype_policy)
        self.outer = keras.layers.Dense(
            inputs_shape[-1], kernel_initializer=clone_initializer(self.kernel_initializer),
            use_bias=self.use_bias, dtype=self.dtype_policy, name="outer",
        )
        self.outer.build(tuple(inputs_shape[:-1]) + (self.d_ff,))
        self.built = True

    def call(self, inputs, training=None):
        x = self.inner(inputs)
        if self.gated:
            gate, linear = keras.ops.split(x, 2, axis=-1)
            # The activation in float32 under mixed precision (as keras-hub's Llama and Mistral layers do).
            x = keras.ops.cast(self.activation(keras.ops.cast(gate, "float32")), linear.dtype) * linear
        x = self.inner_dropout(x, training=training)
        return self.outer(x)

    def compute_output_shape(self, inputs_shape):
        return inputs_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "d_ff": self.d_ff,
                "activation": keras.activations.serialize(self.activation),
                "activation_dropout": self.activation_dropout,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
            }
        )
        if self.gated:  # (only when set: the config loads in the versions before them)
            config["gated"] = True
        if not self.use_bias:
            config["use_bias"] = False
        return config
