"""Incremental decoding: greedy and beam search, translation from text to text."""

from keras_transformer.decoding.greedy import greedy_decode
from keras_transformer.decoding.translator import Translator
from keras_transformer.decoding.beam_search import beam_search
from keras_transformer.decoding.beam_search import length_penalty
