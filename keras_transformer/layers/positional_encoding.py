"""Sinusoidal positional encoding, "Attention Is All You Need" section 3.5."""

import keras
import numpy as np
import tensorflow as tf

from keras_transformer.layers import validation


def positional_encoding(length: int, d_model: int) -> np.ndarray:
    """The paper's sinusoid table, float32 [length, d_model].

    PE[pos, 2i] = sin(pos / 10000^(2i / d_model)) and
    PE[pos, 2i + 1] = cos(pos / 10000^(2i / d_model)).
    """
    validation.check_positive_int("length", length)
    validation.check_positive_int("d_model", d_model)
    positions = np.arange(length, dtype=np.float64)[:, None]
    pair_index = np.arange(d_model) // 2  # i for dimensions 2i and 2i + 1
    angles = positions / np.power(10000.0, 2.0 * pair_index / d_model)[None, :]
    table = np.where(np.arange(d_model) % 2 == 0, np.sin(angles), np.cos(angles))
    return table.astype(np.float32)


@keras.saving.register_keras_serializable(package="keras_transformer")
class PositionalEncoding(keras.layers.Layer):
    """Adds the sinusoidal positional encoding to a sequence of vectors.

    Args:
        max_length: int, the longest sequence (plus `start_index`) supported.
            Default 1024.

    Call arguments:
        inputs: [B, T, D] tensor.
        start_index: int or scalar int tensor, position of the first element
            (the decoding step in incremental decoding), or int [B] tensor,
            one first position per row (prompts of unequal length decoded
            in one batch). Default 0.

    Returns:
        `inputs + PE[start_index : start_index + T]`, [B, T, D] (row b gets
        `PE[start_index[b] : start_index[b] + T]` for a [B] start); the
        Keras mask of `inputs` is passed on.

    Example:
    >>> layer = PositionalEncoding(max_length=16)
    >>> layer(tf.zeros([1, 3, 4]))[0, 1].numpy().round(3)
    array([0.841, 0.54 , 0.01 , 1.   ], dtype=float32)
    """

    def __init__(self, max_length=1024, **kwargs):
        super().__init__(**kwargs)
        self.supports_masking = True
        self.max_length = validation.check_positive_int("max_length", max_length)

    def build(self, inputs_shape):
        validation.check_rank("inputs", inputs_shape, 3)
        # Created eagerly even when the first call is traced in a graph.
        with tf.init_scope():
            self._table = tf.constant(positional_encoding(self.max_length, inputs_shape[-1]))
        self.built = True

    def call(self, inputs, start_index=0):
        length = tf.shape(inputs)[1]
        static_length = inputs.shape[1]
        if isinstance(start_index, int) and static_length is not None:
            if start_index < 0 or start_index + static_length > self.max_length:
                raise ValueError(
                    f"Sequence positions [{start_index}, {start_index + static_length}) exceed "
                    f"`max_length` of PositionalEncoding. Expected start_index + length <= "
                    f"{self.max_length}. Received: start_index={start_index}, length={static_length}"
                )
        start_index = tf.cast(start_index, tf.int32)
        if start_index.shape.rank not in (None, 0, 1):
            raise ValueError(
                f"`start_index` must be a scalar or a [batch] vector. Received shape {start_index.shape}"
            )
        check = tf.debugging.assert_less_equal(
            tf.reduce_max(start_index) + length,
            self.max_length,
            message=f"Sequence is longer than `max_length` ({self.max_length}) of PositionalEncoding",
        )
        with tf.control_dependencies([check]):
            if start_index.shape.rank == 1:
                # One offset per row: gather each row's positions.
                positions = start_index[:, None] + tf.range(length)[None, :]
                return inputs + tf.cast(tf.gather(self._table, positions), inputs.dtype)
            table = tf.slice(self._table, [start_index, 0], [length, -1])
        return inputs + tf.cast(table, inputs.dtype)[None]

    def compute_output_shape(self, inputs_shape):
        return inputs_shape

    def get_config(self):
        config = super().get_config()
        config.update({"max_length": self.max_length})
        return config
