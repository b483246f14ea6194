import numpy as np
import tensorflow as tf

import keras_transformer as kt
from keras_transformer.data import WordPieceTokenizer
from keras_transformer.decoding import Translator
from keras_transformer.decoding import greedy_decode

START, END = 2, 3


def _uncached_greedy(model, source, max_length):
    """Reference: re-run the whole decoder over the whole prefix every step."""
    target = np.full((source.shape[0], 1), START)
    done = np.zeros(source.shape[0], bool)
    out = []
    for _ in range(max_length):
        logits = model({"source": source, "target": target}).numpy()[:, -1]
        logits[:, [0, START]] = -np.inf  # padding and [START] are never generated
        token = np.where(done, 0, logits.argmax(-1))
        done |= token == END
        out.append(token)
        target = np.concatenate([target, np.where(token == 0, END, token)[:, None]], axis=1)
        if done.all():
            break
    out = np.stack(out, axis=1)
    return np.pad(out, [(0, 0), (0, max_length - out.shape[1])])


def test_cached_greedy_equals_full_recompute():
    model = kt.Transformer(30, 30, num_layers=2, d_model=32, num_heads=4, d_ff=64, dropout=0.0)
    model.build()
    rng = np.random.default_rng(0)
    source = rng.integers(4, 30, size=(4, 7))
    source[1, 5:] = 0
    source[3, 3:] = 0
    cached = tf.function(lambda s: greedy_decode(model, s, 12))(tf.constant(source, tf.int32)).numpy()
    np.testing.assert_array_equal(cached, _uncached_greedy(model, source, 12))
    uncached = greedy_decode(model, source, 12, use_cache=False).numpy()
    np.testing.assert_array_equal(cached, uncached)


def test_translator_keeps_order_and_ignores_batch_company():
    tokenizer = WordPieceTokenizer.learn(["a b c d e f g h"] * 20, vocab_size=40, min_count=5)
    model = kt.Transformer(tokenizer.vocab_size, tokenizer.vocab_size, num_layers=1, d_model=16, num_heads=2,
                           d_ff=32, max_length=64)
    translator = Translator(model, tokenizer, max_extra_length=5)
    texts = ["a b c d e f", "g", "h a", "b c d"]
    together = translator.translate(texts, batch_size=3)
    alone = [translator.translate([t])[0] for t in texts]
    assert together == alone
    assert translator.translate([]) == []
    for beam_size in (1, 4):
        plain = Translator(model, tokenizer, beam_size=beam_size, max_extra_length=5).translate(texts)
        compiled = Translator(model, tokenizer, beam_size=beam_size, max_extra_length=5, jit_compile=True)
        assert compiled.translate(texts, batch_size=3) == plain


def test_bad_inputs_give_clear_errors_or_empty_results():
    import pytest

    tokenizer = WordPieceTokenizer.learn(["a b c"] * 20, vocab_size=40, min_count=5)
    model = kt.Transformer(tokenizer.vocab_size, tokenizer.vocab_size, num_layers=1, d_model=16, num_heads=2,
                           d_ff=32, max_length=12)
    translator = Translator(model, tokenizer, beam_size=2, max_extra_length=4)
    assert translator.translate([]) == []
    assert len(translator.translate([""])) == 1
    with pytest.raises(ValueError, match="Sentence 1 has 11 tokens; this model translates at most 10"):
        translator.translate(["a", " ".join(["b"] * 11)])
    with pytest.raises(ValueError, match="max_length"):
        greedy_decode(model, tf.constant([[2, 5, 3]]), 50)
    empty = greedy_decode(model, tf.zeros([0, 3], tf.int32), 5)
    assert empty.shape == (0, 5)
