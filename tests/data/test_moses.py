"""Moses-style normalization in core ops, measured against Multi30k's own tokenized files."""

import gzip
import os

import pytest
import tensorflow as tf

from keras_transformer.text import is_lowercase_vocabulary
from keras_transformer.text import moses_detokenize
from keras_transformer.text import moses_tokenize


def _lines(path):
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f]


def _strings(tensor):
    return [t.decode("utf-8") for t in tensor.numpy()]


@pytest.mark.parametrize("lang", ["en", "de", "fr"])
def test_tokenize_matches_the_lc_norm_tok_files(multi30k_dir, lang):
    raw = _lines(os.path.join(multi30k_dir, f"val.{lang}.gz"))
    reference = [line.strip() for line in _lines(os.path.join(multi30k_dir, f"val.lc.norm.tok.{lang}"))]
    ours = _strings(moses_tokenize(raw, lang))
    agreement = sum(a == b for a, b in zip(ours, reference)) / len(raw)
    assert agreement >= 0.99, agreement


@pytest.mark.parametrize("lang", ["en", "de"])
def test_detokenize_restores_the_raw_text_up_to_case(multi30k_dir, lang):
    raw = _lines(os.path.join(multi30k_dir, f"test_2016_flickr.{lang}.gz"))
    tokenized = _lines(os.path.join(multi30k_dir, f"test_2016_flickr.lc.norm.tok.{lang}"))
    ours = _strings(moses_detokenize(tokenized))
    agreement = sum(a.strip().lower() == b.lower() for a, b in zip(raw, ours)) / len(raw)
    assert agreement >= 0.99, agreement


def test_hand_checked_examples():
    assert _strings(moses_tokenize(["Two young, White males are outside near many bushes."])) == [
        "two young , white males are outside near many bushes ."
    ]
    assert _strings(moses_tokenize(['A "thumbs up" at the man\'s 1,000th race & more...'])) == [
        "a &quot; thumbs up &quot; at the man &apos;s 1,000th race &amp; more ..."
    ]
    assert _strings(moses_tokenize(["Ein Mädchen fährt Rad."], "de")) == ["ein mädchen fährt rad ."]
    assert _strings(moses_tokenize(["L'homme", "x"], "fr", lowercase=False)) == ["L&apos; homme", "x"]
    assert _strings(moses_detokenize(["ein mädchen , das &quot; hallo &quot; sagt ( laut ) ."])) == [
        'Ein mädchen, das "hallo" sagt (laut).'
    ]
    assert _strings(moses_detokenize(["über die brücke"])) == ["Über die brücke"]
    assert moses_tokenize(tf.constant([], tf.string)).shape == (0,)
    assert _strings(moses_detokenize([""])) == [""]


@pytest.mark.parametrize("lang", ["en", "de", "fr"])
def test_cased_tokenize_is_the_lowercased_one_but_for_case(multi30k_dir, lang):
    """The cased recipe trains on `moses_tokenize(raw, lowercase=False)`: lowercased, it must be
    the tokenization the lowercased corpora have (which Moses made from cased text)."""
    raw = _lines(os.path.join(multi30k_dir, f"val.{lang}.gz"))
    reference = [line.strip() for line in _lines(os.path.join(multi30k_dir, f"val.lc.norm.tok.{lang}"))]
    cased = _strings(moses_tokenize(raw, lang, lowercase=False))
    agreement = sum(a.lower() == b for a, b in zip(cased, reference)) / len(raw)
    assert agreement >= 0.99, agreement
    assert sum(a != a.lower() for a in cased) >= 0.9 * len(raw)  # the case is kept


def test_final_periods_with_and_without_case():
    # Moses keeps a period before a lowercase word (an abbreviation: "approx. two") and splits it
    # off before anything else. Lowercased text has no case left to tell, so there any letter keeps it.
    assert _strings(moses_tokenize(["A dog. The cat ran approx. two miles."], lowercase=False)) == [
        "A dog . The cat ran approx. two miles ."
    ]
    assert _strings(moses_tokenize(["A dog. The cat ran approx. two miles."])) == [
        "a dog. the cat ran approx. two miles ."
    ]
    assert _strings(moses_tokenize(["Er kam um 5. Dann ging er."], "de", lowercase=False)) == [
        "Er kam um 5 . Dann ging er ."
    ]


def test_is_lowercase_vocabulary():
    assert is_lowercase_vocabulary(["[PAD]", "[UNK]", "[START]", "[END]", "ein", "##er", "über", "&quot;", "."])
    assert not is_lowercase_vocabulary(["[PAD]", "[UNK]", "[START]", "[END]", "ein", "Über"])
    assert not is_lowercase_vocabulary(["[PAD]", "[UNK]", "[START]", "[END]", "##S"])
