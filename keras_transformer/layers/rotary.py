"""Rotary position embedding (RoPE, Su et al. 2021, "RoFormer")."""

import numbers

import keras
from keras import ops

from keras_transformer.layers import validation


@keras.saving.register_keras_serializable(package="keras_transformer")
class RotaryEmbedding(keras.layers.Layer):
    """Rotates pairs of features of queries or keys by angles proportional to
    their positions, so that the dot product of a query and a key depends on
    their positions only through their distance.

    The feature pairs are the two halves of the last axis: feature i and
    feature i + H/2 (the layout of Llama's checkpoints), rotated by
    `position / scaling_factor * max_wavelength ** (-2i / H)`, i < H/2.

    Args:
        max_wavelength: float, the longest wavelength. Default 10000.
        scaling_factor: float >= 1, positions are divided by it (linear
            position interpolation, for sequences longer than those trained
            on). Default 1.
        sequence_axis: int, the axis of the positions: 1 for [B, T, N, H]
            (default), 2 for [B, N, T, H].

    Call arguments:
        inputs: tensor with positions on `sequence_axis` and an even
            number H of features last.
        positions: optional int [T] (every row) or [B, T] (one row each)
            tensor of the positions; default `start_index + range(T)`.
            Integers only: under mixed precision Keras casts floating call
            arguments to the compute dtype, which would round them.
        start_index: int or scalar int tensor, position of the first
            element (a decoding step's cache index). Default 0.

    Returns:
        The rotated tensor, shape and dtype of `inputs` (computed in float32).

    Example:
    >>> rope = RotaryEmbedding()
    >>> x = ops.ones([1, 3, 1, 2])
    >>> ops.convert_to_numpy(rope(x))[0, :, 0].round(3)
    array([[ 1.   ,  1.   ],
           [-0.301,  1.382],
           [-1.325,  0.493]], dtype=float32)
    """

    def __init__(self, max_wavelength=10000, scaling_factor=1.0, sequence_axis=1, **kwargs):
        super().__init__(**kwargs)
        self.supports_masking = True
        if isinstance(max_wavelength, bool) or not isinstance(max_wavelength, numbers.Real) or max_wavelength <= 1:
            raise ValueError(f"`max_wavelength` must be a number above 1. Received: max_wavelength={max_wavelength!r}")
        if isinstance(scaling_factor, bool) or not isinstance(scaling_factor, numbers.Real) or scaling_factor < 1:
            raise ValueError(f"`scaling_factor` must be a number >= 1. Received: scaling_factor={scaling_factor!r}")
        self.max_wavelength = float(max_wavelength)
        self.scaling_factor = float(scaling_factor)
        self.sequence_axis = validation.check_positive_int("sequence_axis", sequence_axis)
        self.built = True

    def _check_features(self, shape):
        features = shape[-1]
        if features is not None and features % 2:
            raise ValueError(
                f"RotaryEmbedding rotates pairs of features: the last axis must be even. Received shape {tuple(shape)}"
            )
        if len(shape) < self.sequence_axis + 2:
            raise ValueError(
                f"`inputs` needs an axis {self.sequence_axis} of positions before the features. "
                f"Received shape {tuple(shape)}"
            )

    def angles(self, positions, features):
        """Positions [..., T] -> rotation angles [..., T, features / 2], float32."""
        exponents = ops.arange(0, features // 2, dtype="float32") * (2.0 / features)
        inverse_frequencies = ops.power(ops.cast(self.max_wavelength, "float32"), -exponents)
        positions = ops.cast(positions, "float32") / self.scaling_factor
        return ops.expand_dims(positions, -1) * inverse_frequencies

    def call(self, inputs, positions=None, start_index=0):
        self._check_features(inputs.shape)
        rank = len(inputs.shape)
        features = inputs.shape[-1]
        if positions is None:
            length = ops.shape(inputs)[self.sequence_axis]
            positions = ops.arange(length, dtype="int32") + ops.cast(start_index, "int32")
        positions = ops.convert_to_tensor(positions)
        if "int" not in keras.backend.standardize_dtype(positions.dtype):
            raise ValueError(
                "`positions` must be integers (a float16 or bfloat16 position is rounded). "
                f"Received dtype {keras.backend.standardize_dtype(positions.dtype)}"
            )
        if len(positions.shape) not in (1, 2):
            raise ValueError(
                f"`positions` must be [T] or [B, T]. Received shape {tuple(positions.shape)}"
            )
        angles = self.angles(positions, features)  # [T, H/2] or [B, T, H/2]
        angles = ops.concatenate([angles, angles], axis=-1)  # the two halves share their angle
        # Broadcast to the inputs: positions on `sequence_axis`, features last, 1 elsewhere.
        per_row = len(positions.shape) == 2
        for axis in range(rank - 1):
            if axis == self.sequence_axis or (per_row and axis == 0):
                continue
            angles = ops.expand_dims(angles, axis)
        x = ops.cast(inputs, "float32")
        first, second = ops.split(x, 2, axis=-1)
        rotated_half = ops.concatenate([-second, first], axis=-1)
        x = x * ops.cos(angles) + rotated_half * ops.sin(angles)
        return ops.cast(x, inputs.dtype)

    def compute_output_shape(self, inputs_shape):
        return inputs_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "max_wavelength": self.max_wavelength,
                "scaling_factor": self.scaling_factor,
                "sequence_axis": self.sequence_axis,
            }
        )
        return config
