"""Models assembled from `keras_transformer.layers`."""

from keras_transformer.models.backbones import CAUSAL_LM_PRESETS
from keras_transformer.models.backbones import ENCODER_PRESETS
from keras_transformer.models.backbones import CausalLM
from keras_transformer.models.backbones import EncoderBackbone
from keras_transformer.models.presets import PRESETS
from keras_transformer.models.transformer import Transformer
from keras_transformer.models.loading import load_model
