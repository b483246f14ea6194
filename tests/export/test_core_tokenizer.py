import os

import numpy as np
import tensorflow as tf

from keras_transformer.data import WordPieceTokenizer
from keras_transformer.data import read_lines
from keras_transformer.export.core_tokenizer import CoreWordPiece


def test_same_ids_as_tensorflow_text_on_multi30k_val(multi30k_dir, multi30k_tokenizer):
    lines = []
    for lang in ("en", "de"):
        lines += read_lines(os.path.join(multi30k_dir, f"val.lc.norm.tok.{lang}"))
    core = CoreWordPiece(multi30k_tokenizer.vocab)
    expected = multi30k_tokenizer.tokenize(lines)
    got = tf.function(core.tokenize)(tf.constant(lines))
    assert got.to_list() == expected.to_list()
    np.testing.assert_array_equal(
        tf.function(core.detokenize)(expected.to_tensor()).numpy(), multi30k_tokenizer.detokenize(expected).numpy()
    )


def test_same_ids_on_awkward_text():
    tok = WordPieceTokenizer.learn(["der mann fährt fahrrad ."] * 20 + ["fahrräder !"] * 10, vocab_size=80, min_count=5)
    core = CoreWordPiece(tok.vocab)
    texts = [
        "", "   ", "der  mann\tfährt", "fahrräderfahrrad", "☃ mann", "x" * 150, "mann" * 30,
        "über", b"\xff\xfe mann".decode("latin-1"), "##", "fahr ##rad",
    ]
    assert core.tokenize(tf.constant(texts)).to_list() == tok.tokenize(tf.constant(texts)).to_list()
    only_long = ["x" * 150, "y" * 101 + " " + "z" * 400, ""]  # no word within the limit
    assert core.tokenize(tf.constant(only_long)).to_list() == tok.tokenize(tf.constant(only_long)).to_list()
    suffix = tok.vocab.index("##s") if "##s" in tok.vocab else tok.vocab.index("##r")
    ids = tf.constant(
        [[2, 5, 6, 3, 0], [0, 0, 0, 0, 0], [7, 1, 8, 3, 9], [2, suffix, 5, suffix, 3], [suffix, 0, 0, 0, 0]]
    )
    np.testing.assert_array_equal(core.detokenize(ids).numpy(), tok.detokenize(ids).numpy())


def test_text_never_yields_reserved_ids():
    # With text_processing="none" the export passes user text to the tokenizer as it is: a word
    # written "[END]" must not end the source early, nor "[PAD]" hide words after it.
    tok = WordPieceTokenizer.learn(["a man rides a bike"] * 20, vocab_size=60, min_count=5)
    core = CoreWordPiece(tok.vocab)
    texts = ["[PAD] a [START] man [END] rides [UNK]", "[END]a a[END]", "[[END]]"]
    for ids in (core.tokenize(tf.constant(texts)), tok.tokenize(tf.constant(texts))):
        flat = ids.flat_values.numpy()
        assert not np.isin(flat, [0, 2, 3]).any(), ids.to_list()
        assert ids.to_list()[0] == [1, tok.vocab.index("a"), 1, tok.vocab.index("man"), 1, tok.vocab.index("rides"), 1]
    assert core.tokenize(tf.constant(texts)).to_list() == tok.tokenize(tf.constant(texts)).to_list()


def test_an_over_long_word_costs_no_memory(tmp_path):
    # An over-long word becomes one [UNK] at once, so no buffer may grow with
    # its size: 3,000 one-letter words beside one 100,000-byte word once made
    # a [3001, 100000] int32 piece buffer (1.2 GB). Peak memory is read in a
    # fresh process, where the tokenizer's own allocations show.
    import subprocess
    import sys

    script = (
        "import resource, sys, tensorflow as tf\n"
        "from keras_transformer.data import WordPieceTokenizer\n"
        "from keras_transformer.export.core_tokenizer import CoreWordPiece\n"
        "tok = WordPieceTokenizer.learn(['a man rides a bike .'] * 20, vocab_size=60, min_count=2)\n"
        "core = CoreWordPiece(tok.vocab)\n"
        "tokenize = tf.function(core.tokenize)\n"
        "tokenize(tf.constant(['a man']))\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "ids = tokenize(tf.constant(['a ' * 3000 + 'x' * 100000]))\n"
        "after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "row = ids.to_list()[0]\n"
        "print(len(row), row[-1] == tok.unk_id, row[0] == tok.tokenize(['a']).to_list()[0][0], "
        "(after - before) // 1024)\n"
    )
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    result = subprocess.run([sys.executable, "-c", script], cwd=root, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    count, last_is_unk, first_is_a, grown_mb = result.stdout.split()[-4:]
    assert (count, last_is_unk, first_is_a) == ("3001", "True", "True")
    assert int(grown_mb) < 100, f"peak memory grew by {grown_mb} MB"
