import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import keras_transformer as kt
from keras_transformer.data import WordPieceTokenizer
from keras_transformer.decoding import Translator
from keras_transformer.export.saved_model import export_saved_model
from keras_transformer.export.warmup import WARMUP_FILE

TEXTS = ["a man rides a bike", "two dogs run", "a bike"]

FRESH = r"""
import json, sys
import tensorflow as tf
loaded = tf.saved_model.load(sys.argv[1])
out = loaded.signatures["serving_default"](text=tf.constant(json.loads(sys.argv[2])))
print(json.dumps({
    "translation": [t.decode() for t in out["translation"].numpy()],
    "log_prob": out["log_prob"].numpy().tolist(),
    "tensorflow_text_loaded": "tensorflow_text" in sys.modules,
    "keras_transformer_loaded": any(m.startswith("keras_transformer") for m in sys.modules),
}))
"""


ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Exported from the command line: a .keras file plus a training checkpoint with other weights."""
    tokenizer = WordPieceTokenizer.learn(["a man rides a bike", "two dogs run fast"] * 20, vocab_size=60, min_count=5)
    model = kt.Transformer(tokenizer.vocab_size, tokenizer.vocab_size, num_layers=1, d_model=16, num_heads=2,
                           d_ff=32, max_length=40)
    model.build()
    work = tmp_path_factory.mktemp("run")
    model.save(str(work / "model.keras"))
    for weight in model.weights:
        weight.assign(weight * 1.5)  # the checkpoint differs from the .keras file
    model.save_weights(str(work / "epoch-0002.weights.h5"))
    tokenizer.save(str(work / "vocab.txt"))
    base = str(tmp_path_factory.mktemp("models"))
    result = subprocess.run(
        [sys.executable, "-m", "keras_transformer.export", "export", "--model", str(work / "model.keras"),
         "--weights", str(work / "epoch-0002.weights.h5"), "--vocab", str(work / "vocab.txt"), "--base-dir", base,
         "--beam-size", "2", "--max-extra-length", "6", "--text-processing", "none",
         "--signatures", "serving_default, translate_ids,score , attention,translate"],  # (spaces allowed)
        capture_output=True, text=True, timeout=600, cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    path = os.path.join(base, "1")
    assert f"exported {path}" in result.stdout
    return model, tokenizer, base, path


def test_versions_count_up_and_failures_leave_nothing(exported, monkeypatch):
    from keras_transformer.export import warmup

    model, tokenizer, base, path = exported
    assert path == os.path.join(base, "1")
    assert os.path.isfile(os.path.join(path, "saved_model.pb"))
    with pytest.raises(FileExistsError):
        export_saved_model(model, tokenizer.vocab, base, version=1)
    with pytest.raises(ValueError, match="reserved tokens"):
        export_saved_model(model, ["not", "a", "vocabulary"], base)

    def fail(*args):
        raise OSError("disk full")

    monkeypatch.setattr(warmup, "write_warmup_requests", fail)
    with pytest.raises(OSError, match="disk full"):
        export_saved_model(model, tokenizer.vocab, base)  # fails after the SavedModel is written
    assert sorted(os.listdir(base)) == ["1"]


def test_an_export_is_readable_by_a_server_of_another_user(exported, tmp_path):
    # The version directory used to keep mkdtemp's 0700: TensorFlow Serving running as another
    # user could not read it. Every directory and file must be as a mkdir or cp -r makes it.
    import stat

    model, tokenizer, _, _ = exported
    old = os.umask(0o022)
    try:
        path = export_saved_model(model, tokenizer.vocab, str(tmp_path), text_processing="none", beam_size=1)
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o755
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            mode = stat.S_IMODE(os.stat(os.path.join(root, name)).st_mode)
            assert mode & 0o044 == 0o044, (os.path.join(root, name), oct(mode))


def test_fresh_process_without_tensorflow_text_matches_translator(exported):
    model, tokenizer, _, path = exported
    result = subprocess.run(
        [sys.executable, "-c", FRESH, path, json.dumps(TEXTS)], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert not out["tensorflow_text_loaded"] and not out["keras_transformer_loaded"]
    expected = Translator(model, tokenizer, beam_size=2, max_extra_length=6).translate(TEXTS)
    assert out["translation"] == expected
    assert all(np.isfinite(out["log_prob"])) and all(p <= 0 for p in out["log_prob"])


def test_signatures_and_bad_inputs(exported):
    _, tokenizer, _, path = exported
    loaded = tf.saved_model.load(path)
    assert set(loaded.signatures) == {"serving_default", "translate_ids", "score", "attention", "translate"}
    default = loaded.signatures["serving_default"]
    out = default(text=tf.constant(["", "a bike"]))
    assert out["translation"].shape == (2,) and out["log_prob"].dtype == tf.float32
    with pytest.raises(tf.errors.InvalidArgumentError, match="text: a string is not valid UTF-8"):
        default(text=tf.constant([b"\xff\xfe bike"]))
    with pytest.raises(tf.errors.InvalidArgumentError, match="target_text: a string is not valid UTF-8"):
        loaded.signatures["score"](text=tf.constant(["a"]), target_text=tf.constant([b"\xc3"]))
    assert default(text=tf.constant([], tf.string))["translation"].shape == (0,)
    with pytest.raises(tf.errors.InvalidArgumentError, match="more tokens than this model takes"):
        default(text=tf.constant([" ".join(["bike"] * 50)]))
    ids = loaded.signatures["translate_ids"](ids=tf.constant([[2, 5, 6, 3]], tf.int32))
    assert ids["ids"].dtype == tf.int32 and ids["log_prob"].shape == (1,)
    score = loaded.signatures["score"](text=tf.constant(TEXTS), target_text=tf.constant(TEXTS))["log_prob"]
    assert score.shape == (3,) and (score.numpy() < 0).all()
    attention = loaded.signatures["attention"](text=tf.constant(TEXTS))
    weights = attention["attention"].numpy()
    generated = attention["target_tokens"].numpy() != b""
    np.testing.assert_allclose(weights.sum(-1)[generated], 1.0, atol=1e-4)


def test_a_sentence_of_a_million_short_words_is_refused_before_it_costs_memory(exported):
    # The token limit was checked after the tokenizer, whose step builds [words, piece length]
    # string tensors: a 2 MB request of one-letter words cost most of a gigabyte before its
    # INVALID_ARGUMENT. Each word is at least one token, so the word count is checked first.
    # Peak memory is read in a fresh process, where the signature's own allocations show.
    _, _, _, path = exported
    script = (
        "import resource, sys, tensorflow as tf\n"
        "serve = tf.saved_model.load(sys.argv[1]).signatures['serving_default']\n"
        "serve(text=tf.constant(['a bike']))\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "try:\n"
        "    serve(text=tf.constant(['a ' * 1000000]))\n"
        "    print('served')\n"
        "except tf.errors.InvalidArgumentError as error:\n"
        "    print('refused', 'more tokens than this model takes' in error.message)\n"
        "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)\n"
    )
    result = subprocess.run([sys.executable, "-c", script, path], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    *said, grown_mb = result.stdout.split()
    assert said[-2:] == ["refused", "True"], result.stdout
    assert int(grown_mb) < 200, f"peak memory grew by {grown_mb} MB"


def _controls(n, **values):
    """The translate signature's control inputs for n sentences: the given values, else its defaults."""
    from keras_transformer.decoding.per_sentence import CONTROLS

    return {name: tf.constant(values.get(name, [default] * n), dtype) for name, (dtype, default) in CONTROLS.items()}


def test_translate_signature_takes_decoding_per_sentence(exported):
    model, tokenizer, _, path = exported
    loaded = tf.saved_model.load(path)
    translate = loaded.signatures["translate"]
    specs = translate.structured_input_signature[1]
    assert {k: (v.dtype.name, v.shape.as_list()) for k, v in specs.items()} == {
        "text": ("string", [None]), "beam_size": ("int32", [None]), "alpha": ("float32", [None]),
        "max_extra_length": ("int32", [None]), "num_return": ("int32", [None]), "temperature": ("float32", [None]),
        "top_k": ("int32", [None]), "top_p": ("float32", [None]), "seed": ("int64", [None]),
    }
    assert {k: v.shape.as_list() for k, v in translate.structured_outputs.items()} == {
        "translations": [None, 4], "log_probs": [None, 4]}  # 4: the export's max_num_return

    # The export's own settings (beam 2, alpha 0.6, 6 extra tokens) give serving_default's answer.
    n = len(TEXTS)
    out = translate(text=tf.constant(TEXTS), **_controls(n, beam_size=[2] * n, max_extra_length=[6] * n))
    default = loaded.signatures["serving_default"](text=tf.constant(TEXTS))
    assert [t.decode() for t in out["translations"].numpy()[:, 0]] == [t.decode() for t in
                                                                       default["translation"].numpy()]
    np.testing.assert_allclose(out["log_probs"].numpy()[:, 0], default["log_prob"].numpy(), atol=1e-5)
    assert (out["translations"].numpy()[:, 1:] == b"").all() and (out["log_probs"].numpy()[:, 1:] == -1e9).all()

    # One request, three kinds of decoding: each sentence as the Translator decodes it alone.
    rows = dict(beam_size=[3, 0, 1], num_return=[3, 1, 4], temperature=[0.0, 0.0, 1.0], top_k=[0, 0, 5],
                top_p=[1.0, 1.0, 0.9], seed=[0, 0, 77], alpha=[1.0, 0.6, 0.6], max_extra_length=[4, 6, 5])
    out = translate(text=tf.constant(TEXTS), **_controls(n, **rows))
    translator = Translator(model, tokenizer)
    for b, text in enumerate(TEXTS):
        settings = {name: values[b] for name, values in rows.items() if name != "num_return"}
        expected = translator.hypotheses([text], rows["num_return"][b], **settings)[0]
        got = [(t.decode(), float(p)) for t, p in zip(out["translations"].numpy()[b], out["log_probs"].numpy()[b])]
        assert [t for t, _ in got[: len(expected)]] == [t for t, _ in expected]
        np.testing.assert_allclose([p for _, p in got[: len(expected)]], [p for _, p in expected], atol=1e-4)
        assert all(t == "" and p == -1e9 for t, p in got[len(expected):])


def test_translate_refuses_a_control_out_of_the_exports_limits(exported):
    _, _, _, path = exported
    translate = tf.saved_model.load(path).signatures["translate"]
    for bad, message in ((dict(beam_size=[9]), "`beam_size` must be between 0 and 8"),
                         (dict(num_return=[5], beam_size=[8]), "`num_return` must be between 1 and 4"),
                         (dict(top_p=[0.0]), "`top_p` must be above 0")):
        with pytest.raises(tf.errors.InvalidArgumentError, match=message):
            translate(text=tf.constant(["a bike"]), **_controls(1, **bad))
    with pytest.raises(tf.errors.InvalidArgumentError, match="`seed` has 2 values for 1 sentences"):
        translate(text=tf.constant(["a bike"]), **_controls(1, seed=[1, 2]))
    empty = translate(text=tf.constant([], tf.string), **_controls(0))
    assert empty["translations"].shape == (0, 4)


def test_only_core_ops_and_warmup_records(exported):
    _, _, _, path = exported
    check = subprocess.run(
        [sys.executable, "-m", "keras_transformer.export", "check", path],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )
    assert check.returncode == 0, check.stdout + check.stderr[-2000:]
    assert "every op is registered in core TensorFlow" in check.stdout
    from tensorflow_serving.apis import prediction_log_pb2

    records = list(tf.data.TFRecordDataset(os.path.join(path, WARMUP_FILE)).as_numpy_iterator())
    assert records
    loaded = tf.saved_model.load(path)
    signatures = set()
    for record in records:
        request = prediction_log_pb2.PredictionLog.FromString(record).predict_log.request
        assert request.inputs["text"].dtype == tf.string.as_datatype_enum
        signatures.add(request.model_spec.signature_name)
        # Each record runs as it is: within the export's limits (warm-up that fails fails the load).
        inputs = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
        loaded.signatures[request.model_spec.signature_name](**{k: tf.constant(v) for k, v in inputs.items()})
        if request.model_spec.signature_name == "translate":
            kind = "sampled" if inputs["temperature"][0] > 0 else "beam"
            signatures.add(("translate", kind, int(inputs["beam_size"][0])))
    assert {"serving_default", "attention", ("translate", "beam", 2), ("translate", "sampled", 1)} <= signatures


def test_an_export_of_chosen_signatures_warms_up_only_those(exported, tmp_path):
    from tensorflow_serving.apis import prediction_log_pb2

    model, tokenizer, _, every = exported
    path = export_saved_model(model, tokenizer.vocab, str(tmp_path), text_processing="none",
                              signatures=("serving_default", "score"))
    loaded = tf.saved_model.load(path)
    assert set(loaded.signatures) == {"serving_default", "score"}
    # The other functions are not saved at all (they were, as the module's attributes: no smaller, no
    # faster to load): the graph without translate's and attention's decoding loops is a fraction.
    assert not hasattr(loaded, "translate") and not hasattr(loaded, "attention")
    size = os.path.getsize(os.path.join(path, "saved_model.pb"))
    assert size < 0.6 * os.path.getsize(os.path.join(every, "saved_model.pb"))
    records = tf.data.TFRecordDataset(os.path.join(path, WARMUP_FILE)).as_numpy_iterator()
    names = {prediction_log_pb2.PredictionLog.FromString(r).predict_log.request.model_spec.signature_name
             for r in records}
    assert names == {"serving_default"}  # score takes a target too: not warmed up, as before
    for bad in ((), ("serving_default", "beam"), ("score", "score")):
        with pytest.raises(ValueError, match="`signatures` must be some of"):
            export_saved_model(model, tokenizer.vocab, str(tmp_path), signatures=bad)
    assert sorted(os.listdir(tmp_path)) == ["1"]  # refused before anything was written


def test_the_command_line_refuses_unknown_signatures_before_loading_a_model(tmp_path, capsys):
    from keras_transformer.export.__main__ import main

    for bad, named in (("serving_default, beam", "'beam'"), ("score,score", "named twice"), ("", "''")):
        with pytest.raises(SystemExit) as exit:
            main(["export", "--model", str(tmp_path / "missing.keras"), "--vocab", str(tmp_path / "missing.txt"),
                  "--base-dir", str(tmp_path / "models"), "--signatures", bad])
        err = capsys.readouterr().err
        assert exit.value.code == 2 and "--signatures" in err and named in err, err
    assert not os.path.exists(tmp_path / "models")


def test_warmup_stays_within_the_limits_the_export_sets():
    from keras_transformer.export.warmup import translate_warmup_settings

    beam, sampled = translate_warmup_settings(beam_size=12, max_beam_size=3, max_num_return=1)
    assert beam["beam_size"] == 3 and sampled["num_return"] == 1
    beam, _ = translate_warmup_settings(beam_size=1, max_beam_size=1)
    assert beam["beam_size"] == 1  # no beam search allowed: the greedy path


def test_check_fails_on_an_op_outside_core_tensorflow_and_names_it(exported, tmp_path):
    """A SavedModel with a tensorflow-text op, and one whose second meta graph has an op no
    TensorFlow registers: each check fails (exit 1) and names the op and where it is."""
    import shutil

    import tensorflow_text as tf_text
    from tensorflow.core.protobuf import saved_model_pb2

    class Normalizer(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
        def normalize(self, text):
            return tf_text.normalize_utf8(text, "NFKC")

    module = Normalizer()
    text_dir = str(tmp_path / "with_tf_text")
    tf.saved_model.save(module, text_dir, signatures={"serving_default": module.normalize})
    two_dir = str(tmp_path / "two_graphs")
    shutil.copytree(exported[3], two_dir)
    proto = saved_model_pb2.SavedModel()
    with open(os.path.join(two_dir, "saved_model.pb"), "rb") as f:
        proto.ParseFromString(f.read())
    second = proto.meta_graphs.add()
    second.CopyFrom(proto.meta_graphs[0])
    second.meta_info_def.ClearField("tags")
    second.meta_info_def.tags.append("gpu")
    second.graph_def.node.add(name="made_up", op="MadeUpOpForTheCheck")
    with open(os.path.join(two_dir, "saved_model.pb"), "wb") as f:
        f.write(proto.SerializeToString())
    for path, op, where in ((text_dir, "NormalizeUTF8", ""), (two_dir, "MadeUpOpForTheCheck", "<graph 1 [gpu]>")):
        check = subprocess.run(
            [sys.executable, "-m", "keras_transformer.export", "check", path],
            capture_output=True, text=True, timeout=300, cwd=ROOT,
        )
        assert check.returncode == 1, check.stdout + check.stderr[-2000:]
        assert f"NOT IN CORE TENSORFLOW: {op}" in check.stdout and where in check.stdout, check.stdout


def test_raw_text_export_matches_translator_on_multi30k_val(
    multi30k_dir, multi30k_tokenizer, multi30k_train_slice, tmp_path
):
    """A model trained briefly on Multi30k, exported for raw text: the SavedModel and the
    in-memory Translator (same Moses-style processing) agree on raw val sentences."""
    import gzip

    from keras_transformer import data
    from keras_transformer import training

    tokenizer = multi30k_tokenizer
    model = kt.Transformer(tokenizer.vocab_size, tokenizer.vocab_size, num_layers=1, d_model=32, num_heads=2,
                           d_ff=64, dropout=0.0, max_length=96)
    training.compile_for_translation(model, warmup_steps=50, learning_rate_scale=2.0)
    pairs = data.tokenized_pairs(tokenizer, *multi30k_train_slice, max_length=40)
    model.fit(data.token_batches(pairs, 2048, 40, shuffle=False), epochs=2, verbose=0)
    path = export_saved_model(model, tokenizer.vocab, str(tmp_path), beam_size=2, max_extra_length=10)
    with gzip.open(os.path.join(multi30k_dir, "val.en.gz"), "rt", encoding="utf-8") as f:
        raw = [line.strip() for line in f][:64]
    out = tf.saved_model.load(path).signatures["serving_default"](text=tf.constant(raw))
    served = [t.decode() for t in out["translation"].numpy()]
    translator = Translator(model, tokenizer, beam_size=2, max_extra_length=10, text_processing="moses")
    expected = translator.translate(raw, batch_size=len(raw))
    # The Translator sorts sentences by length and the SavedModel keeps
    # their order, so rows are padded differently and round differently: on
    # a briefly trained model a near tie may rarely go the other way. Any
    # systematic difference (processing, detokenization, decoding) changes
    # far more than two of 64.
    mismatches = [(a, b) for a, b in zip(served, expected) if a != b]
    assert len(mismatches) <= 2, mismatches[:5]
    assert all(t[:1] == t[:1].upper() for t in served)  # detokenized: sentence case


def test_saved_model_cli_lists_the_signatures(exported):
    _, _, _, path = exported
    cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    result = subprocess.run([cli, "show", "--dir", path, "--all"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    for name in ("serving_default", "translate_ids", "score", "attention", "translate"):
        assert f"signature_def['{name}']" in result.stdout
    assert "inputs['text'] tensor_info:\n        dtype: DT_STRING\n        shape: (-1)" in result.stdout
    assert "outputs['log_prob'] tensor_info:\n        dtype: DT_FLOAT" in result.stdout


@pytest.mark.parametrize("cased", [True, False])
def test_raw_text_keeps_case_exactly_when_the_vocabulary_is_cased(cased, tmp_path):
    """A model trained on cased text must see the request's capitals ("Man", not "man", which it
    may not know); one trained on lowercased text must see them lowercased. The export infers which
    from the vocabulary, and `lowercase=` overrides it."""
    words = ["A", "Man", "rides", "a", "bike", "."]
    corpus = [" ".join(words)] * 20 if cased else [" ".join(words).lower()] * 20
    tokenizer = WordPieceTokenizer.learn(corpus, vocab_size=60, min_count=5)
    model = kt.Transformer(tokenizer.vocab_size, tokenizer.vocab_size, num_layers=1, d_model=16, num_heads=2,
                           d_ff=32, max_length=40)
    model.build()
    path = export_saved_model(model, tokenizer.vocab, str(tmp_path), beam_size=1, max_extra_length=2)
    attention = tf.saved_model.load(path).signatures["attention"]
    tokens = [t.decode() for t in attention(text=tf.constant(["A Man rides."]))["source_tokens"].numpy()[0]]
    expected = ["A", "Man", "rides", "."] if cased else ["a", "man", "rides", "."]
    assert tokens == ["[START]", *expected, "[END]"]
    forced = export_saved_model(model, tokenizer.vocab, str(tmp_path), beam_size=1, max_extra_length=2, lowercase=True)
    tokens = tf.saved_model.load(forced).signatures["attention"](text=tf.constant(["A Man rides."]))["source_tokens"]
    assert [t.decode() for t in tokens.numpy()[0]][1:3] == (["a", "[UNK]"] if cased else ["a", "man"])
    translator = Translator(model, tokenizer, beam_size=1, text_processing="moses")
    assert translator.lowercase is not cased
    ids = translator.encode_sources(["A Man rides."]).numpy()[0]
    assert tokenizer.id_to_token(ids[1:-1]) == expected


def test_a_model_with_the_variants_exports_and_translates_as_in_memory(tmp_path):
    # Rotary embeddings in the decoder's self-attention, grouped-query attention, pre-norm RMSNorm and
    # SwiGLU (the variants recipe's blocks) through the SavedModel's decoding loop with its cache: each
    # sentence's translation and log-probability are the in-memory Translator's, and only core ops.
    tokenizer = WordPieceTokenizer.learn(["a man rides a bike", "two dogs run fast"] * 20, vocab_size=60, min_count=5)
    model = kt.Transformer(tokenizer.vocab_size, tokenizer.vocab_size, num_layers=2, d_model=16, num_heads=4,
                           d_ff=24, max_length=40, norm_first=True, norm="rms", feed_forward="swiglu",
                           position_embedding="rotary", num_key_value_heads=2)
    model.build()
    path = export_saved_model(model, tokenizer.vocab, str(tmp_path), beam_size=3, max_extra_length=5,
                              text_processing="none", signatures=("serving_default", "score"))
    out = tf.saved_model.load(path).signatures["serving_default"](text=tf.constant(TEXTS))
    expected = Translator(model, tokenizer, beam_size=3, max_extra_length=5).hypotheses(TEXTS)
    assert [t.decode() for t in out["translation"].numpy()] == [row[0][0] for row in expected]
    np.testing.assert_allclose(out["log_prob"].numpy(), [row[0][1] for row in expected], atol=1e-4)
    check = subprocess.run([sys.executable, "-m", "keras_transformer.export", "check", path],
                           capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert check.returncode == 0, check.stdout + check.stderr[-2000:]
