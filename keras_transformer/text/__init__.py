"""Text in core TensorFlow ops: reserved tokens and Moses-style normalization.

Nothing here imports tensorflow-text, so decoding and export can use it.
"""

from keras_transformer.text.moses import is_lowercase_vocabulary
from keras_transformer.text.moses import moses_detokenize
from keras_transformer.text.moses import moses_tokenize
from keras_transformer.text.tokens import END_ID
from keras_transformer.text.tokens import PAD_ID
from keras_transformer.text.tokens import RESERVED_TOKENS
from keras_transformer.text.tokens import START_ID
from keras_transformer.text.tokens import UNK_ID
from keras_transformer.text.tokens import add_start_end
