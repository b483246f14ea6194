import os

import numpy as np
import pytest
import tensorflow as tf

from keras_transformer.data import RESERVED_TOKENS
from keras_transformer.data import WordPieceTokenizer
from keras_transformer.data import read_lines


def test_round_trip_on_multi30k_val(multi30k_dir, multi30k_tokenizer):
    tok = multi30k_tokenizer
    lines = []
    for lang in ("en", "de"):
        lines += read_lines(os.path.join(multi30k_dir, f"val.lc.norm.tok.{lang}"))
    ids = tok.tokenize(lines)
    out = [s.decode("utf-8") for s in tok.detokenize(ids).numpy()]
    has_unk = np.array([tok.unk_id in row for row in ids.to_list()])
    # A vocabulary learned on 3,000 pairs lacks a few rare characters; every
    # other sentence, umlauts and all, comes back exactly.
    assert has_unk.mean() < 0.01
    mismatched = [(a, b) for a, b, unk in zip(lines, out, has_unk) if not unk and a != b]
    assert mismatched == []
    assert sum(out[i] == lines[i] for i in range(len(lines))) >= 0.99 * len(lines)
    assert any("ä" in s or "ü" in s or "ö" in s for s in out)


def test_reserved_ids_and_subword_split():
    tok = WordPieceTokenizer.learn(["der mann fährt fahrrad"] * 20 + ["fahrräder"] * 10, vocab_size=100, min_count=5)
    assert tok.vocab[:4] == list(RESERVED_TOKENS)
    assert (tok.pad_id, tok.unk_id, tok.start_id, tok.end_id) == (0, 1, 2, 3)
    ids = tok.tokenize(tf.constant(["der mann fährt", "fahrräder"]))
    assert not np.isin(ids.flat_values.numpy(), [0, 2, 3]).any()
    pieces = tok.id_to_token(ids[0].numpy())
    assert "".join(p.removeprefix("##") for p in pieces) == "dermannfährt"
    assert tok.detokenize(ids).numpy().tolist() == [b"der mann f\xc3\xa4hrt", "fahrräder".encode()]


def test_unknown_character_makes_one_unk_per_word():
    tok = WordPieceTokenizer.learn(["a man rides a bike"] * 20, vocab_size=60, min_count=5)
    ids = tok.tokenize(tf.constant(["a ☃x man"]))[0].numpy().tolist()
    assert ids.count(tok.unk_id) == 1
    assert tok.detokenize(tf.ragged.constant([ids])).numpy()[0] == b"a [UNK] man"


def test_detokenize_drops_padding_start_and_end():
    tok = WordPieceTokenizer.learn(["a man rides a bike"] * 20, vocab_size=60, min_count=5)
    ids = tok.tokenize(tf.constant(["a man"]))[0].numpy().tolist()
    padded = tf.constant([[tok.start_id] + ids + [tok.end_id, 0, 0]])
    assert tok.detokenize(padded).numpy().tolist() == [b"a man"]


def test_save_load_round_trip(tmp_path, multi30k_tokenizer):
    path = str(tmp_path / "vocab.txt")
    multi30k_tokenizer.save(path)
    loaded = WordPieceTokenizer.load(path)
    assert loaded.vocab == multi30k_tokenizer.vocab
    text = tf.constant(["zwei junge männer stehen vor einem gebäude ."])
    np.testing.assert_array_equal(loaded.tokenize(text).to_tensor(), multi30k_tokenizer.tokenize(text).to_tensor())
    assert len(open(path, encoding="utf-8").read().splitlines()) == loaded.vocab_size


def test_bad_vocabularies():
    with pytest.raises(ValueError, match="must start with the reserved tokens"):
        WordPieceTokenizer(["a", "b"])
    with pytest.raises(ValueError, match="duplicate"):
        WordPieceTokenizer(list(RESERVED_TOKENS) + ["a", "a"])
    with pytest.raises(ValueError, match="no words"):
        WordPieceTokenizer.learn(["", "  "])


def test_tokenizes_inside_a_dataset_map(multi30k_tokenizer):
    texts = ["ein hund rennt .", "zwei kinder spielen im wasser ."]
    ds = tf.data.Dataset.from_tensor_slices(texts).batch(2).map(multi30k_tokenizer.tokenize)
    (ids,) = list(ds)
    assert multi30k_tokenizer.detokenize(ids).numpy().tolist() == [t.encode() for t in texts]
