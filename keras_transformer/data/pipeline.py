"""tf.data pipelines for translation: tokenize in the graph, bucket by length,
batch by a token budget, shift targets for teacher forcing."""

from typing import Dict, Sequence

import numpy as np
import tensorflow as tf

from keras_transformer.data.arrays import bucket_boundaries  # noqa: F401 - also public here
from keras_transformer.layers import validation
from keras_transformer.text import add_start_end

OVERLONG_CHOICES = ("drop", "truncate")


def tokenized_pairs(
    tokenizer,
    source_texts: Sequence[str],
    target_texts: Sequence[str],
    max_length: int = 128,
    overlong: str = "drop",
    target_tokenizer=None,
) -> tf.data.Dataset:
    """(source ids [S], target ids [T]) int32 pairs, each wrapped in [START] ... [END].

    Args:
        tokenizer: a `WordPieceTokenizer` (the source side's, and the
            target side's unless `target_tokenizer` is given).
        source_texts, target_texts: aligned lists of str.
        max_length: int, the longest sequence kept, [START] and [END] included.
        overlong: "drop" removes pairs where either side is longer;
            "truncate" cuts them to `max_length` (ending in [END]).
        target_tokenizer: a `WordPieceTokenizer` for the target side, for
            separate vocabularies. Default: `tokenizer` (a joint vocabulary).
    """
    validation.check_choice("overlong", overlong, OVERLONG_CHOICES)
    validation.check_int_at_least("max_length", max_length, 3, " ([START], a token, [END])")
    if len(source_texts) != len(target_texts):
        raise ValueError(
            f"source and target lists differ in length: {len(source_texts)} vs {len(target_texts)}"
        )
    target_tokenizer = target_tokenizer or tokenizer
    start, end = tokenizer.start_id, tokenizer.end_id

    def wrap(ids):  # ragged [B, (T)] -> ragged [B, (T + 2)], at most max_length
        return add_start_end(ids[:, : max_length - 2], start, end)

    def encode(source, target):
        source_ids, target_ids = tokenizer.tokenize(source), target_tokenizer.tokenize(target)
        if overlong == "drop":
            keep = (source_ids.row_lengths() <= max_length - 2) & (
                target_ids.row_lengths() <= max_length - 2
            )
            source_ids = tf.ragged.boolean_mask(source_ids, keep)
            target_ids = tf.ragged.boolean_mask(target_ids, keep)
        source_ids, target_ids = wrap(source_ids), wrap(target_ids)
        return (source_ids.to_tensor(), source_ids.row_lengths(),
                target_ids.to_tensor(), target_ids.row_lengths())

    def trim(source, source_length, target, target_length):
        return source[:source_length], target[:target_length]

    texts = tf.data.Dataset.from_tensor_slices(
        (tf.constant(list(source_texts), tf.string), tf.constant(list(target_texts), tf.string))
    )
    return (
        texts.batch(1024)
        .map(encode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        .unbatch()
        .map(trim, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    )


def shuffled_passes(dataset: tf.data.Dataset, seed: int = 0, buffer_size: int = 100_000) -> tf.data.Dataset:
    """An endless stream of passes over the finite `dataset`, each pass in
    its own order: a pure function of `seed` and the pass index.

    Element `n` of the stream is the same on every iterator, so
    `stream.skip(n)` resumes exactly. (`dataset.shuffle(seed=s,
    reshuffle_each_iteration=True).repeat()` does not give that: each new
    iterator over one such dataset draws new orders.) The order does not
    depend on TensorFlow's global seed.

    Each pass is read in windows of `buffer_size` elements, and each window
    is permuted by a stateless shuffle seeded with (seed, pass, window): a
    dataset no larger than `buffer_size` is shuffled whole, a larger one
    window by window (window 0's elements always come before window 1's).
    A window is held in memory padded to its longest element.

    Raises:
        ValueError: `dataset` is empty, or an element has a part of unknown rank.
    """
    buffer_size = validation.check_positive_int("buffer_size", buffer_size)
    spec = dataset.element_spec
    if any(part.shape.rank is None for part in tf.nest.flatten(spec)):
        raise ValueError(f"`dataset` elements must have parts of known rank. Received: element_spec={spec}")
    cardinality = int(dataset.cardinality())
    if cardinality == 0 or (cardinality < 0 and next(iter(dataset.take(1)), None) is None):
        raise ValueError("`dataset` is empty: a stream of its passes would never yield an element")

    def one_pass(index):
        pass_seed = tf.stack([tf.constant(seed, tf.int64), index])

        def with_shapes(*parts):
            element = tf.nest.pack_sequence_as(spec, tf.nest.flatten(parts))
            # A scalar's shape would be an empty vector, and unbatching a
            # [B, 0] tensor crashes tf.data; scalars need no shape anyway.
            shapes = tf.nest.map_structure(
                lambda x: tf.shape(x) if x.shape.rank else tf.zeros([1], tf.int32), element
            )
            return element, shapes

        def permute(window, batch):
            rows = tf.shape(tf.nest.flatten(batch)[0], out_type=tf.int64)[0]
            window_seed = tf.random.experimental.stateless_fold_in(pass_seed, window)
            order = tf.random.experimental.stateless_shuffle(tf.range(rows), seed=window_seed)
            return tf.nest.map_structure(lambda x: tf.gather(x, order), batch)

        def unpad(element, shapes):
            def cut(x, shape, part_spec):
                if x.shape.rank == 0:
                    return x
                return tf.ensure_shape(tf.slice(x, tf.zeros_like(shape), shape), part_spec.shape)

            return tf.nest.map_structure(cut, element, shapes, spec)

        # A window is held padded: tf.data's ragged_batch is far slower at
        # this size (8 s for a window of 100,000 elements, 120 of them filled).
        # deterministic=True: the order holds even where the stream's
        # options allow tf.data to reorder parallel maps for speed (a
        # sequential map is always in order, and warns if given the flag).
        return (
            dataset.map(with_shapes, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
            .padded_batch(buffer_size)
            .enumerate()
            .map(permute)
            .unbatch()
            .map(unpad, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        )

    stream = tf.data.Dataset.range(2**62).flat_map(one_pass)
    return stream.apply(tf.data.experimental.assert_cardinality(tf.data.INFINITE_CARDINALITY))


def token_batches(
    pairs: tf.data.Dataset,
    tokens_per_batch: int = 4096,
    max_length: int = 128,
    shuffle: bool = True,
    repeat: bool = False,
    seed: int = 0,
    pad_to_bucket_boundary: bool = False,
    batch_multiple: int = 1,
) -> tf.data.Dataset:
    """Batches of about `tokens_per_batch` padded tokens, grouped by length.

    Each batch holds pairs of similar length: its batch size is
    `tokens_per_batch // bucket_bound`, so batch size x padded length (the
    longer of source and target) stays within the budget.

    Args:
        pairs: from `tokenized_pairs`.
        tokens_per_batch: int, padded tokens per side per batch.
        max_length: int, the longest pair length in `pairs`.
        shuffle: bool, shuffle pairs before bucketing (the whole set up to
            100,000 pairs; a larger one in windows of 100,000).
        repeat: bool, an endless stream of passes. Shuffled, each pass has
            its own order that depends only on `seed` and the pass index
            (`shuffled_passes`), so batch `n` is the same on every iterator
            of the stream and `stream.skip(n)` resumes a run exactly.
            Without `repeat`, each new iterator (each Keras epoch) draws a
            new order.
        seed: int, the shuffle seed.
        pad_to_bucket_boundary: bool, pad to the bucket's bound so there are
            few distinct shapes (for `jit_compile`).
        batch_multiple: int, make every batch size a multiple of this (the
            replica count of a tf.distribute strategy, so each replica gets
            an equal share). Above 1, the last, partial batch of each bucket
            of a finite dataset is dropped.

    Returns:
        A dataset of `({"source": [B, S], "target": [B, T - 1]}, labels [B, T - 1])`
        int32, where target and labels are the padded target shifted for
        teacher forcing.
    """
    if tokens_per_batch < max_length:
        raise ValueError(
            f"`tokens_per_batch` ({tokens_per_batch}) must be at least `max_length` ({max_length})"
        )
    if shuffle and repeat:
        pairs = shuffled_passes(pairs, seed=seed)
    elif shuffle:
        # A finite dataset, new order for each of Keras's epochs.
        pairs = pairs.shuffle(100_000, seed=seed, reshuffle_each_iteration=True)
    elif repeat:
        pairs = pairs.repeat()
    boundaries = bucket_boundaries(max_length)
    # A batch's padded length is below its bucket's upper bound.
    batch_sizes = [tokens_per_batch // (b - 1) for b in boundaries] + [tokens_per_batch // max_length]
    batch_sizes = [max(batch_multiple, size - size % batch_multiple) for size in batch_sizes]
    batches = pairs.bucket_by_sequence_length(
        lambda s, t: tf.maximum(tf.shape(s)[0], tf.shape(t)[0]),
        boundaries,
        batch_sizes,
        pad_to_bucket_boundary=pad_to_bucket_boundary,
        drop_remainder=batch_multiple > 1,
    )
    return batches.map(teacher_forcing, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).prefetch(
        tf.data.AUTOTUNE
    )


def teacher_forcing(source, target):
    """Padded pair -> ({"source": s, "target": t[:, :-1]}, t[:, 1:])."""
    return {"source": source, "target": target[:, :-1]}, target[:, 1:]


def padding_stats(batches: tf.data.Dataset, padding_id: int = 0) -> Dict[str, float]:
    """One pass over finite `batches`: batch count, real tokens, and the
    fraction of source and target positions spent on padding."""
    count = 0
    real = {"source": 0, "target": 0}
    total = {"source": 0, "target": 0}
    for inputs, labels in batches.as_numpy_iterator():
        count += 1
        for side, ids in (("source", inputs["source"]), ("target", labels)):
            real[side] += int(np.sum(ids != padding_id))
            total[side] += ids.size
    if count == 0:
        raise ValueError("`batches` is empty")
    return {
        "batches": count,
        "source_tokens": real["source"],
        "target_tokens": real["target"],
        "source_padding": 1 - real["source"] / total["source"],
        "target_padding": 1 - real["target"] / total["target"],
    }
