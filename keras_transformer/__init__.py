"""Keras 3 layers and models from "Attention Is All You Need"."""

from keras_transformer.layers import Decoder
from keras_transformer.layers import DecoderLayer
from keras_transformer.layers import Encoder
from keras_transformer.layers import EncoderLayer
from keras_transformer.layers import FeedForward
from keras_transformer.layers import MultiHeadAttention
from keras_transformer.layers import PositionalEncoding
from keras_transformer.layers import TokenEmbedding
from keras_transformer.layers import positional_encoding
from keras_transformer.models import PRESETS
from keras_transformer.models import Transformer

__version__ = "0.1.0"
