"""Argument checks outside the layers speak as the layers do: "`name` must be ... Received: name=value"."""

import numpy as np
import pytest
import tensorflow as tf

from keras_transformer import training
from keras_transformer.data import pipeline
from keras_transformer.decoding import Translator
from keras_transformer.decoding import beam_search
from keras_transformer.decoding import greedy_decode


def _calls():
    data = tf.data.Dataset.range(3)
    return [
        ("beam_size", 0, lambda: beam_search(None, [[2, 3]], 4, beam_size=0)),
        ("beam_size", 2.5, lambda: beam_search(None, [[2, 3]], 4, beam_size=2.5)),
        ("cache_chunk", 0, lambda: greedy_decode(None, [[2, 3]], 4, cache_chunk=0)),
        ("max_extra_length", -1, lambda: greedy_decode(None, [[2, 3]], 4, max_extra_length=-1)),
        ("max_extra_length", 1.5, lambda: beam_search(None, [[2, 3]], 4, max_extra_length=1.5)),
        ("max_extra_length", -1, lambda: beam_search(None, [[2, 3]], 4, max_extra_length=np.int32(-1))),
        ("max_extra_length", 1.5, lambda: greedy_decode(None, [[2, 3]], 4, max_extra_length=np.float32(1.5))),
        ("beam_size", -1, lambda: Translator(None, None, beam_size=-1)),
        ("max_extra_length", -1, lambda: Translator(None, None, max_extra_length=-1)),
        ("text_processing", "'spacy'", lambda: Translator(None, None, text_processing="spacy")),
        ("overlong", "'cut'", lambda: pipeline.tokenized_pairs(None, ["a"], ["b"], 8, overlong="cut")),
        ("max_length", 2, lambda: pipeline.tokenized_pairs(None, ["a"], ["b"], 2)),
        ("buffer_size", 0, lambda: pipeline.shuffled_passes(data, buffer_size=0)),
        ("save_freq", True, lambda: training.StepBackup("x", save_freq=True)),
        ("patience", 0, lambda: training.EarlyStopping(patience=0)),
        ("strategy", "'tpu'", lambda: training.make_strategy("tpu")),
    ]


@pytest.mark.parametrize("index", range(len(_calls())))
def test_a_bad_argument_is_named_with_what_was_received(index):
    name, received, call = _calls()[index]
    with pytest.raises(ValueError, match=rf"^`{name}` must be .*Received: {name}={received}$"):
        call()
