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
    suffix = tok.vocab.index("##s") if "##s" in tok.vocab else tok.vocab.index("##r")
    ids = tf.constant([[2, 5, 6, 3, 0], [0, 0, 0, 0, 0], [7, 1, 8, 3, 9], [2, suffix, 5, suffix, 3], [suffix, 0, 0, 0, 0]])
    np.testing.assert_array_equal(core.detokenize(ids).numpy(), tok.detokenize(ids).numpy())
