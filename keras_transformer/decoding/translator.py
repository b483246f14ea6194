"""Text-to-text translation with a trained `Transformer` and its tokenizer."""

from typing import List, Sequence

import numpy as np
import tensorflow as tf

from keras_transformer.text import moses_detokenize
from keras_transformer.text import is_lowercase_vocabulary
from keras_transformer.text import moses_tokenize
from keras_transformer.text import add_start_end
from keras_transformer.decoding.beam_search import beam_search
from keras_transformer.decoding.greedy import greedy_decode
from keras_transformer.layers import validation


class Translator:
    """Translates lists of sentences, batching them by length.

    Args:
        model: a trained `Transformer`.
        tokenizer: the `WordPieceTokenizer` it was trained with.
        beam_size: int, 1 for greedy decoding. Default 4.
        alpha: float, the beam search length-penalty exponent. Default 0.6.
        max_extra_length: int, a translation has at most
            `source_length + max_extra_length` tokens. Default 50.
        text_processing: "none" (default): texts go to the subword tokenizer
            as they are, for a model trained on already tokenized text fed
            the same kind of text. "moses": raw text in and out,
            Moses-tokenized first and detokenized after
            (`keras_transformer.text`), as the exported SavedModel does.
        source_lang, target_lang: languages for the Moses rules.
        lowercase: with "moses", lowercase the input first. Default None:
            exactly when the tokenizer's vocabulary has no uppercase piece
            (a model trained on lowercased text).
        jit_compile: bool, compile decoding with XLA. Each step then runs as
            one compiled program instead of hundreds of small ops, which
            pays off at small batch sizes (docs/benchmarks.md); each
            new source length compiles once (seconds). Default False.
    """

    def __init__(
        self, model, tokenizer, beam_size: int = 4, alpha: float = 0.6, max_extra_length: int = 50,
        text_processing: str = "none", source_lang: str = "en", target_lang: str = "de",
        jit_compile: bool = False, lowercase=None,
    ):
        validation.check_positive_int("beam_size", beam_size)
        validation.check_int_at_least("max_extra_length", max_extra_length, 0)
        validation.check_choice("text_processing", text_processing, ("none", "moses"))
        self.text_processing = text_processing
        self.source_lang = source_lang
        self.target_lang = target_lang
        self.lowercase = is_lowercase_vocabulary(tokenizer.vocab) if lowercase is None else bool(lowercase)
        if not model.built:
            model.build()
        self.model = model
        self.tokenizer = tokenizer
        self.beam_size = beam_size
        self.alpha = alpha
        self.max_extra_length = max_extra_length
        self._decode = tf.function(
            self._best_ids,
            input_signature=[tf.TensorSpec([None, None], tf.int32)],
            reduce_retracing=True,
            jit_compile=jit_compile,
        )

    def _best_ids(self, source):
        max_length = tf.minimum(tf.shape(source)[1] + self.max_extra_length, self.model.max_length)
        extra = self.max_extra_length
        if self.beam_size == 1:
            return greedy_decode(self.model, source, max_length, max_extra_length=extra)
        return beam_search(
            self.model, source, max_length, self.beam_size, self.alpha, max_extra_length=extra
        )["ids"][:, 0]

    def encode_sources(self, texts: Sequence[str]) -> tf.RaggedTensor:
        """str [B] -> ragged int32 ids [B, (S)] with [START] and [END].

        Raises:
            ValueError: a sentence has more tokens than the model takes.
        """
        texts = list(texts)
        if self.text_processing == "moses":
            texts = moses_tokenize(tf.constant(texts, tf.string), self.source_lang, lowercase=self.lowercase)
        ids = self.tokenizer.tokenize(texts)
        lengths = ids.row_lengths().numpy()
        limit = self.model.max_length - 2
        if len(lengths) and lengths.max() > limit:
            i = int(lengths.argmax())
            raise ValueError(
                f"Sentence {i} has {lengths[i]} tokens; this model translates at most {limit} "
                f"(its max_length {self.model.max_length} less [START] and [END])."
            )
        return add_start_end(ids, self.tokenizer.start_id, self.tokenizer.end_id)

    def translate(self, texts: Sequence[str], batch_size: int = 64) -> List[str]:
        """The best translation of each of `texts`, in order."""
        texts = list(texts)
        if not texts:
            return []
        sources = self.encode_sources(texts)
        order = np.argsort(sources.row_lengths().numpy(), kind="stable")
        outputs = [None] * len(texts)
        for begin in range(0, len(texts), batch_size):
            index = order[begin : begin + batch_size]
            ids = self._decode(tf.gather(sources, index).to_tensor())
            texts_out = self.tokenizer.detokenize(ids)
            if self.text_processing == "moses":
                texts_out = moses_detokenize(texts_out, capitalize=self.lowercase)
            for i, text in zip(index, texts_out.numpy()):
                outputs[i] = text.decode("utf-8")
        return outputs
