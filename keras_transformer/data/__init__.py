"""Parallel text, subword tokenization and tf.data pipelines (TensorFlow),
and token arrays batched for any backend (`arrays`: NumPy and Keras only).

Names load on first use, so `keras_transformer.data.arrays` imports without
TensorFlow.
"""

from keras_transformer._lazy import lazy_attributes
from keras_transformer._lazy import public_names

_NAMES = {
    "bucket_boundaries": "arrays",
    "save_token_arrays": "arrays",
    "load_token_arrays": "arrays",
    "TokenBatches": "arrays",
    "TokenStream": "arrays",
    "padding_stats": "pipeline",
    "shuffled_passes": "pipeline",
    "teacher_forcing": "pipeline",
    "token_batches": "pipeline",
    "tokenized_pairs": "pipeline",
    "read_lines": "text_files",
    "read_parallel": "text_files",
    "RESERVED_TOKENS": "tokenizer",
    "WordPieceTokenizer": "tokenizer",
}
_SUBMODULES = ("arrays", "pipeline", "text", "text_files", "tokenizer")
__all__ = public_names(_NAMES, ("pipeline", "text", "tokenizer"))


__getattr__, __dir__ = lazy_attributes(__name__, _NAMES, _SUBMODULES)
