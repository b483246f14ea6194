"""The WordPiece tokenizer rebuilt from core TensorFlow ops only.

TensorFlow Serving's published binaries carry an older tensorflow-text than
the one used for training, and newer tensorflow-text ops fail there with
"Op type not registered". This module gives the same ids as
`keras_transformer.data.WordPieceTokenizer` (tensorflow-text's
FastWordpieceTokenizer) with `tf.strings`, a hash table and a while loop, so
an exported graph runs on any TensorFlow Serving build.

The rule: split on whitespace; for each word, repeatedly take the longest
vocabulary entry that starts at the current byte ("##"-prefixed after the
first piece); a word with no match at some position, or longer than
`MAX_BYTES_PER_WORD` bytes, becomes one [UNK].
"""

import tensorflow as tf

from keras_transformer.text.tokens import END_ID as _END
from keras_transformer.text.tokens import MAX_BYTES_PER_WORD
from keras_transformer.text.tokens import PAD_ID as _PAD
from keras_transformer.text.tokens import START_ID as _START
from keras_transformer.text.tokens import SUFFIX
from keras_transformer.text.tokens import UNK_ID as _UNK
from keras_transformer.text.tokens import check_reserved
from keras_transformer.text.tokens import escape_reserved_ids


class CoreWordPiece(tf.Module):
    """Tokenize and detokenize with core TensorFlow ops.

    Args:
        vocab: list of str, the vocabulary of a `WordPieceTokenizer`.
    """

    def __init__(self, vocab, name=None):
        super().__init__(name=name)
        vocab = check_reserved(vocab)
        self.vocab_size = len(vocab)
        self.max_piece_bytes = max(len(t.encode("utf-8")) for t in vocab)
        self.vocab = tf.constant(vocab, tf.string)
        self.table = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(self.vocab, tf.range(len(vocab), dtype=tf.int32)),
            default_value=-1,
        )

    def tokenize(self, texts):
        """str [B] -> int32 ragged ids [B, (T)], without [START]/[END]."""
        texts = tf.convert_to_tensor(texts, tf.string)
        words = tf.strings.split(texts)  # ragged [B, (W)]
        flat = words.flat_values  # [W]
        num_words = tf.shape(flat)[0]
        word_bytes = tf.strings.length(flat)
        # An over-long word is one [UNK] whatever it holds: it enters the
        # loop empty, so no buffer grows with its size (a 100,000-byte word
        # beside 3,000 short ones made a [3001, 100000] piece buffer).
        too_long = word_bytes > MAX_BYTES_PER_WORD
        flat = tf.where(too_long, "", flat)
        word_bytes = tf.where(too_long, 0, word_bytes)
        lengths = tf.range(1, self.max_piece_bytes + 1)  # candidate piece sizes [P]

        def step(i, position, done, unk, ids, counts):
            # Every candidate piece at every word's cursor: [W, P].
            starts = tf.broadcast_to(position[:, None], [num_words, self.max_piece_bytes])
            sizes = tf.broadcast_to(lengths[None], [num_words, self.max_piece_bytes])
            fits = starts + sizes <= word_bytes[:, None]
            pieces = tf.strings.substr(tf.broadcast_to(flat[:, None], tf.shape(starts)), starts, sizes)
            pieces = tf.where(starts > 0, SUFFIX + pieces, pieces)
            found = self.table.lookup(pieces)
            usable = fits & (found >= 0)
            # The longest usable piece: the last usable column.
            best = self.max_piece_bytes - 1 - tf.argmax(
                tf.reverse(tf.cast(usable, tf.int32), axis=[1]), axis=1, output_type=tf.int32
            )
            any_usable = tf.reduce_any(usable, axis=1)
            piece_id = tf.gather(found, best, axis=1, batch_dims=1)
            active = ~done
            unk = unk | (active & ~any_usable)
            emit = active & any_usable
            ids = tf.tensor_scatter_nd_update(
                ids, tf.stack([tf.range(num_words), tf.fill([num_words], i)], axis=1),
                tf.where(emit, piece_id, ids[:, i]),
            )
            counts = counts + tf.cast(emit, tf.int32)
            position = tf.where(emit, position + best + 1, position)
            done = done | unk | (position >= word_bytes)
            return i + 1, position, done, unk, ids, counts

        max_pieces = tf.reduce_max(tf.concat([word_bytes, [0]], axis=0))  # at most MAX_BYTES_PER_WORD
        init = (
            tf.constant(0),
            tf.zeros([num_words], tf.int32),
            too_long,
            too_long,
            tf.zeros([num_words, max_pieces], tf.int32),
            tf.zeros([num_words], tf.int32),
        )
        _, _, _, unk, ids, counts = tf.while_loop(
            lambda i, position, done, *_: (i < max_pieces) & ~tf.reduce_all(done), step, init
        )
        # An unknown word is one [UNK], whatever pieces it had produced.
        counts = tf.where(unk, 1, counts)
        ids = tf.concat([ids, tf.zeros([num_words, 1], tf.int32)], axis=1)  # room for an [UNK] if max_pieces is 0
        ids = tf.where(unk[:, None], tf.one_hot(0, tf.shape(ids)[1], on_value=_UNK, off_value=0, dtype=tf.int32), ids)
        pieces = tf.RaggedTensor.from_tensor(ids, lengths=counts)  # [W, (P)]
        flat_ids = escape_reserved_ids(pieces.flat_values)  # as WordPieceTokenizer.tokenize
        return tf.RaggedTensor.from_row_splits(flat_ids, tf.gather(pieces.row_splits, words.row_splits))

    def detokenize(self, ids):
        """int ids [B, T] (0-padded) -> str [B]; [PAD], [START], [END] dropped."""
        ids = tf.cast(tf.convert_to_tensor(ids), tf.int32)
        keep = (ids != _PAD) & (ids != _START) & (ids != _END) & (ids >= 0) & (ids < self.vocab_size)
        tokens = tf.gather(self.vocab, tf.where(keep, ids, _PAD))
        # As tensorflow-text: a suffix piece joins the word before it; the
        # first token of a sentence is kept as it is.
        first = keep & (tf.cumsum(tf.cast(keep, tf.int32), axis=-1) == 1)
        is_suffix = tf.strings.regex_full_match(tokens, "##.+")
        text = tf.where(is_suffix, tf.strings.regex_replace(tokens, "^##", ""), " " + tokens)
        text = tf.where(first, tokens, text)
        text = tf.where(keep, text, "")
        return tf.strings.reduce_join(text, axis=-1)
