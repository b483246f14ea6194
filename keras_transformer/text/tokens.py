"""The reserved tokens and their ids, shared by training, decoding and export.

The ids and vocabulary files need no TensorFlow (decoding uses them on every
backend); the two tensor helpers are core TensorFlow, which the exported
SavedModel uses without tensorflow-text.
"""

import collections
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # core TensorFlow, imported where the tensor helpers run
    import tensorflow as tf

PAD, UNK, START, END = "[PAD]", "[UNK]", "[START]", "[END]"
RESERVED_TOKENS = (PAD, UNK, START, END)
PAD_ID, UNK_ID, START_ID, END_ID = range(4)
SUFFIX = "##"  # marks a piece that continues a word
MAX_BYTES_PER_WORD = 100  # a longer word is one [UNK]


def check_reserved(vocab) -> list:
    """`vocab` as a list, refused unless it starts with the reserved tokens and has no duplicates."""
    vocab = list(vocab)
    if tuple(vocab[:4]) != RESERVED_TOKENS:
        raise ValueError(
            f"`vocab` must start with the reserved tokens {list(RESERVED_TOKENS)}. "
            f"Received first entries: {vocab[:4]}"
        )
    duplicates = [token for token, n in collections.Counter(vocab).items() if n > 1]
    if duplicates:
        raise ValueError(f"`vocab` has duplicate entries: {duplicates[:10]}")
    return vocab


def read_vocab(path: str) -> list:
    """A vocabulary file (one token per line, in id order), checked by `check_reserved`."""
    with open(path, encoding="utf-8") as f:
        vocab = f.read().split("\n")
    if vocab and vocab[-1] == "":
        vocab.pop()
    return check_reserved(vocab)


def write_vocab(vocab, path: str) -> None:
    """Writes `vocab` one token per line, replacing `path` whole (never half-written)."""
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write("".join(token + "\n" for token in vocab))
    os.replace(tmp, path)


def add_start_end(ids: "tf.RaggedTensor", start_id: int = START_ID, end_id: int = END_ID) -> "tf.RaggedTensor":
    """Ragged ids [B, (T)] -> [B, (T + 2)], each row wrapped in [START] ... [END]."""
    import tensorflow as tf

    batch = ids.nrows()
    start = tf.fill([batch, 1], tf.constant(start_id, ids.dtype))
    end = tf.fill([batch, 1], tf.constant(end_id, ids.dtype))
    return tf.concat([start, ids, end], axis=1)


def escape_reserved_ids(ids: "tf.Tensor") -> "tf.Tensor":
    """Text never yields [PAD], [START] or [END]: their ids become [UNK]'s, so a
    word written "[END]" cannot end a source early."""
    import tensorflow as tf

    reserved = (ids == PAD_ID) | (ids == START_ID) | (ids == END_ID)
    return tf.where(reserved, tf.constant(UNK_ID, ids.dtype), ids)
