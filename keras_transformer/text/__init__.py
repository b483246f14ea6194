"""Text in core TensorFlow ops: reserved tokens and Moses-style normalization.

Nothing here imports tensorflow-text, so decoding and export can use it. Names
load on first use: the reserved ids (`text.tokens`) need no TensorFlow, so the
searches of `keras_transformer.decoding` import them on every backend.
"""

from keras_transformer._lazy import lazy_attributes
from keras_transformer._lazy import public_names

_NAMES = {
    "is_lowercase_vocabulary": "moses",
    "moses_detokenize": "moses",
    "moses_tokenize": "moses",
    "END_ID": "tokens",
    "PAD_ID": "tokens",
    "RESERVED_TOKENS": "tokens",
    "START_ID": "tokens",
    "UNK_ID": "tokens",
    "add_start_end": "tokens",
}
__all__ = public_names(_NAMES, ("moses",))

__getattr__, __dir__ = lazy_attributes(__name__, _NAMES, ("moses", "tokens"))
