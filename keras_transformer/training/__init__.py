"""Losses, metrics, schedules, callbacks and the training entry point."""

from keras_transformer.training.callbacks import BestCheckpoint
from keras_transformer.training.callbacks import EarlyStopping
from keras_transformer.training.callbacks import EpochCheckpoints
from keras_transformer.training.callbacks import StepBackup
from keras_transformer.training.callbacks import TimeBudget
from keras_transformer.training.distribute import STRATEGY_CHOICES
from keras_transformer.training.distribute import make_strategy
from keras_transformer.training.distribute import set_mixed_precision
from keras_transformer.training.distribute import train_custom_loop
from keras_transformer.training.fit import average_checkpoints
from keras_transformer.training.fit import average_last_checkpoints
from keras_transformer.training.fit import compile_for_translation
from keras_transformer.training.fit import train
from keras_transformer.training.losses import MaskedAccuracy
from keras_transformer.training.losses import MaskedCrossEntropy
from keras_transformer.training.schedules import WarmupInverseSqrt
from keras_transformer.training.schedules import WarmupLinearDecay
from keras_transformer.training.schedules import paper_optimizer
from keras_transformer.training.schedules import translation_optimizer
