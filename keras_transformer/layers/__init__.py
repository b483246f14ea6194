"""Reusable Keras layers of the Transformer."""

from keras_transformer.layers.attention import MultiHeadAttention
from keras_transformer.layers.attention import accept_earlier_optimizer_state
from keras_transformer.layers.decoder_layer import DecoderLayer
from keras_transformer.layers.dropout import Dropout
from keras_transformer.layers.embedding import TokenEmbedding
from keras_transformer.layers.encoder_layer import EncoderLayer
from keras_transformer.layers.feed_forward import FeedForward
from keras_transformer.layers.normalization import RMSNormalization
from keras_transformer.layers.positional_encoding import PositionalEncoding
from keras_transformer.layers.positional_encoding import positional_encoding
from keras_transformer.layers.rotary import RotaryEmbedding
from keras_transformer.layers.stacks import Decoder
from keras_transformer.layers.stacks import Encoder
