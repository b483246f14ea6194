"""The paper's learning-rate schedule, "Attention Is All You Need" section 5.3."""

import keras
from keras import ops


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
        step = ops.maximum(ops.cast(step, "float32"), 1.0)
        return self.scale * self.d_model**-0.5 * ops.minimum(ops.rsqrt(step), step * self.warmup_steps**-1.5)

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


@keras.saving.register_keras_serializable(package="keras_transformer")
class WarmupLinearDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up to `peak_learning_rate`, then linear decay to zero at
    `total_steps`.

    With a fixed budget of steps or of time, ending at zero beats a schedule
    that is still high when the budget runs out (Li et al., "Budgeted
    Training", ICLR 2020). `total_steps` lives in a variable that
    `set_total_steps` changes while training runs: `train(minutes=...)`
    re-estimates it from the measured step rate, so the decay reaches zero
    as the time budget ends.

        lrate = peak * min(step / warmup_steps, (total - step) / (total - warmup_steps))

    clipped at 0. Steps count from 1 (step 0 is treated as step 1).

    Args:
        peak_learning_rate: float, the rate at `warmup_steps`.
        warmup_steps: int.
        total_steps: int > warmup_steps, or None to leave it to `train`,
            which sets it from its epochs and time budget.
    """

    def __init__(self, peak_learning_rate, warmup_steps, total_steps=None):
        if peak_learning_rate <= 0 or warmup_steps <= 0:
            raise ValueError(
                "`peak_learning_rate` and `warmup_steps` must be positive. Received: "
                f"peak_learning_rate={peak_learning_rate!r}, warmup_steps={warmup_steps!r}"
            )
        self.peak_learning_rate = float(peak_learning_rate)
        self.warmup_steps = int(warmup_steps)
        # Made without an end, `train` fits the end to its epochs and budget.
        self.fit_to_run = total_steps is None
        # A variable, so a running TensorFlow `fit` sees a new end. (JAX
        # traces the train step once: there the end is the one set before `fit`.)
        self._total = keras.Variable(0.0, trainable=False, dtype="float32", name="total_steps")
        self.set_total_steps(total_steps)

    @property
    def total_steps(self):
        """The step at which the rate reaches zero (int), or None if unset."""
        total = int(round(float(ops.convert_to_numpy(self._total))))
        return total or None

    def set_total_steps(self, total_steps):
        """Sets where the decay reaches zero; None unsets it. May be called
        between steps of a running `fit`."""
        if total_steps is not None and total_steps <= self.warmup_steps:
            raise ValueError(
                f"`total_steps` must be larger than `warmup_steps` ({self.warmup_steps}). "
                f"Received: total_steps={total_steps!r}"
            )
        self._total.assign(0.0 if total_steps is None else float(total_steps))

    def __call__(self, step):
        step = ops.maximum(ops.cast(step, "float32"), 1.0)
        # Unset (0) behaves as no decay at all, so the rate stays at the peak.
        total = self._total.value
        total = ops.where(total > 0, total, 3.4e38)
        warmup = step / self.warmup_steps
        decay = (total - step) / (total - self.warmup_steps)
        return self.peak_learning_rate * ops.maximum(ops.minimum(warmup, decay), 0.0)

    def get_config(self):
        return {
            "peak_learning_rate": self.peak_learning_rate,
            "warmup_steps": self.warmup_steps,
            "total_steps": self.total_steps,
        }


def fit_schedule_to_run(optimizer, total_steps):
    """Ends the optimizer's `WarmupLinearDecay` at `total_steps` (at least
    one past the warm-up) if it was made without an end; returns it, or None
    when the optimizer has no such schedule."""
    optimizer = getattr(optimizer, "inner_optimizer", optimizer)  # LossScaleOptimizer
    schedule = getattr(optimizer, "_learning_rate", None)
    if not (isinstance(schedule, WarmupLinearDecay) and schedule.fit_to_run):
        return None
    schedule.set_total_steps(max(total_steps, schedule.warmup_steps + 1))
    return schedule


def paper_peak_learning_rate(d_model, warmup_steps, scale=1.0):
    """The peak of `WarmupInverseSqrt`: scale * (d_model * warmup_steps)^-0.5."""
    return scale * (d_model * warmup_steps) ** -0.5


def translation_optimizer(d_model, warmup_steps=4000, scale=1.0, schedule="inverse_sqrt"):
    """Adam(0.9, 0.98, 1e-9) on the paper's schedule (`"inverse_sqrt"`) or
    on `WarmupLinearDecay` with the same warm-up and peak (`"linear"`, its
    end set by `train`)."""
    if schedule == "inverse_sqrt":
        return paper_optimizer(d_model, warmup_steps, scale)
    if schedule != "linear":
        raise ValueError(f"`schedule` must be 'inverse_sqrt' or 'linear'. Received: schedule={schedule!r}")
    return keras.optimizers.Adam(
        learning_rate=WarmupLinearDecay(paper_peak_learning_rate(d_model, warmup_steps, scale), warmup_steps),
        beta_1=0.9,
        beta_2=0.98,
        epsilon=1e-9,
    )
