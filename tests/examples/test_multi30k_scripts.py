"""The Multi30k scripts: the cased recipe's text, its vocabulary guard, and scoring an export."""

import argparse
import json
import os
import re

import pytest
import tensorflow as tf

import keras_transformer as kt
from keras_transformer.data import WordPieceTokenizer
from keras_transformer.export.saved_model import export_saved_model
from keras_transformer.recipes import evaluate_export
from keras_transformer.recipes import multi30k as train_multi30k

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _args(data_dir, run_dir="unused", cased=False):
    return argparse.Namespace(data_dir=data_dir, run_dir=str(run_dir), cased=cased, source_lang="en",
                              target_lang="de", vocab_size=200)


def test_cased_recipe_reads_the_raw_text_tokenized_with_its_case(multi30k_dir):
    lowercased = train_multi30k.read_split(_args(multi30k_dir), "val")
    cased = train_multi30k.read_split(_args(multi30k_dir, cased=True), "val")
    assert cased[1][0].startswith("Eine Gruppe von Männern") and lowercased[1][0].startswith("eine gruppe von männern")
    for side in (0, 1):
        same = sum(c.lower() == lowered.strip() for c, lowered in zip(cased[side], lowercased[side]))
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


RECIPE = os.path.join(ROOT, "keras_transformer", "recipes", "multi30k_en_de.json")


def test_the_recipe_file_sets_the_flags_and_a_flag_beside_it_wins():
    args = train_multi30k.parse_args(["--recipe", RECIPE])
    assert (args.tokens_per_batch, args.warmup_steps, args.lr_scale, args.schedule) == (2048, 1400, 1.1, "linear")
    assert args.mixed_precision is True and args.average_last == 5 and args.dropout == 0.1
    args = train_multi30k.parse_args(["--lr-scale", "1.3", "--recipe", RECIPE, "--cased", "--no-mixed-precision"])
    assert args.lr_scale == 1.3 and args.warmup_steps == 1400 and args.cased and args.mixed_precision is False
    assert vars(train_multi30k.parse_args([])) == vars(train_multi30k.parse_args(["--recipe", RECIPE]))  # the default


def test_the_variants_recipe_differs_from_the_papers_only_in_the_blocks():
    variants = os.path.join(ROOT, "keras_transformer", "recipes", "multi30k_en_de_variants.json")
    args, paper = vars(train_multi30k.parse_args(["--recipe", variants])), vars(train_multi30k.parse_args([]))
    changed = {key: args[key] for key in args if args[key] != paper[key]}
    assert changed == {
        "recipe": variants, "norm_first": True, "norm": "rms", "feed_forward": "swiglu", "d_ff": 172,
        "position_embedding": "rotary",
    }


@pytest.mark.parametrize("recipe, message", [
    ({"lr_sclae": 1.1}, r"unknown settings \['lr_sclae'\]"),
    ({"warmup_steps": "1400"}, "'warmup_steps' must be int, got '1400'"),
    ({"warmup_steps": 1400.5}, "'warmup_steps' must be int"),
    ({"lr_scale": True}, "'lr_scale' must be float, got True"),
    ({"lr_scale": float("nan")}, "'lr_scale' must be float, got nan"),
    ({"mixed_precision": 1}, "'mixed_precision' must be true or false"),
    ({"schedule": "cosine"}, "'schedule' must be one of"),
    ([1, 2], "expected a JSON object"),
])
def test_a_bad_recipe_is_refused_naming_the_setting(tmp_path, capsys, recipe, message):
    path = tmp_path / "recipe.json"
    path.write_text(json.dumps(recipe))
    with pytest.raises(SystemExit):
        train_multi30k.parse_args(["--recipe", str(path)])
    assert re.search(message, capsys.readouterr().err)


def test_the_docs_quote_the_recipe_file_as_it_is():
    # docs/training.md shows the recipe; the quoted block must be the file's settings.
    text = open(os.path.join(ROOT, "docs", "training.md"), encoding="utf-8").read()
    quoted = re.search(r"```json\n(.*?)```", text, re.S)
    assert quoted, "docs/training.md has no ```json block quoting the recipe"
    assert json.loads(quoted.group(1)) == json.load(open(RECIPE, encoding="utf-8"))


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
    tokenizer = WordPieceTokenizer.learn(
        ["A man rides a bike .", "Two dogs run fast ."] * 20, vocab_size=60, min_count=5
    )
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
    argv = [path, "--source", str(files["src"]), "--reference", str(files["ref"]), "--tok-reference",
            str(files["tok"]), "--output", str(tmp_path / "out.txt")]
    same = evaluate_export.evaluate(argv)
    assert same["bleu"] == pytest.approx(100) and same["bleu_tok"] == pytest.approx(100)
    assert (tmp_path / "out.txt").read_text(encoding="utf-8").splitlines() == served
    assert evaluate_export.main(argv) == 0  # the console script's exit status
    upper = evaluate_export.evaluate([path, "--source", str(files["src"]), "--reference", str(files["upper"])])
    assert upper["bleu"] < 50 and upper["bleu_uncased"] == pytest.approx(100)  # case counts, and only case
    (tmp_path / "short.txt").write_text("one\ntwo\n", encoding="utf-8")
    with pytest.raises(SystemExit):  # argparse's error: --reference has 2 lines but --source has 4
        evaluate_export.evaluate([path, "--source", str(files["src"]), "--reference", str(tmp_path / "short.txt")])


def test_a_recipe_int_for_a_float_reads_as_the_float(tmp_path):
    path = tmp_path / "recipe.json"
    path.write_text(json.dumps({"lr_scale": 2, "minutes": 5}))
    args = train_multi30k.parse_args(["--recipe", str(path)])
    assert isinstance(args.lr_scale, float) and args.lr_scale == 2.0 and args.minutes == 5.0
