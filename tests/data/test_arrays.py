"""Token arrays and `TokenBatches`: what a JAX or PyTorch run trains from."""

import numpy as np
import pytest

from keras_transformer.data.arrays import TokenBatches
from keras_transformer.data.arrays import bucket_boundaries
from keras_transformer.data.arrays import load_token_arrays
from keras_transformer.data.arrays import save_token_arrays


def _pairs(n=300, seed=0, longest=40):
    rng = np.random.default_rng(seed)
    pairs = []
    for _ in range(n):
        s, t = rng.integers(2, longest + 1, size=2)
        pairs.append((np.r_[1, rng.integers(4, 50, s - 2), 2], np.r_[1, rng.integers(4, 50, t - 2), 2]))
    return pairs


@pytest.fixture
def arrays(tmp_path):
    pairs = _pairs()
    path = str(tmp_path / "train.npz")
    assert save_token_arrays(path, pairs) == len(pairs)
    return path, pairs


def test_arrays_round_trip(arrays):
    path, pairs = arrays
    sources, targets = load_token_arrays(path)
    assert len(sources) == len(pairs)
    for (s, t), s2, t2 in zip(pairs, sources, targets):
        np.testing.assert_array_equal(s, s2)
        np.testing.assert_array_equal(t, t2)


def test_a_file_that_is_not_token_arrays_is_refused(tmp_path):
    np.savez(tmp_path / "x.npz", source_ids=np.zeros(3, np.int32))
    with pytest.raises(ValueError, match="missing"):
        load_token_arrays(str(tmp_path / "x.npz"))
    np.savez(tmp_path / "y.npz", source_ids=np.zeros(3, np.int32), source_offsets=np.array([0, 5]),
             target_ids=np.zeros(3, np.int32), target_offsets=np.array([0, 3]))
    with pytest.raises(ValueError, match="source_offsets do not fit"):
        load_token_arrays(str(tmp_path / "y.npz"))


@pytest.mark.parametrize("pad", [False, True])
def test_every_pair_once_an_epoch_within_the_budget_and_one_bucket(arrays, pad):
    path, pairs = arrays
    batches = TokenBatches(path, tokens_per_batch=256, max_length=32, pad_to_bucket_boundary=pad)
    kept = [(s, t) for s, t in pairs if max(len(s), len(t)) <= 32]
    assert batches.dropped == len(pairs) - len(kept) > 0
    boundaries = bucket_boundaries(32)
    seen = []
    for i in range(len(batches)):
        x, labels = batches[i]
        source, target = x["source"], x["target"]
        assert source.dtype == target.dtype == labels.dtype == np.int32
        width = max(source.shape[1], target.shape[1] + 1)
        assert len(source) * width <= 256
        fulls = [np.r_[t[:1], y] for t, y in zip(target, labels)]  # [START] + labels: the whole target
        lengths = [max((s != 0).sum(), (f != 0).sum()) for s, f in zip(source, fulls)]
        buckets = {int(np.searchsorted(boundaries, n, side="right")) for n in lengths}
        assert len(buckets) == 1  # one bucket per batch
        if pad:
            assert width == boundaries[buckets.pop()] - 1
        for s, f, t, y in zip(source, fulls, target, labels):
            np.testing.assert_array_equal(t[1:], y[:-1])  # labels are the inputs shifted by one
            seen.append((tuple(map(int, s[s != 0])), tuple(map(int, f[f != 0]))))
    assert sorted(seen) == sorted((tuple(map(int, s)), tuple(map(int, t))) for s, t in kept)


def test_the_order_depends_only_on_seed_and_epoch_and_resumes(arrays):
    path, _ = arrays

    def epoch_batches(batches):
        return [tuple(batches[i][0]["source"].ravel()) for i in range(len(batches))]

    a, b = TokenBatches(path, 256, 32, seed=3), TokenBatches(path, 256, 32, seed=3)
    first = epoch_batches(a)
    assert first == epoch_batches(b)
    a.on_epoch_end()  # what fit calls: the next epoch, a new order, the same batch count
    second = epoch_batches(a)
    assert second != first and len(second) == len(first)
    # A new process resuming at epoch 1 sees the same batches.
    assert epoch_batches(TokenBatches(path, 256, 32, seed=3, epoch=1)) == second
    assert epoch_batches(TokenBatches(path, 256, 32, seed=4)) != first


def test_bad_arguments_are_refused(arrays):
    path, _ = arrays
    with pytest.raises(ValueError, match="tokens_per_batch"):
        TokenBatches(path, tokens_per_batch=16, max_length=32)
    with pytest.raises(ValueError, match="seed"):
        TokenBatches(path, seed=-1)
