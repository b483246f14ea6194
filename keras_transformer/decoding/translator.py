"""Text-to-text translation with a trained `Transformer` and its tokenizer."""

from typing import List, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf

from keras_transformer.text import moses_detokenize
from keras_transformer.text import is_lowercase_vocabulary
from keras_transformer.text import moses_tokenize
from keras_transformer.text import add_start_end
from keras_transformer.decoding.beam_search import beam_search
from keras_transformer.decoding.per_sentence import check_controls
from keras_transformer.decoding.per_sentence import controls_for
from keras_transformer.decoding.sampling import sample
from keras_transformer.layers import validation


class Translator:
    """Translates lists of sentences, batching them by length.

    Decoding is chosen per call, with the controls of the exported
    `translate` signature (`keras_transformer.decoding.per_sentence`); the
    constructor's values are the defaults of `translate` and `hypotheses`.

    Args:
        model: a trained `Transformer`.
        tokenizer: the `WordPieceTokenizer` it was trained with.
        beam_size: int; 2 or more: beam search; 0 or 1: one hypothesis,
            greedy (`temperature` 0) or sampled. Default 4.
        alpha: float, the beam search length-penalty exponent. Default 0.6.
        max_extra_length: int, a translation has at most
            `source_length + max_extra_length` tokens. Default 50.
        text_processing: "none" (default): texts go to the subword tokenizer
            as they are, for a model trained on already tokenized text fed
            the same kind of text. "moses": raw text in and out,
            Moses-tokenized first and detokenized after
            (`keras_transformer.text`), as the exported SavedModel does.
        source_lang, target_lang: languages for the Moses rules.
        jit_compile: bool, compile decoding with XLA. Each step then runs as
            one compiled program instead of hundreds of small ops, which
            pays off at small batch sizes (docs/benchmarks.md); each
            new source length compiles once (seconds). Default False.
        lowercase: with "moses", lowercase the input first. Default None:
            exactly when the tokenizer's vocabulary has no uppercase piece
            (a model trained on lowercased text).
        temperature: float >= 0; above 0 (with `beam_size` 0 or 1) samples
            at that temperature. Default 0.
        top_k: int, sample only from the k most likely tokens (0: all).
        top_p: float in (0, 1], sample only from the most likely tokens
            that add up to this probability (1: all).
        seed: int, the sampling seed: the same seed gives the same samples.
            Default None: a new random seed for each call.
    """

    def __init__(
        self, model, tokenizer, beam_size: int = 4, alpha: float = 0.6, max_extra_length: int = 50,
        text_processing: str = "none", source_lang: str = "en", target_lang: str = "de",
        jit_compile: bool = False, lowercase=None, temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
        seed: Optional[int] = None,
    ):
        self.defaults = dict(beam_size=beam_size, alpha=alpha, max_extra_length=max_extra_length,
                             temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
        self._controls(1)  # checked now
        validation.check_choice("text_processing", text_processing, ("none", "moses"))
        self.text_processing = text_processing
        self.source_lang = source_lang
        self.target_lang = target_lang
        self.lowercase = is_lowercase_vocabulary(tokenizer.vocab) if lowercase is None else bool(lowercase)
        if not model.built:
            model.build()
        self.model = model
        self.tokenizer = tokenizer
        self._search = tf.function(self._search_ids, reduce_retracing=True, jit_compile=jit_compile)

    @property
    def beam_size(self):
        return self.defaults["beam_size"]

    @property
    def alpha(self):
        return self.defaults["alpha"]

    @property
    def max_extra_length(self):
        return self.defaults["max_extra_length"]

    def _controls(self, num_return, **overrides) -> dict:
        """The call's controls (Python values), checked: ValueError names a bad one."""
        given = {k: v for k, v in overrides.items() if v is not None}
        controls = {**self.defaults, **given}
        if "temperature" in given and given["temperature"] > 0 and "beam_size" not in given:
            controls["beam_size"] = 1  # sampling asked for in this call: one hypothesis a sample
        unknown = sorted(set(overrides) - set(self.defaults))
        if unknown:
            raise TypeError(f"unknown decoding control(s) {unknown}; Translator takes {sorted(self.defaults)}")
        checked = {k: v for k, v in controls.items() if k != "seed" or v is not None}
        check_controls(controls_for(1, num_return=num_return, **checked), 1)
        return controls

    def _search_ids(self, source, beam_size, num_return, sampled, max_extra_length, alpha, temperature, top_k, top_p,
                    seed):
        # beam_size, num_return and sampled are Python values (they shape the search); the rest are tensors.
        max_extra_length = tf.minimum(max_extra_length, self.model.max_length)  # more changes nothing
        max_length = tf.minimum(tf.shape(source)[1] + max_extra_length, self.model.max_length)
        if beam_size >= 2:
            out = beam_search(self.model, source, max_length, beam_size, alpha, max_extra_length=max_extra_length)
            return out["ids"][:, :num_return], out["log_probs"][:, :num_return]
        if not sampled:
            temperature, top_k, top_p = 0.0, 0, 1.0  # greedy: no noise drawn, no filter built
        out = sample(self.model, source, max_length, num_return, temperature, top_k, top_p, seed,
                     max_extra_length=max_extra_length)
        return out["ids"], out["log_probs"]

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

    def translate(self, texts: Sequence[str], batch_size: int = 64, **controls) -> List[str]:
        """The best translation of each of `texts`, in order.

        Args:
            texts: str sentences.
            batch_size: int, sentences decoded at once (grouped by length).
            **controls: beam_size, alpha, max_extra_length, temperature,
                top_k, top_p, seed: this call's values instead of the
                constructor's (a temperature above 0 without a beam_size
                samples: beam_size 1).
        """
        return [hypotheses[0][0] for hypotheses in self.hypotheses(texts, 1, batch_size, **controls)]

    def hypotheses(self, texts: Sequence[str], num_return: int = 1, batch_size: int = 64,
                   **controls) -> List[List[Tuple[str, float]]]:
        """For each of `texts`, `num_return` translations with their
        log-probabilities under the model, best first: the n-best list of a
        beam search (`num_return` <= `beam_size`, in score order), or
        `num_return` samples (most likely first).

        Args:
            texts: str sentences.
            num_return: int, hypotheses per sentence. Default 1.
            batch_size: int, sentences decoded at once (grouped by length).
            **controls: as for `translate`.

        Returns:
            [[(translation, log_prob), ...], ...], one list per text.

        Raises:
            ValueError: a control out of range, or a sentence longer than
                the model takes.
        """
        c = self._controls(num_return, **controls)
        texts = list(texts)
        if not texts:
            return []
        seed = np.random.randint(2**31) if c["seed"] is None else c["seed"]
        sources = self.encode_sources(texts)
        order = np.argsort(sources.row_lengths().numpy(), kind="stable")
        outputs = [None] * len(texts)
        sampled = c["beam_size"] <= 1 and c["temperature"] > 0
        for begin in range(0, len(texts), batch_size):
            index = order[begin : begin + batch_size]
            ids, log_probs = self._search(
                tf.gather(sources, index).to_tensor(), int(c["beam_size"]), int(num_return), sampled,
                tf.constant(c["max_extra_length"], tf.int32), tf.constant(c["alpha"], tf.float32),
                tf.constant(c["temperature"], tf.float32), tf.constant(c["top_k"], tf.int32),
                tf.constant(c["top_p"], tf.float32), tf.constant(seed, tf.int64),
            )
            texts_out = self.tokenizer.detokenize(tf.reshape(ids, [-1, tf.shape(ids)[-1]]))
            if self.text_processing == "moses":
                texts_out = moses_detokenize(texts_out, capitalize=self.lowercase)
            texts_out = np.reshape(texts_out.numpy(), [len(index), num_return])
            for i, row, scores in zip(index, texts_out, log_probs.numpy()):
                outputs[i] = [(text.decode("utf-8"), float(score)) for text, score in zip(row, scores)]
        return outputs
