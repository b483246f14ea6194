"""The Multi30k scripts: the cased recipe's text, its vocabulary guard, and scoring an export."""

import argparse
import os
import sys

import pytest
import tensorflow as tf

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "examples"))

import evaluate_export  # noqa: E402
import train_multi30k  # noqa: E402

import keras_transformer as kt  # noqa: E402
from keras_transformer.data import WordPieceTokenizer  # noqa: E402
from keras_transformer.export.saved_model import export_saved_model  # noqa: E402


def _args(data_dir, run_dir="unused", cased=False):
    return argparse.Namespace(data_dir=data_dir, run_dir=str(run_dir), cased=cased, source_lang="en",
                              target_lang="de", vocab_size=200)


def test_cased_recipe_reads_the_raw_text_tokenized_with_its_case(multi30k_dir):
    lowercased = train_multi30k.read_split(_args(multi30k_dir), "val")
    cased = train_multi30k.read_split(_args(multi30k_dir, cased=True), "val")
    assert cased[1][0].startswith("Eine Gruppe von Männern") and lowercased[1][0].startswith("eine gruppe von männern")
    for side in (0, 1):
        same = sum(c.lower() == l.strip() for c, l in zip(cased[side], lowercased[side]))
        assert same >= 0.99 * len(cased[side]), same


def test_a_run_directory_refuses_a_vocabulary_of_the_other_case(tmp_path):
    lower, cased = tmp_path / "lower", tmp_path / "cased"
    for run, text in ((lower, "a man rides a bike"), (cased, "A Man rides a Bike")):
        run.mkdir()
        WordPieceTokenizer.learn([text] * 20, vocab_size=60, min_count=5).save(str(run / "vocab.txt"))
    assert train_multi30k.load_tokenizer(_args("x", lower), [], []).vocab_size > 4
    assert train_multi30k.load_tokenizer(_args("x", cased, cased=True), [], []).vocab_size > 4
    with pytest.raises(SystemExit, match="learned from lowercased text, but this run is cased"):
        train_multi30k.load_tokenizer(_args("x", lower, cased=True), [], [])
    with pytest.raises(SystemExit, match="learned from cased text, but this run is lowercased"):
        train_multi30k.load_tokenizer(_args("x", cased), [], [])


def test_export_scores_against_hand_made_references():
    # The lowercased references were lowercased, then tokenized: "auf. beide" keeps its period
    # (as val.lc.norm.tok.de does for "...auf. Beide..."), and "&quot;" stands for a quote.
    translations = ['Zwei Männer treten auf. Beide spielen "Gitarre".', "Ein Hund rennt."]
    tok = ["zwei männer treten auf. beide spielen &quot; gitarre &quot; .", "ein hund rennt ."]
    scores = evaluate_export.score(translations, translations, tok)
    assert scores == {"bleu": pytest.approx(100), "bleu_uncased": pytest.approx(100), "bleu_tok": pytest.approx(100)}
    lowered = evaluate_export.score([t.lower() for t in translations], translations, tok)
    assert lowered["bleu"] < 60 and lowered["bleu_uncased"] == pytest.approx(100)
    assert lowered["bleu_tok"] == pytest.approx(100)


def test_evaluate_export_scores_what_serving_default_returns(tmp_path):
    tokenizer = WordPieceTokenizer.learn(["A man rides a bike .", "Two dogs run fast ."] * 20, vocab_size=60, min_count=5)
    model = kt.Transformer(tokenizer.vocab_size, tokenizer.vocab_size, num_layers=1, d_model=16, num_heads=2,
                           d_ff=32, max_length=40)
    model.build()
    path = export_saved_model(model, tokenizer.vocab, str(tmp_path / "models"), beam_size=2, max_extra_length=8)
    sources = ["A man rides a bike.", "Two dogs run fast.", "A dog rides.", "Two men run."]
    served = evaluate_export.translate(path, sources, batch_size=3)
    direct = tf.saved_model.load(path).signatures["serving_default"](text=tf.constant(sources))["translation"]
    assert served == [t.decode() for t in direct.numpy()]
    assert sum(len(t.split()) >= 4 for t in served) >= 2, served  # enough 4-grams for BLEU to mean something
    files = {}
    tokenized = evaluate_export.moses_tokenize(tf.constant(served), "de").numpy()
    contents = {
        "src": sources, "ref": served, "upper": [t.upper() for t in served], "tok": [t.decode() for t in tokenized],
    }
    for name, lines in contents.items():
        files[name] = tmp_path / f"{name}.txt"
        files[name].write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    same = evaluate_export.main([path, "--source", str(files["src"]), "--reference", str(files["ref"]),
                                 "--tok-reference", str(files["tok"]), "--output", str(tmp_path / "out.txt")])
    assert same["bleu"] == pytest.approx(100) and same["bleu_tok"] == pytest.approx(100)
    assert (tmp_path / "out.txt").read_text(encoding="utf-8").splitlines() == served
    upper = evaluate_export.main([path, "--source", str(files["src"]), "--reference", str(files["upper"])])
    assert upper["bleu"] < 50 and upper["bleu_uncased"] == pytest.approx(100)  # case counts, and only case
    (tmp_path / "short.txt").write_text("one\ntwo\n", encoding="utf-8")
    with pytest.raises(SystemExit):  # argparse's error: --reference has 2 lines but --source has 4
        evaluate_export.main([path, "--source", str(files["src"]), "--reference", str(tmp_path / "short.txt")])
