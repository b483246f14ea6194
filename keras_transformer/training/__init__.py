"""Losses, metrics, schedules and the training entry point."""

from keras_transformer.training.losses import MaskedAccuracy
from keras_transformer.training.losses import MaskedCrossEntropy
from keras_transformer.training.schedules import WarmupInverseSqrt
from keras_transformer.training.schedules import paper_optimizer
