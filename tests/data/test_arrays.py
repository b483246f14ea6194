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


def test_empty_and_degenerate_files_are_refused_clearly(tmp_path):
    # A file of no pairs loads as none (numpy's split of no offsets gave one empty pair).
    path = str(tmp_path / "empty.npz")
    assert save_token_arrays(path, []) == 0
    assert load_token_arrays(path) == ([], [])
    with pytest.raises(ValueError, match="no pair of at most max_length"):
        TokenBatches(path)
    # A target without [START] ... [END] would give a batch of width 0 and a loss of 0.
    save_token_arrays(path, [(np.array([1, 5, 2]), np.array([1, 6, 2])), (np.array([1, 2]), np.array([1]))])
    with pytest.raises(ValueError, match="1 pairs have an empty source or a target shorter.*pair 1"):
        TokenBatches(path)


def test_padding_to_the_bucket_bound_never_passes_max_length(tmp_path):
    # With max_length 128 the last bucket is [124, 136): its bound - 1 is past
    # the longest pair kept, and past a model's max_length 128.
    path = str(tmp_path / "long.npz")
    pairs = [(np.r_[1, np.full(n - 2, 7), 2], np.r_[1, np.full(n - 2, 8), 2]) for n in range(120, 129)]
    save_token_arrays(path, pairs)
    batches = TokenBatches(path, tokens_per_batch=256, max_length=128, pad_to_bucket_boundary=True)
    for i in range(len(batches)):
        x, _ = batches[i]
        assert x["source"].shape[1] <= 128 and x["target"].shape[1] + 1 <= 128
        assert len(x["source"]) * x["source"].shape[1] <= 256


def test_filled_batches_give_each_bucket_one_shape_and_lose_no_pair(arrays):
    # For jax.jit, which compiles a step per shape: coarse buckets, padded to
    # their bound, and each bucket's short last batch filled with padding rows.
    path, pairs = arrays
    bounds = [10, 20, 33]
    batches = TokenBatches(path, tokens_per_batch=256, max_length=32, pad_to_bucket_boundary=True,
                           fill_batches=True, boundaries=bounds)
    shapes, seen, filled = {}, [], 0
    for i in range(len(batches)):
        x, labels = batches[i]
        width = x["source"].shape[1]
        shapes.setdefault(width, set()).add((x["source"].shape, x["target"].shape, labels.shape))
        real = x["source"].any(axis=1)
        assert np.array_equal(real, labels.any(axis=1))  # a padding row is padding on both sides
        assert not x["target"][~real].any()
        filled += int((~real).sum())
        seen += [tuple(map(int, s[s != 0])) for s in x["source"][real]]
    assert sorted(shapes) == [9, 19, 32] and all(len(v) == 1 for v in shapes.values())
    assert filled > 0
    assert sorted(seen) == sorted(tuple(map(int, s)) for s, t in pairs if max(len(s), len(t)) <= 32)


def test_padding_rows_change_neither_the_loss_nor_its_gradient():
    # The rows a filled batch adds are masked out: the same loss and gradients
    # as the batch without them (no NaN from a row whose every key is padding).
    import keras
    import tensorflow as tf

    import keras_transformer as kt
    from keras_transformer.training.losses import MaskedCrossEntropy

    keras.utils.set_random_seed(0)
    model = kt.Transformer(50, 50, num_layers=1, d_model=16, num_heads=2, d_ff=32, dropout=0.0, max_length=16)
    loss = MaskedCrossEntropy(label_smoothing=0.1)
    rng = np.random.default_rng(0)
    source, target = rng.integers(4, 50, (3, 7)).astype("int32"), rng.integers(4, 50, (3, 6)).astype("int32")
    labels = rng.integers(4, 50, (3, 6)).astype("int32")

    def loss_and_gradients(rows):
        pad = lambda a: np.concatenate([a, np.zeros((rows, a.shape[1]), a.dtype)])  # noqa: E731
        with tf.GradientTape() as tape:
            value = loss(pad(labels), model({"source": pad(source), "target": pad(target)}))
        return value, tape.gradient(value, model.trainable_variables)

    value, gradients = loss_and_gradients(0)
    assert len(gradients) == len(model.trainable_variables) and all(g is not None for g in gradients)
    filled_value, filled_gradients = loss_and_gradients(2)
    np.testing.assert_allclose(filled_value, value, rtol=1e-6)
    for a, b in zip(gradients, filled_gradients):
        # (an embedding's gradient is IndexedSlices: summed into a dense tensor first)
        np.testing.assert_allclose(tf.convert_to_tensor(b).numpy(), tf.convert_to_tensor(a).numpy(),
                                   rtol=1e-5, atol=1e-7)


def test_bad_boundaries_are_refused(arrays):
    path, _ = arrays
    for bounds in ([10, 20], [10, 10, 40], [1, 40], [], [10.5, 40]):
        with pytest.raises(ValueError, match="boundaries"):
            TokenBatches(path, max_length=32, boundaries=bounds)
    assert TokenBatches(path, max_length=32, boundaries=(b for b in [10, 40]))._bounds == [9, 32]  # any iterable
