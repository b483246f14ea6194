"""Moved to `keras_transformer.text` (which needs no tensorflow-text); these names stay for old imports."""

import warnings

from keras_transformer.text.moses import is_lowercase_vocabulary  # noqa: F401
from keras_transformer.text.moses import moses_detokenize  # noqa: F401
from keras_transformer.text.moses import moses_tokenize  # noqa: F401

warnings.warn("keras_transformer.data.text moved to keras_transformer.text", DeprecationWarning, stacklevel=2)
