"""Sinusoidal positional encoding, "Attention Is All You Need" section 3.5."""

import keras
import numpy as np
from keras import ops

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
    >>> ops.convert_to_numpy(layer(ops.zeros([1, 3, 4])))[0, 1].round(3)
    array([0.841, 0.54 , 0.01 , 1.   ], dtype=float32)
    """

    def __init__(self, max_length=1024, **kwargs):
        super().__init__(**kwargs)
        self.supports_masking = True
        self.max_length = validation.check_positive_int("max_length", max_length)

    def build(self, inputs_shape):
        validation.check_rank("inputs", inputs_shape, 3)
        self._table = positional_encoding(self.max_length, inputs_shape[-1])  # a constant of every graph
        self.built = True

    def call(self, inputs, start_index=0):
        length = ops.shape(inputs)[1]
        static_length = inputs.shape[1]
        if isinstance(start_index, int) and static_length is not None:
            if start_index < 0 or start_index + static_length > self.max_length:
                raise ValueError(
                    f"Sequence positions [{start_index}, {start_index + static_length}) exceed "
                    f"`max_length` of PositionalEncoding. Expected start_index + length <= "
                    f"{self.max_length}. Received: start_index={start_index}, length={static_length}"
                )
        start_index = ops.cast(start_index, "int32")
        # None: a TensorFlow tensor of unknown rank, taken as a scalar.
        rank = start_index.shape.rank if hasattr(start_index.shape, "rank") else len(start_index.shape)
        if rank not in (None, 0, 1):
            raise ValueError(
                f"`start_index` must be a scalar or a [batch] vector. Received shape {start_index.shape}"
            )
        table = validation.assert_at_most(
            ops.max(start_index) + length, self.max_length,
            f"Sequence is longer than `max_length` ({self.max_length}) of PositionalEncoding",
            then=ops.convert_to_tensor(self._table),
        )
        if rank == 1:
            # One offset per row: gather each row's positions.
            positions = ops.expand_dims(start_index, 1) + ops.expand_dims(ops.arange(length, dtype="int32"), 0)
            return inputs + ops.cast(ops.take(table, positions, axis=0), inputs.dtype)
        table = ops.slice(table, (start_index, 0), (length, self._table.shape[1]))
        return inputs + ops.expand_dims(ops.cast(table, inputs.dtype), 0)

    def compute_output_shape(self, inputs_shape):
        return inputs_shape

    def get_config(self):
        config = super().get_config()
        config.update({"max_length": self.max_length})
        return config
