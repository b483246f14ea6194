"""Incremental decoding: greedy, beam search and sampling, translation from text to text.

Greedy decoding, beam search and sampling run on every Keras backend
(TensorFlow's loop on TensorFlow, the fixed-shape loop that traces under
`jax.jit` elsewhere); `Translator`, which tokenizes text with tensorflow-text,
and `per_sentence`, decoding chosen sentence by sentence in one TensorFlow
graph, need TensorFlow and load on first use, so the searches import without it.
"""

from keras_transformer._lazy import lazy_attributes
from keras_transformer._lazy import public_names
from keras_transformer.decoding.beam_search import beam_search
from keras_transformer.decoding.beam_search import length_penalty
from keras_transformer.decoding.greedy import greedy_decode
from keras_transformer.decoding.sampling import sample
from keras_transformer.decoding.sampling import sample_tokens

_LAZY = {"Translator": "translator"}
__all__ = sorted([
    "beam_search", "greedy_decode", "length_penalty", "sample", "sample_tokens",
    *public_names(_LAZY, ("translator",)),
])

__getattr__, __dir__ = lazy_attributes(__name__, _LAZY, ("loop", "per_sentence", "strategy", "translator"))
