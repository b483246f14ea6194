"""Dropout that draws 15 random bits per element instead of a float."""

import keras
from keras import ops

from keras_transformer.layers import validation

_LEVELS = 1 << 15


@keras.saving.register_keras_serializable(package="keras_transformer")
class Dropout(keras.layers.Layer):
    """Inverted dropout, as `keras.layers.Dropout`, with a cheaper mask.

    Each element is kept when a 15-bit random integer is at least
    `round(rate * 32768)`, so the rate is exact to 1/32,768; kept elements
    are scaled by 1 / (1 - rate). One 30-bit random number serves two
    elements: half the random numbers of a uniform-float mask, which is
    where the time of dropout goes on a CPU (`python bench/dropout.py`,
    docs/benchmarks.md). Masks come from a
    `keras.random.SeedGenerator`, so a seeded layer repeats its masks and a
    saved seed state resumes them.

    Args:
        rate: float in [0, 1), the fraction of elements set to zero.
        seed: int or None, seed of the layer's random stream.

    Call arguments:
        inputs: floating-point tensor of any shape.
        training: bool, whether to drop; otherwise `inputs` is returned.
    """

    def __init__(self, rate, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.supports_masking = True
        self.rate = validation.check_rate("rate", rate)
        self.seed = seed
        self._threshold = min(round(self.rate * _LEVELS), _LEVELS - 1)
        if self._threshold:
            self.seed_generator = keras.random.SeedGenerator(seed)
        self.built = True

    def call(self, inputs, training=False):
        if not training or not self._threshold:
            return inputs
        # One random int32 of 30 bits gives two 15-bit levels: half the
        # random numbers of a uniform float per element.
        size = ops.size(inputs)
        words = keras.random.randint([(size + 1) // 2], 0, 1 << 30, dtype="int32", seed=self.seed_generator)
        levels = ops.concatenate([ops.bitwise_and(words, _LEVELS - 1), ops.right_shift(words, 15)], axis=0)
        keep = ops.reshape(levels[:size], ops.shape(inputs)) >= self._threshold
        scale = ops.cast(_LEVELS / (_LEVELS - self._threshold), inputs.dtype)
        return ops.where(keep, inputs * scale, ops.zeros((), inputs.dtype))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({"rate": self.rate, "seed": self.seed})
        return config
