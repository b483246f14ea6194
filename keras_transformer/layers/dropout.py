"""Dropout that draws 16 random bits per element instead of a float."""

import keras
import tensorflow as tf

from keras_transformer.layers import validation

_LEVELS = 1 << 16


@keras.saving.register_keras_serializable(package="keras_transformer")
class Dropout(keras.layers.Layer):
    """Inverted dropout, as `keras.layers.Dropout`, with a cheaper mask.

    Each element is kept when a 16-bit random integer is at least
    `round(rate * 65536)`, so the rate is exact to 1/65,536; kept elements
    are scaled by 1 / (1 - rate). One 32-bit random number serves two
    elements, which on CPU makes the layer's forward and backward pass 1.8x
    faster than `keras.layers.Dropout`, and a training step of the tiny
    Transformer 6 % faster (`python bench/dropout.py`). Masks come from a
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
        # The generator's state is int64; stateless ops take int32 seeds.
        seed = tf.cast(tf.math.floormod(self.seed_generator.next(), 2**31 - 1), tf.int32)
        size = tf.size(inputs)
        words = tf.random.stateless_uniform(
            [(size + 1) // 2], seed=seed, minval=None, maxval=None, dtype=tf.uint32
        )
        bits = tf.reshape(tf.bitcast(words, tf.uint16), [-1])[:size]
        keep = tf.reshape(bits, tf.shape(inputs)) >= self._threshold
        scale = tf.constant(_LEVELS / (_LEVELS - self._threshold), inputs.dtype)
        return tf.where(keep, inputs * scale, tf.zeros((), inputs.dtype))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({"rate": self.rate, "seed": self.seed})
        return config
