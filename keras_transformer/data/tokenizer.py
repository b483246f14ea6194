"""WordPiece subword tokenizer: learned with tensorflow-text, used in the graph.

Text is split into words on whitespace only, and each word into WordPiece
pieces ("##" marks a piece that continues a word). Nothing else is changed:
no lowercasing, no accent stripping, no punctuation splitting. So for text
whose words are separated by single spaces, `detokenize(tokenize(s)) == s`
exactly, and the same rule is easy to rebuild from core TensorFlow ops for a
portable export.
"""

import collections
from typing import Iterable, List, Sequence

import tensorflow as tf
import tensorflow_text as tf_text
from tensorflow_text.tools.wordpiece_vocab import wordpiece_tokenizer_learner_lib as learner

from keras_transformer.text import tokens

# Re-exported: the reserved tokens live in `keras_transformer.text.tokens`, which needs no tensorflow-text.
RESERVED_TOKENS = tokens.RESERVED_TOKENS


def count_words(texts: Iterable[str]) -> collections.Counter:
    """Whitespace-separated word counts over `texts`."""
    counts = collections.Counter()
    for text in texts:
        counts.update(text.split())
    return counts


class WordPieceTokenizer:
    """Text <-> int32 ids, with ids 0..3 reserved for [PAD], [UNK], [START], [END].

    Args:
        vocab: list of str, the vocabulary in id order; must start with the
            four reserved tokens.

    Example:
    >>> tok = WordPieceTokenizer.learn(["a man rides a bike"] * 20, vocab_size=60)
    >>> ids = tok.tokenize(tf.constant(["a man rides"]))
    >>> tok.detokenize(ids).numpy()
    array([b'a man rides'], dtype=object)
    """

    pad_id, unk_id, start_id, end_id = tokens.PAD_ID, tokens.UNK_ID, tokens.START_ID, tokens.END_ID

    def __init__(self, vocab: Sequence[str]):
        self.vocab = tokens.check_reserved(vocab)
        self._wordpiece = tf_text.FastWordpieceTokenizer(
            vocab,
            suffix_indicator=tokens.SUFFIX,
            max_bytes_per_word=tokens.MAX_BYTES_PER_WORD,
            token_out_type=tf.int32,
            unknown_token=tokens.UNK,
            no_pretokenization=True,
            support_detokenization=True,
        )

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    @classmethod
    def learn(
        cls, texts: Iterable[str], vocab_size: int = 10000, min_count: int = 10
    ) -> "WordPieceTokenizer":
        """Learns a vocabulary with tensorflow-text's WordPiece learner.

        Args:
            texts: iterable of str; pass source and target text together for
                a joint vocabulary.
            vocab_size: int, the largest vocabulary to return (reserved
                tokens included). Default 10000.
            min_count: int, the learner's lowest piece-frequency threshold; a
                small corpus yields fewer than `vocab_size` pieces when this
                is high. Default 10.
        """
        counts = count_words(texts)
        if not counts:
            raise ValueError("`texts` has no words to learn a vocabulary from")
        vocab = learner.learn(
            counts, vocab_size, list(RESERVED_TOKENS), lower_thresh=min_count,
            max_token_length=tokens.MAX_BYTES_PER_WORD,
        )
        return cls(vocab)

    def save(self, path: str) -> None:
        """Writes the vocabulary, one token per line, in id order."""
        tokens.write_vocab(self.vocab, path)

    @classmethod
    def load(cls, path: str) -> "WordPieceTokenizer":
        """Reads a vocabulary written by `save`."""
        return cls(tokens.read_vocab(path))

    def tokenize(self, texts) -> tf.RaggedTensor:
        """str [B] -> int32 ragged ids [B, (T)], without [START]/[END].

        A word with a character the vocabulary lacks becomes one [UNK]. Text
        never yields the ids of [PAD], [START] or [END]: a word written as
        one of them is [UNK].
        """
        texts = tf.convert_to_tensor(texts, dtype=tf.string)
        words = tf.strings.split(texts)  # [B, (W)]
        pieces = self._wordpiece.tokenize(words).merge_dims(-2, -1)  # [B, (T)]
        return pieces.with_flat_values(tokens.escape_reserved_ids(pieces.flat_values))

    def detokenize(self, ids) -> tf.Tensor:
        """int ids [B, T] (dense or ragged) -> str [B].

        [PAD], [START] and [END] are dropped; [UNK] stays as the text "[UNK]".
        """
        if not isinstance(ids, tf.RaggedTensor):
            ids = tf.RaggedTensor.from_tensor(tf.convert_to_tensor(ids))
        ids = tf.cast(ids, tf.int32)
        keep = (ids != self.pad_id) & (ids != self.start_id) & (ids != self.end_id)
        ids = tf.ragged.boolean_mask(ids, keep)
        return self._wordpiece.detokenize(ids)

    def id_to_token(self, ids) -> List[str]:
        return [self.vocab[i] for i in ids]

