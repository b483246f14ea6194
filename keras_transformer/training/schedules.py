"""The paper's learning-rate schedule, "Attention Is All You Need" section 5.3."""

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="keras_transformer")
class WarmupInverseSqrt(keras.optimizers.schedules.LearningRateSchedule):
    """lrate = scale * d_model^-0.5 * min(step^-0.5, step * warmup_steps^-1.5).

    Linear warm-up for `warmup_steps`, then decay with the inverse square
    root of the step. Steps count from 1 (step 0 is treated as step 1).

    Args:
        d_model: int, the model size.
        warmup_steps: int. Default 4000.
        scale: float multiplier. Default 1.0.
    """

    def __init__(self, d_model, warmup_steps=4000, scale=1.0):
        if d_model <= 0 or warmup_steps <= 0:
            raise ValueError(
                "`d_model` and `warmup_steps` must be positive. "
                f"Received: d_model={d_model!r}, warmup_steps={warmup_steps!r}"
            )
        self.d_model = int(d_model)
        self.warmup_steps = int(warmup_steps)
        self.scale = float(scale)

    def __call__(self, step):
        step = tf.maximum(tf.cast(step, tf.float32), 1.0)
        return (
            self.scale
            * self.d_model**-0.5
            * tf.minimum(tf.math.rsqrt(step), step * self.warmup_steps**-1.5)
        )

    def get_config(self):
        return {"d_model": self.d_model, "warmup_steps": self.warmup_steps, "scale": self.scale}


def paper_optimizer(d_model, warmup_steps=4000, scale=1.0):
    """Adam(beta_1=0.9, beta_2=0.98, epsilon=1e-9) on `WarmupInverseSqrt`."""
    return keras.optimizers.Adam(
        learning_rate=WarmupInverseSqrt(d_model, warmup_steps, scale),
        beta_1=0.9,
        beta_2=0.98,
        epsilon=1e-9,
    )
