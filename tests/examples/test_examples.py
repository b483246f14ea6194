"""The example models built from the library's layers: the encoder-only
classifier, the decoder-only language model and the attention plot."""

import os
import struct
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "examples"))

import classify_language  # noqa: E402
import language_model  # noqa: E402
import plot_attention  # noqa: E402

import keras_transformer as kt  # noqa: E402
from keras_transformer.data import WordPieceTokenizer  # noqa: E402

START, END = WordPieceTokenizer.start_id, WordPieceTokenizer.end_id
TINY_VOCAB = ["[PAD]", "[UNK]", "[START]", "[END]", "a", "man", "rides", "bike", ".", "ein", "mann", "fährt"]


def _png_size(path):
    with open(path, "rb") as f:
        header = f.read(24)
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", header[16:24])


# -- classify_language ---------------------------------------------------------


def test_classifier_output_ignores_padding():
    model = classify_language.build_classifier(vocab_size=30, num_layers=2, d_model=16, num_heads=2, d_ff=32)
    short = model.predict(np.array([[5, 6, 7]]), verbose=0)
    padded = model.predict(np.array([[5, 6, 7, 0, 0, 0, 0], [9, 8, 7, 6, 5, 4, 3]]), verbose=0)
    np.testing.assert_allclose(padded[0], short[0], atol=1e-6)
    np.testing.assert_allclose(short.sum(), 1.0, atol=1e-6)
    # A real token where the padding was does change the output.
    longer = model.predict(np.array([[5, 6, 7, 8]]), verbose=0)
    assert np.abs(longer - short).max() > 1e-4


def test_classifier_data_labels_each_language(multi30k_dir):
    texts, labels = classify_language.load_split(multi30k_dir, "val", limit=4)
    assert len(texts) == 12
    np.testing.assert_array_equal(labels, np.repeat([0, 1, 2], 4))
    assert texts[4].startswith("eine gruppe") and texts[8].startswith("un groupe")
    tokenizer = WordPieceTokenizer.learn(texts, vocab_size=200, min_count=1)
    ids = classify_language.encode(tokenizer, texts, max_length=5)
    batches = list(classify_language.make_dataset(ids, labels, batch_size=5, shuffle=False))
    assert [x.shape[0] for x, _ in batches] == [5, 5, 2]
    assert max(x.shape[1] for x, _ in batches) == 5
    np.testing.assert_array_equal(np.concatenate([y for _, y in batches]), labels)


# -- language_model ------------------------------------------------------------


def _random_language_model(vocab_size=40, max_length=20):
    return language_model.build_language_model(
        vocab_size, num_layers=2, d_model=32, num_heads=4, d_ff=64, dropout=0.0, max_length=max_length
    )


def test_cached_generation_equals_uncached_token_for_token():
    model = _random_language_model()
    prompt = np.array([[START, 5, 6], [START, 7, 8], [START, 30, 9]], np.int32)
    cached = tf.function(lambda p: language_model.generate(model, p, 20))(tf.constant(prompt)).numpy()
    uncached = language_model.generate_uncached(model, prompt, 20)
    np.testing.assert_array_equal(cached, uncached)
    np.testing.assert_array_equal(cached[:, :3], prompt)
    assert (cached[:, 3] != 0).all()  # generation did happen


def _context_sensitive_language_model():
    """Random weights large enough that greedy output depends on the whole
    context (at the default scale a random model mostly repeats its input)."""
    model = _random_language_model()
    rng = np.random.default_rng(0)
    model.set_weights([rng.normal(0, 0.5, w.shape).astype("float32") if w.ndim == 2 else w
                       for w in model.get_weights()])
    return model


def test_padded_cached_steps_give_each_rows_full_pass_logits():
    model = _random_language_model()
    rows = [[START, 5, 6, 7, 8, 9], [START, 30, 11], [START, 7, 8, 9, 10]]
    prompt_length, extra = 3, 3  # prefill 3 slots (padded), then 3 single-token steps
    lengths = np.array([3, 1, 2])  # each row's prompt length
    prompts = [r[:n] for r, n in zip(rows, lengths)]
    padded = tf.constant([p + [0] * (prompt_length - len(p)) for p in prompts], tf.int32)
    cache_length = prompt_length + extra
    slots = tf.pad(padded != 0, [[0, 0], [0, extra]])
    cache = language_model.init_cache(model, 3, cache_length)
    prefill, cache = language_model.decode_step(model, padded, cache, 0, slots=slots)
    for b, row in enumerate(rows):
        np.testing.assert_allclose(prefill[b, : lengths[b]], model(tf.constant([row[: lengths[b]]]))[0], atol=1e-5)
    for s in range(extra):
        # Each row's next real token goes to slot prompt_length + s, at position lengths + s.
        ids = tf.constant([[r[lengths[b] + s] if lengths[b] + s < len(r) else 0] for b, r in enumerate(rows)], tf.int32)
        slots = slots | (tf.range(cache_length) == prompt_length + s)[None, :]
        logits, cache = language_model.decode_step(
            model, ids, cache, prompt_length + s, positions=tf.constant(lengths + s, tf.int32), slots=slots
        )
        for b, row in enumerate(rows):
            if lengths[b] + s < len(row):
                full = model(tf.constant([row[: lengths[b] + s + 1]]))[0, -1]
                np.testing.assert_allclose(logits[b, 0], full, atol=1e-5)


def test_prompts_of_unequal_length_are_continued_as_if_alone():
    model = _context_sensitive_language_model()
    prompts = [[START, 5, 6, 7, 8], [START, 30], [START, 7, 8, 9]]
    padded = np.array([p + [0] * (5 - len(p)) for p in prompts], np.int32)
    # max_length is the model's longest position: the longest prompt ends there first.
    generate = tf.function(lambda p: language_model.generate(model, p, 20))
    batched = generate(tf.constant(padded)).numpy()
    alone = np.concatenate([generate(tf.constant([p], tf.int32)).numpy() for p in prompts])
    np.testing.assert_array_equal(batched, alone)
    np.testing.assert_array_equal(batched, language_model.generate_uncached(model, padded, 20))
    # Extra padding columns change nothing, even past max_length.
    wide = np.pad(padded, [(0, 0), (0, 10)])
    np.testing.assert_array_equal(generate(tf.constant(wide)).numpy(), batched)
    for row, p in zip(batched, prompts):
        np.testing.assert_array_equal(row[: len(p)], p)
        assert row[len(p)] != 0  # generation did happen right after the prompt


def test_sampled_generation_is_reproducible_per_row_in_any_batch():
    # The library's sampler (keras_transformer.decoding.sample_tokens) in the language model's own
    # loop: a prompt with its seed gives the same continuation alone or padded into a batch, another
    # seed another one, and top-k 1 is greedy.
    model = _context_sensitive_language_model()
    prompts = [[START, 5, 6, 7, 8], [START, 30], [START, 7, 8, 9]]
    padded = np.array([p + [0] * (5 - len(p)) for p in prompts], np.int32)
    generate = tf.function(lambda p, seed, top_k: language_model.generate(model, p, 20, 1.0, seed, top_k, 0.9))
    seeds = tf.constant([4, 5, 6])
    batched = generate(tf.constant(padded), seeds, 0).numpy()
    for b, p in enumerate(prompts):
        alone = generate(tf.constant([p], tf.int32), seeds[b : b + 1], 0).numpy()
        np.testing.assert_array_equal(alone[0], batched[b])
    assert not np.array_equal(generate(tf.constant(padded), seeds + 10, 0).numpy(), batched)
    greedy = tf.function(lambda p: language_model.generate(model, p, 20))(tf.constant(padded)).numpy()
    np.testing.assert_array_equal(generate(tf.constant(padded), seeds, 1).numpy(), greedy)
    assert not np.isin(batched[:, 1:], [START]).any()


def test_prompt_with_padding_inside_is_refused():
    model = _random_language_model()
    with pytest.raises(tf.errors.InvalidArgumentError, match="padding .0. only at the end"):
        language_model.generate(model, tf.constant([[START, 0, 5]], tf.int32), 12)
    with pytest.raises(tf.errors.InvalidArgumentError, match="row is empty"):
        language_model.generate(model, tf.constant([[START, 5], [0, 0]], tf.int32), 12)


def test_cached_step_logits_equal_full_pass():
    model = _random_language_model()
    ids = tf.constant([[START, 5, 6, 7, 8, 9]], tf.int32)
    full = model(ids).numpy()
    cache = language_model.init_cache(model, 1, 20)
    prefill, cache = language_model.decode_step(model, ids[:, :2], cache, 0)
    steps = [prefill]
    for i in range(2, 6):
        logits, cache = language_model.decode_step(model, ids[:, i : i + 1], cache, i)
        steps.append(logits)
    np.testing.assert_allclose(np.concatenate(steps, axis=1), full, atol=1e-5)


def test_perplexity_of_a_uniform_model_is_the_vocabulary_size():
    model = _random_language_model(vocab_size=40)
    model.set_weights([np.zeros_like(w) for w in model.get_weights()])  # every logit 0
    dataset = language_model.make_dataset(
        WordPieceTokenizer(TINY_VOCAB), ["a man rides", "a man rides a bike ."], 2, 20, shuffle=False
    )
    (inputs, targets), = list(dataset)
    assert inputs[0, 0] == START and targets[0, 3] == END and targets[0, 4] == 0
    np.testing.assert_array_equal(inputs[:, 1:], np.where(targets[:, :-1] == END, 0, targets[:, :-1]))
    assert language_model.perplexity(model, dataset) == pytest.approx(40.0, rel=1e-5)


# -- plot_attention ------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_translation_model(tmp_path_factory):
    """A random Transformer over `TINY_VOCAB`, saved with its vocabulary."""
    directory = tmp_path_factory.mktemp("tiny")
    keras.utils.set_random_seed(7)  # module scope: set up before the per-test seed
    model = kt.Transformer(len(TINY_VOCAB), len(TINY_VOCAB), num_layers=2, d_model=16, num_heads=2, d_ff=32,
                           dropout=0.0, max_length=24)
    model.build()
    model.save(directory / "model.keras")
    WordPieceTokenizer(TINY_VOCAB).save(str(directory / "vocab.txt"))
    return directory


@pytest.mark.parametrize("heads", [False, True])
def test_attention_plot_writes_png_of_expected_size(tiny_translation_model, tmp_path, heads):
    output = tmp_path / "attention.png"
    argv = [
        "--model", str(tiny_translation_model / "model.keras"),
        "--vocab", str(tiny_translation_model / "vocab.txt"),
        "--sentence", "a man rides a bike .", "--output", str(output), "--beam-size", "2",
    ]
    result = plot_attention.main(argv + (["--heads"] if heads else []))
    source, target = len(result["source_tokens"]), len(result["target_tokens"])
    assert source == 8  # [START] + 6 words + [END]
    assert result["source_tokens"][:3] == ["[START]", "a", "man"]
    assert result["attention"].shape == (target, source)
    np.testing.assert_allclose(result["attention"].sum(axis=-1), 1.0, atol=1e-5)
    panels = 2 if heads else 1
    expected = (panels * (8 * 32 + 150) + 100, target * 32 + 150)
    assert plot_attention.figure_pixels(source, target, panels) == expected
    assert _png_size(output) == expected


def test_head_attention_averages_to_the_beam_search_attention(tiny_translation_model):
    model = keras.saving.load_model(tiny_translation_model / "model.keras", compile=False)
    tokenizer = WordPieceTokenizer.load(str(tiny_translation_model / "vocab.txt"))
    result = plot_attention.translate_with_attention(model, tokenizer, "a man rides a bike .", beam_size=3)
    heads = plot_attention.head_attention(model, result["source_ids"], result["target_ids"])
    assert heads.shape == (2,) + result["attention"].shape
    np.testing.assert_allclose(heads.mean(axis=0), result["attention"], atol=1e-5)
    with pytest.raises(ValueError, match="`layer` must be in"):
        plot_attention.head_attention(model, result["source_ids"], result["target_ids"], layer=2)


def test_plot_rejects_attention_of_the_wrong_shape(tmp_path):
    with pytest.raises(ValueError, match="`attention` must be"):
        plot_attention.plot_attention(np.zeros([3, 4]), ["a"] * 3, ["b"] * 4, str(tmp_path / "x.png"))


# -- both examples, trained -----------------------------------------------------


def test_the_language_model_example_trains_and_generates_with_the_llama_options(multi30k_dir, capsys):
    # main() itself asserts that cached greedy generation equals the uncached full passes, alone and batched.
    model, _ = language_model.main([
        "--data-dir", multi30k_dir, "--train-sentences", "600", "--vocab-sentences", "300", "--vocab-size", "300",
        "--epochs", "1", "--batch-size", "32", "--max-length", "24", "--d-model", "32",
    ])
    block = model.encoder.stack[0]
    attention = block.self_attention
    assert (attention.position_embedding, attention.num_key_value_heads, attention.num_heads) == ("rotary", 2, 4)
    assert block.options["norm"] == "rms" and block.feed_forward.gated
    out = capsys.readouterr().out
    perplexity = float(out.split("validation perplexity: ")[1].split()[0])
    assert perplexity < 300  # below a uniform guess over the vocabulary after one short epoch
    assert "cached greedy generation equals uncached generation" in out


def test_the_classifier_example_trains_above_chance(multi30k_dir, capsys):
    classify_language.main([
        "--data-dir", multi30k_dir, "--train-sentences", "300", "--vocab-sentences", "200", "--vocab-size", "300",
        "--epochs", "1", "--d-model", "32",
    ])
    out = capsys.readouterr().out
    accuracy = float(out.split("validation accuracy: ")[1].split()[0].rstrip("%,"))
    assert accuracy > 60  # three languages: chance is 33 %
