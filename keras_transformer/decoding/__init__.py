"""Incremental decoding: greedy and beam search, translation from text to text."""

from keras_transformer.decoding.greedy import greedy_decode
from keras_transformer.decoding.translator import Translator
