"""Training: losses, metrics and schedules (every Keras backend), and the
`train` loop, callbacks and tf.distribute helpers (TensorFlow).

Names load on first use, so the losses and schedules import without
TensorFlow on the JAX and PyTorch backends.
"""

from keras_transformer._lazy import lazy_attributes
from keras_transformer._lazy import public_names

_NAMES = {
    "BestCheckpoint": "callbacks",
    "EarlyStopping": "callbacks",
    "EpochCheckpoints": "callbacks",
    "StepBackup": "callbacks",
    "TimeBudget": "callbacks",
    "STRATEGY_CHOICES": "distribute",
    "make_strategy": "distribute",
    "set_mixed_precision": "distribute",
    "train_custom_loop": "distribute",
    "average_checkpoints": "fit",
    "average_last_checkpoints": "fit",
    "compile_for_translation": "fit",
    "train": "fit",
    "MaskedAccuracy": "losses",
    "MaskedCrossEntropy": "losses",
    "WarmupInverseSqrt": "schedules",
    "WarmupLinearDecay": "schedules",
    "paper_optimizer": "schedules",
    "translation_optimizer": "schedules",
}
__all__ = public_names(_NAMES, ("distribute",))


_SUBMODULES = ("callbacks", "distribute", "finetune", "fit", "losses", "schedules")


__getattr__, __dir__ = lazy_attributes(__name__, _NAMES, _SUBMODULES)
