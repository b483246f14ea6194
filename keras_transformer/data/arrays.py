"""Tokenized pairs as NumPy arrays, batched for `fit` on any Keras backend.

A JAX or PyTorch run needs no TensorFlow: tokenize once with the
tensorflow-text tokenizer (`tokenized_pairs`, on a machine that has it),
`save_token_arrays`, and train from the file with `TokenBatches`, a
`keras.utils.PyDataset` of the same token-budget, length-bucketed batches
as `token_batches`.

    save_token_arrays("train.npz", (
        (s.numpy(), t.numpy()) for s, t in tokenized_pairs(...)))
    batches = TokenBatches("train.npz", tokens_per_batch=4096, max_length=128)
    training.train(model, batches.stream(), len(batches), 10, "runs/x")  # any backend
    model.fit(batches, epochs=10, shuffle=False)  # JAX or PyTorch (see TokenBatches on TensorFlow's)
"""

import itertools
import numbers
import threading
from typing import Iterable, List, Sequence, Tuple

import keras
import numpy as np

from keras_transformer.layers import validation


def bucket_boundaries(max_length: int, min_step: int = 2, growth: float = 1.1):
    """Bucket upper bounds (exclusive) from 2 up to past `max_length`; the
    spacing grows geometrically so relative padding stays small."""
    boundaries, b = [], 2
    while b <= max_length:
        b = max(b + min_step, int(b * growth))
        boundaries.append(b)
    return boundaries


def save_token_arrays(path: str, pairs: Iterable[Tuple[Sequence[int], Sequence[int]]]) -> int:
    """Writes (source ids, target ids) pairs, each already wrapped in
    [START] ... [END], to the `.npz` file `path`; returns the pair count.

    The file holds four int arrays: `source_ids` and `target_ids` (every
    pair's ids, end to end) and `source_offsets` and `target_offsets` (where
    each pair starts; one more than the pairs)."""
    sides = ([], [])
    for source, target in pairs:
        for side, ids in zip(sides, (source, target)):
            side.append(np.asarray(ids, np.int32).reshape(-1))
    arrays = {}
    for name, side in zip(("source", "target"), sides):
        lengths = np.array([len(ids) for ids in side], np.int64)
        arrays[f"{name}_ids"] = np.concatenate(side) if side else np.zeros([0], np.int32)
        arrays[f"{name}_offsets"] = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    np.savez(path, **arrays)
    return len(sides[0])


def load_token_arrays(path: str) -> Tuple[List[np.ndarray], List[np.ndarray]]:
    """The (sources, targets) id lists of a `save_token_arrays` file.

    Raises:
        ValueError: the file lacks an array, or its offsets do not fit its ids.
    """
    with np.load(path) as data:
        missing = {"source_ids", "source_offsets", "target_ids", "target_offsets"} - set(data.files)
        if missing:
            raise ValueError(f"{path}: not a token-array file (missing {sorted(missing)})")
        sides = []
        for name in ("source", "target"):
            ids, offsets = data[f"{name}_ids"], data[f"{name}_offsets"]
            if (offsets.ndim != 1 or len(offsets) == 0 or offsets[0] != 0 or offsets[-1] != len(ids)
                    or np.any(np.diff(offsets) < 0)):
                raise ValueError(f"{path}: {name}_offsets do not fit {name}_ids ({len(ids)} ids)")
            sides.append(np.split(ids.astype(np.int32), offsets[1:-1]) if len(offsets) > 1 else [])
    if len(sides[0]) != len(sides[1]):
        raise ValueError(f"{path}: {len(sides[0])} sources but {len(sides[1])} targets")
    return sides[0], sides[1]


class TokenBatches(keras.utils.PyDataset):
    """Batches of about `tokens_per_batch` padded tokens, grouped by length,
    from a `save_token_arrays` file: `({"source": [B, S], "target": [B, T - 1]},
    labels [B, T - 1])` int32 NumPy arrays, padded with 0.

    A pair goes to the bucket of its longer side (the buckets of
    `token_batches`), and a bucket's batches hold `tokens_per_batch //
    (its bound - 1)` pairs, so batch size x padded length stays within the
    budget. Pairs longer than `max_length` are left out (`dropped` counts them).

    Each epoch's order depends only on `seed` and the epoch: the pairs are
    shuffled, cut into batches bucket by bucket, and the batches shuffled.
    Batch `i` of epoch `e` is the same in every process, so a run resumes
    exactly from `TokenBatches(..., epoch=e)` and its `i`th batch. The batch
    count is the same every epoch. `on_epoch_end` (called by `fit`) moves to
    the next epoch. Call `fit(..., shuffle=False)`: Keras's own shuffle of a
    `PyDataset`'s batch order is unseeded, and would undo the resumable
    order. Let each epoch be a whole pass (no `steps_per_epoch`): the plan
    changes at `on_epoch_end`.

    `stream()` gives the epochs as one endless stream (`TokenStream`), for
    `training.train` and for `fit` with `steps_per_epoch`. On TensorFlow's
    backend, give `fit` `stream().as_tf_dataset()` (with
    `steps_per_epoch=len(batches)`) rather than this object: Keras fixes a
    `PyDataset`'s shapes there from its first two batches, and a later batch
    of another shape fails.

    Args:
        path: a `save_token_arrays` file.
        tokens_per_batch: int, padded tokens per side per batch (at least `max_length`).
        max_length: int, the longest pair kept.
        shuffle: bool; False keeps the file's order within each bucket.
        seed: int, the shuffle seed.
        epoch: int, the epoch to start at.
        pad_to_bucket_boundary: bool, pad to the bucket's bound - 1 (at
            most `max_length`), so there are few distinct shapes (for jit).
        fill_batches: bool, fill a bucket's last, short batch with rows of
            padding alone (which `MaskedCrossEntropy` and `MaskedAccuracy`
            leave out) up to the bucket's batch size; with
            `pad_to_bucket_boundary`, each bucket then has one shape, and
            `jax.jit` compiles the step once per bucket. The gradients are
            those of the real rows, but the epoch loss `fit` reports weights
            each batch by its rows, filler rows included.
        boundaries: the buckets' upper bounds (exclusive), increasing and
            past `max_length`; default `bucket_boundaries(max_length)`.
            Fewer, wider buckets mean fewer shapes and more padding.
        **kwargs: `keras.utils.PyDataset`'s (`workers`, `use_multiprocessing`).
    """

    def __init__(self, path, tokens_per_batch=4096, max_length=128, shuffle=True, seed=0, epoch=0,
                 pad_to_bucket_boundary=False, fill_batches=False, boundaries=None, **kwargs):
        super().__init__(**kwargs)
        self.tokens_per_batch = validation.check_positive_int("tokens_per_batch", tokens_per_batch)
        self.max_length = validation.check_int_at_least("max_length", max_length, 2)
        if self.tokens_per_batch < self.max_length:
            raise ValueError(
                f"`tokens_per_batch` ({tokens_per_batch}) must be at least `max_length` ({max_length})"
            )
        self.shuffle = bool(shuffle)
        self.seed = validation.check_int_at_least("seed", seed, 0)
        self.epoch = validation.check_int_at_least("epoch", epoch, 0)
        self.pad_to_bucket_boundary = bool(pad_to_bucket_boundary)
        self.fill_batches = bool(fill_batches)
        if boundaries is None:
            boundaries = bucket_boundaries(self.max_length)
        boundaries = list(boundaries)
        if any(isinstance(b, bool) or not isinstance(b, numbers.Integral) for b in boundaries):
            raise ValueError(f"`boundaries` must be integers. Received: boundaries={list(boundaries)}")
        boundaries = [int(b) for b in boundaries]
        if (not boundaries or boundaries[0] < 2 or any(b <= a for a, b in zip(boundaries, boundaries[1:]))
                or boundaries[-1] <= self.max_length):
            raise ValueError(
                "`boundaries` must be increasing bucket bounds from at least 2 to past max_length="
                f"{self.max_length}. Received: boundaries={boundaries}"
            )
        sources, targets = load_token_arrays(path)
        short = [i for i, (s, t) in enumerate(zip(sources, targets)) if len(s) < 1 or len(t) < 2]
        if short:
            raise ValueError(
                f"{path}: {len(short)} pairs have an empty source or a target shorter than [START] [END] "
                f"(the first: pair {short[0]})"
            )
        lengths = np.array([max(len(s), len(t)) for s, t in zip(sources, targets)], np.int64)
        keep = np.flatnonzero(lengths <= self.max_length)
        self.dropped = len(sources) - len(keep)
        self._sources = [sources[i] for i in keep]
        self._targets = [targets[i] for i in keep]
        if not keep.size:
            raise ValueError(f"{path}: no pair of at most max_length={self.max_length} tokens")
        boundaries = np.array(boundaries)
        self._bucket = np.searchsorted(boundaries, lengths[keep], side="right")  # bucket i: [b_{i-1}, b_i)
        # The longest length in each bucket (every kept length lies below the last boundary).
        bounds = [min(int(b) - 1, self.max_length) for b in boundaries]
        self._bounds = bounds
        self._sizes = [max(1, self.tokens_per_batch // bound) for bound in bounds]
        self._plan = self._plan_for(self.epoch)

    def _plan_for(self, epoch):
        """Epoch `epoch`'s batches, as arrays of pair indices, and their buckets."""
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(len(self._sources)) if self.shuffle else np.arange(len(self._sources))
        batches = []
        for bucket, size in enumerate(self._sizes):
            members = order[self._bucket[order] == bucket]
            batches += [(bucket, members[i:i + size]) for i in range(0, len(members), size)]
        if self.shuffle:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        return batches

    def __len__(self):
        return len(self._plan)

    def __getitem__(self, index):
        return self._batch(*self._plan[index])

    def stream(self, **kwargs) -> "TokenStream":
        """This file's batches as one endless stream, epoch after epoch,
        from this object's current epoch: what `training.train` takes (see
        `TokenStream`). `kwargs` are `keras.utils.PyDataset`'s."""
        return TokenStream(self, **kwargs)

    def _batch(self, bucket, members):
        sources = [self._sources[i] for i in members]
        targets = [self._targets[i] for i in members]
        if self.pad_to_bucket_boundary:
            source_width = target_width = self._bounds[bucket]
        else:
            source_width, target_width = max(len(s) for s in sources), max(len(t) for t in targets)
        rows = self._sizes[bucket] if self.fill_batches else len(members)
        source = np.zeros((rows, source_width), np.int32)
        target = np.zeros((rows, target_width), np.int32)
        for row, (s, t) in enumerate(zip(sources, targets)):
            source[row, :len(s)] = s
            target[row, :len(t)] = t
        return {"source": source, "target": target[:, :-1]}, target[:, 1:]

    def on_epoch_end(self):
        self.epoch += 1
        self._plan = self._plan_for(self.epoch)


class TokenStream(keras.utils.PyDataset):
    """The batches of a `TokenBatches`, epoch after epoch, as one endless
    `keras.utils.PyDataset`: element `n` is batch `n % len(batches)` of
    epoch `batches.epoch + n // len(batches)` (counted from the epoch the
    `TokenBatches` was at when the stream was made), whatever was read
    before. It is `token_batches(repeat=True)` for every Keras backend:
    `training.train` resumes a run at step `n` through `skip(n)`, and
    `take(k)` gives `k` fixed batches, for validation. On TensorFlow's
    backend, give `fit` `stream.as_tf_dataset()` (`train` does that itself).

    Made by `TokenBatches.stream()`. `fit` needs `steps_per_epoch` with it,
    as with any endless dataset.

    Args:
        batches: a `TokenBatches`.
        start: int, the element the stream starts at.
        stop: int or None, the element it ends before (None: endless).
        **kwargs: `keras.utils.PyDataset`'s (`workers`, `use_multiprocessing`).
    """

    def __init__(self, batches, start=0, stop=None, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(batches, TokenBatches):
            raise ValueError(f"`batches` must be a TokenBatches. Received: batches={batches!r}")
        self.batches = batches
        self.first_epoch = batches.epoch
        self.start = validation.check_int_at_least("start", start, 0)
        self.stop = None if stop is None else validation.check_int_at_least("stop", stop, self.start)
        self._kwargs = kwargs
        self._plans = {}
        self._lock = threading.Lock()  # PyDataset workers may be threads

    def __getstate__(self):  # for use_multiprocessing where processes are spawned
        state = dict(self.__dict__)
        del state["_lock"]
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()

    @property
    def num_batches(self):
        return None if self.stop is None else self.stop - self.start

    def __len__(self):
        if self.stop is None:
            raise TypeError("a TokenStream without `stop` is endless and has no len()")
        return self.stop - self.start

    def __getitem__(self, index):
        if index < 0 or (self.stop is not None and index >= self.stop - self.start):
            raise IndexError(f"element {index} of a stream of {self.num_batches} batches")
        epoch, position = divmod(self.start + index, len(self.batches))
        epoch += self.first_epoch
        with self._lock:
            plan = self._plans.get(epoch)
            if plan is None:
                # Readers move forward, an epoch at a time: keep the last two.
                plan = self._plans[epoch] = self.batches._plan_for(epoch)
                for old in [e for e in self._plans if e < epoch - 1]:
                    del self._plans[old]
        return self.batches._batch(*plan[position])

    def as_tf_dataset(self):
        """The stream as a `tf.data.Dataset` (TensorFlow installed) whose
        sequence dimensions are unknown, for `fit` on TensorFlow's backend.

        A `PyDataset` given to `fit` there becomes a dataset whose shapes
        Keras infers from its first two batches
        (keras/src/trainers/data_adapters/py_dataset_adapter.py); where
        those share a width, a later batch of another width fails the
        epoch. `training.train` converts a stream itself."""
        import tensorflow as tf

        spec = tf.TensorSpec([None, None], tf.int32)
        count = self.num_batches

        def generate():
            for index in range(count) if count is not None else itertools.count():
                yield self[index]

        return tf.data.Dataset.from_generator(generate, output_signature=({"source": spec, "target": spec}, spec))

    def _part(self, start, stop):
        part = TokenStream(self.batches, start, stop, **self._kwargs)
        part.first_epoch = self.first_epoch
        return part

    def skip(self, count: int) -> "TokenStream":
        """The stream from its element `count` on."""
        count = validation.check_int_at_least("count", count, 0)
        start = self.start + count
        return self._part(start if self.stop is None else min(start, self.stop), self.stop)

    def take(self, count: int) -> "TokenStream":
        """The stream's first `count` elements (fewer if it ends first)."""
        count = validation.check_int_at_least("count", count, 0)
        stop = self.start + count
        return self._part(self.start, stop if self.stop is None else min(stop, self.stop))
