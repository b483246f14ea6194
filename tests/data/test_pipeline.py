import os

import keras
import numpy as np
import pytest

from keras_transformer import data


@pytest.fixture(scope="module")
def val_pairs(multi30k_dir, multi30k_tokenizer):
    en, de = data.read_parallel(
        os.path.join(multi30k_dir, "val.lc.norm.tok.en"), os.path.join(multi30k_dir, "val.lc.norm.tok.de")
    )
    return en, de


def test_pairs_are_wrapped_in_start_and_end(multi30k_tokenizer):
    tok = multi30k_tokenizer
    (source, target), = list(data.tokenized_pairs(tok, ["ein hund"], ["a dog"]).as_numpy_iterator())
    np.testing.assert_array_equal(source, [tok.start_id, *tok.tokenize(["ein hund"])[0].numpy(), tok.end_id])
    np.testing.assert_array_equal(target, [tok.start_id, *tok.tokenize(["a dog"])[0].numpy(), tok.end_id])


def test_overlong_pairs_are_dropped_or_truncated(multi30k_tokenizer):
    tok = multi30k_tokenizer
    long_text = " ".join(["mann"] * 20)
    sources, targets = ["ein hund", long_text], ["a dog", "a man"]
    dropped = list(data.tokenized_pairs(tok, sources, targets, max_length=10, overlong="drop"))
    assert len(dropped) == 1
    truncated = list(data.tokenized_pairs(tok, sources, targets, max_length=10, overlong="truncate"))
    assert len(truncated) == 2
    source = truncated[1][0].numpy()
    assert len(source) == 10 and source[0] == tok.start_id and source[-1] == tok.end_id
    with pytest.raises(ValueError, match="overlong"):
        data.tokenized_pairs(tok, sources, targets, overlong="cut")


def test_batches_respect_the_token_budget_and_keep_every_pair(multi30k_tokenizer, val_pairs):
    pairs = data.tokenized_pairs(multi30k_tokenizer, *val_pairs, max_length=64)
    real_tokens = sum(len(s) for s, _ in pairs.as_numpy_iterator())
    batches = list(data.token_batches(pairs, tokens_per_batch=512, max_length=64, shuffle=False).as_numpy_iterator())
    seen = 0
    for inputs, labels in batches:
        source, target = inputs["source"], inputs["target"]
        padded_length = max(source.shape[1], target.shape[1] + 1)
        assert source.shape[0] * padded_length <= 512
        # Teacher forcing: labels are the decoder inputs shifted by one.
        np.testing.assert_array_equal(target[:, 1:], labels[:, :-1])
        assert (target[:, 0] == multi30k_tokenizer.start_id).all()
        seen += int((source != 0).sum())
    assert seen == real_tokens
    assert sum(inputs["source"].shape[0] for inputs, _ in batches) == len(val_pairs[0])


def test_bucketing_wastes_far_less_than_plain_batching(multi30k_tokenizer, val_pairs):
    pairs = data.tokenized_pairs(multi30k_tokenizer, *val_pairs, max_length=64)
    bucketed = data.padding_stats(data.token_batches(pairs, 1024, 64, shuffle=True, seed=3))
    plain = data.padding_stats(
        pairs.shuffle(2000, seed=3).padded_batch(32).map(data.teacher_forcing)
    )
    assert bucketed["target_tokens"] == plain["target_tokens"]
    assert bucketed["target_padding"] < 0.15
    assert bucketed["target_padding"] < plain["target_padding"] / 2


def test_repeated_stream_is_deterministic_and_skippable(multi30k_tokenizer, val_pairs):
    pairs = data.tokenized_pairs(multi30k_tokenizer, val_pairs[0][:200], val_pairs[1][:200], max_length=64)
    def stream():
        return data.token_batches(pairs, 256, 64, shuffle=True, repeat=True, seed=7)
    first = [labels for _, labels in stream().take(40).as_numpy_iterator()]
    again = [labels for _, labels in stream().take(40).as_numpy_iterator()]
    skipped = [labels for _, labels in stream().skip(25).take(15).as_numpy_iterator()]
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(first[25:], skipped):
        np.testing.assert_array_equal(a, b)
    # Passes are reshuffled: the stream does not simply repeat its first pass.
    one_pass = sum(1 for _ in data.token_batches(pairs, 256, 64, shuffle=False))
    assert not all(
        a.shape == b.shape and (a == b).all() for a, b in zip(first[:5], first[one_pass:one_pass + 5])
    )


def test_one_stream_gives_element_n_at_position_n_on_every_iteration(multi30k_tokenizer, val_pairs):
    # `train` iterates one stream object again after a restart (and once per
    # `fit` call). tf.data's `shuffle(reshuffle_each_iteration=True)` draws a
    # new order for every new iterator of the same dataset, so each pass must
    # be shuffled by a seed of its own instead.
    pairs = data.tokenized_pairs(multi30k_tokenizer, val_pairs[0][:120], val_pairs[1][:120], max_length=64)
    stream = data.token_batches(pairs, 256, 64, shuffle=True, repeat=True, seed=7)
    one_pass = sum(1 for _ in data.token_batches(pairs, 256, 64, shuffle=False))
    first = [labels for _, labels in stream.take(3 * one_pass).as_numpy_iterator()]
    for start in (0, one_pass - 2, 2 * one_pass + 1):
        again = [labels for _, labels in stream.skip(start).take(5).as_numpy_iterator()]
        for a, b in zip(first[start:start + 5], again):
            np.testing.assert_array_equal(a, b)
    # The global seed does not enter the order; the `seed` argument does.
    keras.utils.set_random_seed(0)
    reseeded = [labels for _, labels in stream.take(5).as_numpy_iterator()]
    for a, b in zip(first, reseeded):
        np.testing.assert_array_equal(a, b)
    other = data.token_batches(pairs, 256, 64, shuffle=True, repeat=True, seed=8)
    assert not all(
        a.shape == b.shape and (a == b).all()
        for a, b in zip(first, (labels for _, labels in other.take(5).as_numpy_iterator()))
    )


def test_shuffled_passes_hold_every_element_once_each_in_its_own_order():
    import tensorflow as tf

    items = tf.data.Dataset.range(50).map(lambda i: (i, tf.fill([i % 4], i)))
    for buffer_size in (100, 16):  # the whole set, or windows of 16
        stream = data.shuffled_passes(items, seed=3, buffer_size=buffer_size)
        ids = [int(i) for i, _ in stream.take(150).as_numpy_iterator()]
        passes = [ids[:50], ids[50:100], ids[100:]]
        assert all(sorted(p) == list(range(50)) for p in passes)
        assert len({tuple(p) for p in passes}) == 3 and passes[0] != list(range(50))
        if buffer_size == 16:  # a window is permuted within itself
            assert sorted(passes[0][:16]) == list(range(16))
        # The variable-length part comes back as plain tensors, with its element.
        i, row = next(iter(stream.skip(7)))
        assert isinstance(row, tf.Tensor) and row.numpy().tolist() == [int(i)] * (int(i) % 4)
        assert int(i) == ids[7]
    with pytest.raises(ValueError, match="buffer_size"):
        data.shuffled_passes(items, buffer_size=0)


def test_shuffled_passes_keep_the_element_structure_and_refuse_an_empty_dataset():
    import tensorflow as tf

    single = tf.data.Dataset.range(5).map(lambda i: (tf.fill([3], i),))  # a 1-tuple of [3]
    stream = data.shuffled_passes(single, seed=1)
    assert stream.element_spec == single.element_spec  # the tuple, and the static shape [3]
    assert stream.cardinality() == tf.data.INFINITE_CARDINALITY
    named = tf.data.Dataset.range(5).map(lambda i: {"id": i, "row": tf.fill([i], i)})
    element = next(iter(data.shuffled_passes(named, seed=1)))
    assert element["row"].numpy().tolist() == [int(element["id"])] * int(element["id"])
    # The order holds where the options let tf.data reorder for speed.
    varied = tf.data.Dataset.range(300).map(lambda i: (i, tf.fill([i % 17], i)))
    options = tf.data.Options()
    options.deterministic = False
    fast = data.shuffled_passes(varied, seed=2).with_options(options)
    first, again = ([int(i) for i, _ in fast.take(600).as_numpy_iterator()] for _ in range(2))
    assert first == again
    # An empty dataset would make an endless stream that never yields.
    for empty in (tf.data.Dataset.range(0), tf.data.Dataset.range(5).filter(lambda i: i > 9)):
        with pytest.raises(ValueError, match="empty"):
            data.shuffled_passes(empty)


def test_budget_must_hold_the_longest_pair(multi30k_tokenizer):
    pairs = data.tokenized_pairs(multi30k_tokenizer, ["a"], ["b"], max_length=64)
    with pytest.raises(ValueError, match="tokens_per_batch"):
        data.token_batches(pairs, tokens_per_batch=32, max_length=64)


def test_separate_vocabularies_and_bucket_padding(multi30k_tokenizer):
    from keras_transformer.data import WordPieceTokenizer

    target_tok = WordPieceTokenizer.learn(["ein hund läuft"] * 20, vocab_size=50, min_count=5)
    pairs = data.tokenized_pairs(multi30k_tokenizer, ["a dog runs"], ["ein hund läuft"], target_tokenizer=target_tok)
    (source, target), = list(pairs.as_numpy_iterator())
    assert target_tok.detokenize([target]).numpy()[0] == "ein hund läuft".encode()
    batches = data.token_batches(pairs, 256, 64, shuffle=False, pad_to_bucket_boundary=True)
    (inputs, labels), = list(batches.as_numpy_iterator())
    bound = next(b for b in data.bucket_boundaries(64) if b > max(len(source), len(target)))
    assert inputs["source"].shape[1] == bound - 1 and labels.shape[1] == bound - 2


def test_batch_sizes_divide_among_replicas(multi30k_tokenizer, val_pairs):
    pairs = data.tokenized_pairs(multi30k_tokenizer, *val_pairs, max_length=64)
    sizes = [x["source"].shape[0] for x, _ in data.token_batches(pairs, 500, 64, shuffle=False, batch_multiple=4)]
    assert sizes and all(size % 4 == 0 for size in sizes)
