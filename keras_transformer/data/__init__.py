"""Parallel text, subword tokenization and tf.data pipelines."""

from keras_transformer.data.pipeline import bucket_boundaries
from keras_transformer.data.pipeline import padding_stats
from keras_transformer.data.pipeline import shuffled_passes
from keras_transformer.data.pipeline import teacher_forcing
from keras_transformer.data.pipeline import token_batches
from keras_transformer.data.pipeline import tokenized_pairs
from keras_transformer.data.text_files import read_lines
from keras_transformer.data.text_files import read_parallel
from keras_transformer.data.tokenizer import RESERVED_TOKENS
from keras_transformer.data.tokenizer import WordPieceTokenizer
