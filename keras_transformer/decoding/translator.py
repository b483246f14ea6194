"""Text-to-text translation with a trained `Transformer` and its tokenizer."""

from typing import List, Sequence

import numpy as np
import tensorflow as tf

from keras_transformer.decoding.greedy import greedy_decode


class Translator:
    """Translates lists of sentences, batching them by length.

    Args:
        model: a trained `Transformer`.
        tokenizer: the `WordPieceTokenizer` it was trained with.
        max_extra_length: int, a translation has at most
            `source_length + max_extra_length` tokens. Default 50.
    """

    def __init__(self, model, tokenizer, max_extra_length: int = 50):
        self.model = model
        self.tokenizer = tokenizer
        self.max_extra_length = max_extra_length
        self._greedy = tf.function(
            self._greedy_ids,
            input_signature=[tf.TensorSpec([None, None], tf.int32)],
            reduce_retracing=True,
        )

    def _greedy_ids(self, source):
        max_length = tf.minimum(tf.shape(source)[1] + self.max_extra_length, self.model.max_length)
        return greedy_decode(self.model, source, max_length)

    def encode_sources(self, texts: Sequence[str]) -> tf.RaggedTensor:
        ids = self.tokenizer.tokenize(list(texts))
        batch = ids.nrows()
        start = tf.fill([batch, 1], self.tokenizer.start_id)
        end = tf.fill([batch, 1], self.tokenizer.end_id)
        return tf.concat([start, ids[:, : self.model.max_length - 2], end], axis=1)

    def translate(self, texts: Sequence[str], batch_size: int = 64) -> List[str]:
        """Greedy translations of `texts`, in order."""
        texts = list(texts)
        if not texts:
            return []
        sources = self.encode_sources(texts)
        order = np.argsort(sources.row_lengths().numpy(), kind="stable")
        outputs = [None] * len(texts)
        for begin in range(0, len(texts), batch_size):
            index = order[begin : begin + batch_size]
            batch = tf.gather(sources, index).to_tensor()
            ids = self._greedy(batch)
            for i, text in zip(index, self.tokenizer.detokenize(ids).numpy()):
                outputs[i] = text.decode("utf-8")
        return outputs
