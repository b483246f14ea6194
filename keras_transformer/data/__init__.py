"""Parallel text, subword tokenization and tf.data pipelines."""

from keras_transformer.data.text_files import read_lines
from keras_transformer.data.text_files import read_parallel
