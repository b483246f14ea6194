"""Fine-tuning helpers: vocabulary checks, embedding remapping, freezing."""

import numpy as np
import pytest

import keras_transformer as kt
from keras_transformer import training
from keras_transformer.data import WordPieceTokenizer
from keras_transformer.training import finetune

TEXTS = ["a man rides a bike", "two dogs run", "a dog runs fast"] * 10


@pytest.fixture(scope="module")
def tokenizer():
    return WordPieceTokenizer.learn(TEXTS, vocab_size=80, min_count=1)


def test_vocabulary_report_counts_unknown_tokens(tokenizer):
    report = finetune.vocabulary_report(tokenizer, ["a man", "a ¤¤ bike ¤"])
    # "¤¤" and "¤" have no pieces at all: one [UNK] each.
    assert report["unknown_tokens"] == 2 and report["words"] == 6
    assert report["unknown_rate"] == pytest.approx(2 / report["tokens"])
    assert report["unknown_words"] == ["¤¤", "¤"] or report["unknown_words"] == ["¤", "¤¤"]
    assert finetune.check_vocabulary(tokenizer, TEXTS)["unknown_rate"] == 0.0
    with pytest.raises(ValueError, match=r"% of its tokens are \[UNK\] \(limit 1.0%\).*'¤'"):
        finetune.check_vocabulary(tokenizer, ["¤ ¤ a"], max_unknown_rate=0.01)


def test_model_vocabulary_mismatch_is_refused(tokenizer):
    model = kt.Transformer(tokenizer.vocab_size + 1, tokenizer.vocab_size + 1, num_layers=1, d_model=8,
                           num_heads=2, d_ff=16)
    with pytest.raises(ValueError, match="not the pair it was trained with"):
        finetune.check_model_vocabulary(model, tokenizer)


def test_remapped_model_gives_the_same_logits_for_shared_tokens(tokenizer):
    old_vocab = tokenizer.vocab
    model = kt.Transformer(len(old_vocab), len(old_vocab), num_layers=1, d_model=16, num_heads=2, d_ff=32,
                           dropout=0.0)
    model.build()
    rng = np.random.default_rng(0)
    body = list(old_vocab[4:])
    rng.shuffle(body)
    new_vocab = list(old_vocab[:4]) + ["new1"] + body[: len(body) - 5] + ["new2", "new3"]
    remapped, carried = finetune.remap_embeddings(model, old_vocab, new_vocab)
    assert carried == len(new_vocab) - 3
    old_ids = {t: i for i, t in enumerate(old_vocab)}
    shared = [t for t in new_vocab if t in old_ids]
    words = [t for t in shared[4:10]]
    source_old = np.array([[2] + [old_ids[w] for w in words] + [3]])
    source_new = np.array([[2] + [new_vocab.index(w) for w in words] + [3]])
    old_logits = model({"source": source_old, "target": source_old[:, :4]}).numpy()
    new_logits = remapped({"source": source_new, "target": source_new[:, :4]}).numpy()
    columns_new = [new_vocab.index(t) for t in shared]
    columns_old = [old_ids[t] for t in shared]
    np.testing.assert_allclose(new_logits[..., columns_new], old_logits[..., columns_old], atol=1e-5)


def test_frozen_weights_do_not_move(tokenizer):
    model = kt.Transformer(tokenizer.vocab_size, tokenizer.vocab_size, num_layers=2, d_model=16, num_heads=2,
                           d_ff=32, dropout=0.0)
    model.build()
    frozen = finetune.freeze(model, embeddings=True, encoder_layers=1)
    assert frozen == ["source_embedding", f"encoder/{model.encoder.stack[0].name}"]
    training.compile_for_translation(model, warmup_steps=10)
    before = {w.path: w.numpy().copy() for w in model.weights}
    ids = np.random.default_rng(0).integers(4, tokenizer.vocab_size, size=(8, 6))
    model.fit({"source": ids, "target": ids[:, :-1]}, ids[:, 1:], epochs=2, verbose=0)
    moved = {w.path for w in model.weights if not np.array_equal(before[w.path], w.numpy())}
    frozen_paths = {w.path for w in model.source_embedding.weights + model.encoder.stack[0].weights}
    assert not moved & frozen_paths
    assert {w.path for w in model.encoder.stack[1].weights} <= moved
    with pytest.raises(ValueError, match="has 2 layers; cannot freeze the first 3"):
        finetune.freeze(model, decoder_layers=3)


def test_a_fine_tuned_model_exports_like_a_fresh_one(tokenizer, tmp_path):
    """Remapped to a larger vocabulary, some layers frozen, trained a little: the export's
    translations equal the in-memory Translator's."""
    import tensorflow as tf

    from keras_transformer.decoding import Translator
    from keras_transformer.export.saved_model import export_saved_model

    model = kt.Transformer(tokenizer.vocab_size, tokenizer.vocab_size, num_layers=1, d_model=16, num_heads=2,
                           d_ff=32, dropout=0.0, max_length=40)
    model.build()
    vocab = list(tokenizer.vocab) + ["bikes", "##es"]
    model, _ = finetune.remap_embeddings(model, tokenizer.vocab, vocab)
    tokenizer = WordPieceTokenizer(vocab)
    finetune.freeze(model, encoder_layers=1)
    training.compile_for_translation(model, warmup_steps=10)
    ids = np.random.default_rng(1).integers(4, len(vocab), size=(16, 6))
    model.fit({"source": ids, "target": ids[:, :-1]}, ids[:, 1:], epochs=1, verbose=0)
    path = export_saved_model(model, vocab, str(tmp_path), beam_size=2, max_extra_length=5, text_processing="none")
    texts = ["a man rides two bikes", "dogs run"]
    served = tf.saved_model.load(path).signatures["serving_default"](text=tf.constant(texts))["translation"]
    expected = Translator(model, tokenizer, beam_size=2, max_extra_length=5).translate(texts, batch_size=2)
    assert [t.decode() for t in served.numpy()] == expected
