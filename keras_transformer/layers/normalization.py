"""RMSNorm (Zhang and Sennrich 2019, "Root Mean Square Layer Normalization")."""

import keras


@keras.saving.register_keras_serializable(package="keras_transformer")
class RMSNormalization(keras.layers.RMSNormalization):
    """`keras.layers.RMSNormalization` (x / sqrt(mean(x^2) + epsilon) *
    scale, computed in float32 under mixed precision) that passes the Keras
    mask of its input on, as `LayerNormalization` does: a padding mask
    survives the norms of a block.

    Args: as for `keras.layers.RMSNormalization` (`axis`, `epsilon`; default 1e-6).
    """

    def __init__(self, axis=-1, epsilon=1e-6, **kwargs):
        super().__init__(axis=axis, epsilon=epsilon, **kwargs)
        self.supports_masking = True
