"""Keras 3 layers and models from "Attention Is All You Need"."""

from keras_transformer.layers import Decoder
from keras_transformer.layers import DecoderLayer
from keras_transformer.layers import Dropout
from keras_transformer.layers import Encoder
from keras_transformer.layers import EncoderLayer
from keras_transformer.layers import FeedForward
from keras_transformer.layers import MultiHeadAttention
from keras_transformer.layers import PositionalEncoding
from keras_transformer.layers import RMSNormalization
from keras_transformer.layers import RotaryEmbedding
from keras_transformer.layers import TokenEmbedding
from keras_transformer.layers import positional_encoding
from keras_transformer.models import PRESETS
from keras_transformer.models import CausalLM
from keras_transformer.models import EncoderBackbone
from keras_transformer.models import Transformer

# A model saved after compile_for_translation names our loss, metric and
# schedule; importing them here registers them, so `import keras_transformer`
# is all `keras.saving.load_model` needs.
from keras_transformer.training import losses as _losses  # noqa: E402,F401
from keras_transformer.training import schedules as _schedules  # noqa: E402,F401

__version__ = "0.1.0"
