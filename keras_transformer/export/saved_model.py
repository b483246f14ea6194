"""A TensorFlow Serving SavedModel: text in, translation out, core ops only."""

import os
import re
import shutil
import uuid
from typing import Optional, Sequence

import tensorflow as tf

from keras_transformer.text import moses_detokenize
from keras_transformer.text import is_lowercase_vocabulary
from keras_transformer.text import moses_tokenize
from keras_transformer.text import add_start_end
from keras_transformer.decoding.beam_search import beam_search
from keras_transformer.decoding.per_sentence import CONTROLS
from keras_transformer.decoding.per_sentence import Limits
from keras_transformer.decoding.per_sentence import check_controls
from keras_transformer.decoding.per_sentence import decode_per_sentence
from keras_transformer.text.tokens import END_ID
from keras_transformer.text.tokens import START_ID
from keras_transformer.export.core_tokenizer import CoreWordPiece
from keras_transformer.layers import validation


class TranslationModule(tf.Module):
    """The model, its tokenizer and decoding settings, with serving signatures.

    Signatures (all batch-first, any batch size):
        serving_default: text str [B] -> translation str [B], log_prob float32 [B].
            With `text_processing="moses"` (the default), `text` is raw
            text: it is Moses-tokenized in the graph (and lowercased first
            for a model trained on lowercased text), as the training corpus
            was, and the translation is detokenized.
        translate_ids: ids int32 [B, S] (0-padded, with [START]/[END]) ->
            ids int32 [B, L], log_prob float32 [B].
        score: text str [B], target_text str [B] -> log_prob float32 [B],
            the model's log-probability of each target given its source.
        attention: text str [B] -> translation str [B], source_tokens and
            target_tokens str [B, S] / [B, L], attention float32 [B, L, S]
            (last decoder layer, mean over heads).
        translate: decoding chosen per sentence. text str [B] and one value
            per sentence of each control: beam_size int32, alpha float32,
            max_extra_length int32, num_return int32, temperature float32,
            top_k int32, top_p float32, seed int64 (all [B]; see
            `keras_transformer.decoding.per_sentence`) -> translations str
            [B, R] and log_probs float32 [B, R], R = `max_num_return`,
            best first; slots past a sentence's num_return are "" with
            log-probability -1e9 (EMPTY_LOG_PROB: finite, so REST's JSON
            stays standard). A control out of bounds is refused
            (INVALID_ARGUMENT) naming it.

    Args:
        model: a trained `Transformer`.
        vocab: list of str, its tokenizer's vocabulary.
        beam_size, alpha: beam search settings, fixed at export.
        max_extra_length: int, translations have at most source length +
            this many tokens.
        text_processing: "moses" (raw text in and out, see
            `keras_transformer.text`) or "none" (text goes to the
            subword tokenizer as it is).
        source_lang, target_lang: languages for the Moses rules.
        lowercase: with `text_processing="moses"`, lowercase the input
            first. Default None: lowercase exactly when the vocabulary has
            no uppercase piece (`is_lowercase_vocabulary`), i.e. when the
            model was trained on lowercased text.
        max_beam_size: int, the largest beam_size `translate` takes.
        max_num_return: int, the largest num_return `translate` takes: its
            outputs' width.
    """

    def __init__(
        self, model, vocab: Sequence[str], beam_size=4, alpha=0.6, max_extra_length=50,
        text_processing="moses", source_lang="en", target_lang="de", lowercase=None, max_beam_size=8,
        max_num_return=4,
    ):
        super().__init__(name="translation")
        self.model = model
        self.tokenizer = CoreWordPiece(vocab)
        self.vocab = self.tokenizer.vocab
        self.beam_size = validation.check_positive_int("beam_size", beam_size)
        self.alpha = float(alpha)
        self.max_extra_length = validation.check_int_at_least("max_extra_length", max_extra_length, 0)
        self.max_source_tokens = model.max_length - 2
        validation.check_choice("text_processing", text_processing, TEXT_PROCESSING)
        self.text_processing = text_processing
        self.source_lang = source_lang
        self.target_lang = target_lang
        self.lowercase = is_lowercase_vocabulary(vocab) if lowercase is None else bool(lowercase)
        self.limits = Limits(
            max_beam_size=validation.check_positive_int("max_beam_size", max_beam_size),
            max_num_return=validation.check_positive_int("max_num_return", max_num_return),
        )

    def _prepare(self, text, lang, name="text"):
        # Invalid UTF-8 comes back from decode-with-replacement changed.
        roundtrip = tf.strings.unicode_encode(
            tf.strings.unicode_decode(text, "UTF-8", errors="replace"), "UTF-8"
        )
        # tf.debugging.Assert with the message only: an assert that printed the
        # input would put the invalid bytes into the error message itself.
        tf.debugging.Assert(tf.reduce_all(roundtrip == text), [f"{name}: a string is not valid UTF-8"])
        if self.text_processing == "moses":
            return moses_tokenize(text, lang, lowercase=self.lowercase)
        return text

    def _finish(self, text):
        if self.text_processing == "moses":
            # A cased model writes its own capitals; a lowercased one gets its first letter upper-cased.
            return moses_detokenize(text, capitalize=self.lowercase)
        return text

    def _tokenize(self, text, limit, name):
        """Ragged ids, refused (INVALID_ARGUMENT) past `limit` tokens in a sentence."""
        message = f"{name}: a sentence has more tokens than this model takes ({limit})"
        # Every word is at least one token: count words first, so a sentence of
        # a million short words is refused before the tokenizer's
        # [words, piece length] buffers are built for it.
        words = tf.strings.split(text).row_lengths()
        few_enough = tf.debugging.assert_less_equal(
            tf.reduce_max(tf.concat([words, [0]], 0)), tf.cast(limit, words.dtype), message=message
        )
        with tf.control_dependencies([few_enough]):
            ids = self.tokenizer.tokenize(tf.identity(text))
        longest = tf.reduce_max(tf.concat([ids.row_lengths(), [0]], 0))
        tf.debugging.assert_less_equal(longest, tf.cast(limit, longest.dtype), message=message)
        return ids

    def _source_ids(self, text):
        ids = self._tokenize(self._prepare(text, self.source_lang), self.max_source_tokens, "text")
        return add_start_end(ids, START_ID, END_ID).to_tensor()

    def _beam(self, source, return_attention=False):
        max_length = tf.minimum(tf.shape(source)[1] + self.max_extra_length, self.model.max_length)
        return beam_search(
            self.model, source, max_length, self.beam_size, self.alpha,
            return_attention=return_attention, max_extra_length=self.max_extra_length,
        )

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text")])
    def serve(self, text):
        out = self._beam(self._source_ids(text))
        translation = self._finish(self.tokenizer.detokenize(out["ids"][:, 0]))
        return {"translation": translation, "log_prob": out["log_probs"][:, 0]}

    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.int32, name="ids")])
    def translate_ids(self, ids):
        out = self._beam(ids)
        return {"ids": out["ids"][:, 0], "log_prob": out["log_probs"][:, 0]}

    @tf.function(
        input_signature=[
            tf.TensorSpec([None], tf.string, name="text"),
            tf.TensorSpec([None], tf.string, name="target_text"),
        ]
    )
    def score(self, text, target_text):
        source = self._source_ids(text)
        # A target takes its [START] or [END] beside it within max_length.
        target = self._tokenize(self._prepare(target_text, self.target_lang, "target_text"),
                                self.model.max_length - 1, "target_text")
        batch = target.nrows()
        decoder_input = tf.concat([tf.fill([batch, 1], START_ID), target], axis=1).to_tensor()
        labels = tf.concat([target, tf.fill([batch, 1], END_ID)], axis=1).to_tensor()
        logits = self.model({"source": source, "target": decoder_input})
        log_probs = tf.gather(tf.nn.log_softmax(logits), labels, axis=-1, batch_dims=2)
        return {"log_prob": tf.reduce_sum(tf.where(labels != 0, log_probs, 0.0), axis=1)}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text")])
    def attention(self, text):
        source = self._source_ids(text)
        out = self._beam(source, return_attention=True)
        ids = out["ids"][:, 0]
        return {
            "translation": self._finish(self.tokenizer.detokenize(ids)),
            "source_tokens": tf.gather(self.vocab, source),
            "target_tokens": tf.where(ids != 0, tf.gather(self.vocab, ids), ""),
            "attention": out["attention"][:, 0],
        }


    @tf.function(input_signature=[
        tf.TensorSpec([None], tf.string, name="text"),
        *[tf.TensorSpec([None], dtype, name=name) for name, (dtype, _) in CONTROLS.items()],
    ])
    def translate(self, text, beam_size, alpha, max_extra_length, num_return, temperature, top_k, top_p, seed):
        controls = check_controls(
            dict(beam_size=beam_size, alpha=alpha, max_extra_length=max_extra_length, num_return=num_return,
                 temperature=temperature, top_k=top_k, top_p=top_p, seed=seed),
            tf.shape(text)[0], self.limits,
        )
        width = self.limits.max_num_return
        ids, log_probs = decode_per_sentence(self.model, self._source_ids(text), controls, width)
        texts = self._finish(self.tokenizer.detokenize(tf.reshape(ids, [-1, tf.shape(ids)[2]])))
        asked = tf.range(width)[None, :] < controls["num_return"][:, None]
        translations = tf.where(asked, tf.reshape(texts, [-1, width]), "")
        return {"translations": translations, "log_probs": log_probs}


TEXT_PROCESSING = ("moses", "none")
# Each signature's TranslationModule method.
SIGNATURE_METHODS = {"serving_default": "serve", "translate_ids": "translate_ids", "score": "score",
                     "attention": "attention", "translate": "translate"}
SIGNATURES = tuple(SIGNATURE_METHODS)


def check_signatures(signatures) -> list:
    """`signatures` as a list, refused (ValueError naming what is wrong)
    unless it names some of `SIGNATURES`, each once."""
    names = list(signatures)
    wrong = [name for name in names if name not in SIGNATURES]
    problem = ""
    if wrong:
        problem = f" (not {', '.join(map(repr, wrong))})"
    elif len(set(names)) < len(names):
        problem = " (one is named twice)"
    elif not names:
        problem = " (none given)"
    if problem:
        raise ValueError(f"`signatures` must be some of {list(SIGNATURES)}, each once{problem}. Received: "
                         f"signatures={names!r}")
    return names


def next_version(base_dir: str) -> int:
    """One more than the largest integer directory name in `base_dir` (1 if none)."""
    if not os.path.isdir(base_dir):
        return 1
    versions = [int(name) for name in os.listdir(base_dir) if re.fullmatch(r"[0-9]+", name)]
    return max(versions, default=0) + 1


def export_saved_model(
    model,
    vocab: Sequence[str],
    base_dir: str,
    version: Optional[int] = None,
    beam_size: int = 4,
    alpha: float = 0.6,
    max_extra_length: int = 50,
    warmup_sentences: Sequence[str] = ("A man rides a bike.",),
    text_processing: str = "moses",
    source_lang: str = "en",
    target_lang: str = "de",
    lowercase: Optional[bool] = None,
    max_beam_size: int = 8,
    max_num_return: int = 4,
    signatures: Sequence[str] = SIGNATURES,
) -> str:
    """Writes `base_dir/<version>/`, a SavedModel TensorFlow Serving loads as it is.

    The export is written to a temporary directory inside `base_dir` and
    renamed into place only when complete, so a server polling `base_dir`
    never sees a partial version and a failed export leaves nothing behind.

    `signatures` chooses which of `SIGNATURES` the SavedModel serves
    (default: all): only their functions are traced and saved, and the
    warm-up records run only those. A SavedModel without `translate` and
    its two decoding loops is smaller and loads faster, and a deployment
    that should not let requests choose their beam size leaves it out.

    Returns:
        The path of the new version directory.

    Raises:
        FileExistsError: `version` already exists.
        ValueError: `signatures` is empty or names one not in `SIGNATURES`.
    """
    from keras_transformer.export.warmup import translate_warmup_settings
    from keras_transformer.export.warmup import write_warmup_requests

    signatures = check_signatures(signatures)
    os.makedirs(base_dir, exist_ok=True)
    version = next_version(base_dir) if version is None else int(version)
    final = os.path.join(base_dir, str(version))
    if os.path.exists(final):
        raise FileExistsError(f"{final} already exists; choose another version")
    module = TranslationModule(
        model, vocab, beam_size, alpha, max_extra_length, text_processing, source_lang, target_lang, lowercase,
        max_beam_size, max_num_return,
    )
    # A plain mkdir (not mkdtemp's 0700): the umask decides, as for any
    # directory, so a server running as another user can read the version.
    tmp = os.path.join(base_dir, f".tmp-{version}-{uuid.uuid4().hex}")
    os.mkdir(tmp)
    try:
        chosen = {name: getattr(module, SIGNATURE_METHODS[name]) for name in signatures}
        for name, method in SIGNATURE_METHODS.items():
            if name not in chosen:
                # A tf.function attribute with an input signature is traced and saved whether a
                # signature names it or not: the instance's None hides the class's method.
                setattr(module, method, None)
        tf.saved_model.save(module, tmp, signatures=chosen)
        write_warmup_requests(tmp, warmup_sentences, translate_warmup_settings(
            beam_size, alpha, max_extra_length, module.limits.max_beam_size, module.limits.max_num_return),
            signatures)
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final
