"""Token arrays and `TokenBatches`: what a JAX or PyTorch run trains from."""

import numpy as np
import pytest

from keras_transformer.data.arrays import TokenBatches
from keras_transformer.data.arrays import TokenStream
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

    import keras_transformer as kt
    from keras_transformer.training.losses import MaskedCrossEntropy
    from tests.backend import weight_gradients

    keras.utils.set_random_seed(0)
    model = kt.Transformer(50, 50, num_layers=1, d_model=16, num_heads=2, d_ff=32, dropout=0.0, max_length=16)
    loss = MaskedCrossEntropy(label_smoothing=0.1)
    rng = np.random.default_rng(0)
    source, target = rng.integers(4, 50, (3, 7)).astype("int32"), rng.integers(4, 50, (3, 6)).astype("int32")
    labels = rng.integers(4, 50, (3, 6)).astype("int32")
    model({"source": source, "target": target})

    def loss_and_gradients(rows):
        pad = lambda a: np.concatenate([a, np.zeros((rows, a.shape[1]), a.dtype)])  # noqa: E731
        inputs = {"source": pad(source), "target": pad(target)}
        return weight_gradients(model, lambda call: loss(pad(labels), call(inputs)))

    value, gradients = loss_and_gradients(0)
    assert len(gradients) == len(model.trainable_variables) and all(g is not None for g in gradients)
    filled_value, filled_gradients = loss_and_gradients(2)
    np.testing.assert_allclose(filled_value, value, rtol=1e-6)
    for a, b in zip(gradients, filled_gradients):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-7)


def test_bad_boundaries_are_refused(arrays):
    path, _ = arrays
    for bounds in ([10, 20], [10, 10, 40], [1, 40], [], [10.5, 40]):
        with pytest.raises(ValueError, match="boundaries"):
            TokenBatches(path, max_length=32, boundaries=bounds)
    assert TokenBatches(path, max_length=32, boundaries=(b for b in [10, 40]))._bounds == [9, 32]  # any iterable


def _same(a, b):
    (x, y), (x2, y2) = a, b
    for left, right in ((x["source"], x2["source"]), (x["target"], x2["target"]), (y, y2)):
        np.testing.assert_array_equal(left, right)


def test_a_stream_is_the_epochs_end_to_end_and_skip_resumes_at_any_element(arrays):
    # What `training.train` needs of a stream on every backend: element n is
    # the same batch whoever reads it and whatever was read before, so a run
    # resumed at step n (`skip(n)`, in a fresh process) meets the batches the
    # uninterrupted run met, however many times Keras calls on_epoch_end
    # (TokenBatches' own epochs advance there; a stream's do not).
    path, _ = arrays
    batches = TokenBatches(path, tokens_per_batch=256, max_length=32, seed=4)
    n = len(batches)
    epochs = [[TokenBatches(path, 256, 32, seed=4, epoch=e)[i] for i in range(n)] for e in range(3)]
    stream = batches.stream()
    assert stream.num_batches is None
    with pytest.raises(TypeError, match="endless"):
        len(stream)
    for step in (0, 1, n - 1, n, n + 2, 2 * n + 1):
        epoch, i = divmod(step, n)
        _same(stream[step], epochs[epoch][i])
        _same(stream.skip(step)[0], epochs[epoch][i])
        _same(stream.skip(1).skip(step - 1)[0] if step else stream.skip(0)[0], epochs[epoch][i])
    # Reading out of order, or back across an epoch, gives the same batches.
    _same(stream[1], epochs[0][1])
    # Keras reads it as an endless PyDataset: an iterator walks the epochs in order.
    iterator = iter(stream.skip(n - 1))
    _same(next(iterator), epochs[0][n - 1])
    _same(next(iterator), epochs[1][0])
    # A stream made from a TokenBatches at epoch 2 starts there.
    _same(TokenBatches(path, 256, 32, seed=4, epoch=2).stream()[0], epochs[2][0])
    # Its epochs do not differ in batch count, but they do in order.
    assert any(not np.array_equal(a[1], b[1]) for a, b in zip(epochs[0], epochs[1]))


def test_take_gives_fixed_finite_batches(arrays):
    path, _ = arrays
    stream = TokenBatches(path, tokens_per_batch=256, max_length=32).stream()
    part = stream.skip(5).take(3)
    assert part.num_batches == len(part) == 3
    for i in range(3):
        _same(part[i], stream[5 + i])
    with pytest.raises(IndexError):
        part[3]
    assert len(list(part)) == 3  # Keras's iteration stops at the end
    assert len(part.take(10)) == 3 and len(part.skip(2)) == 1 and len(part.skip(9)) == 0
    with pytest.raises(ValueError, match="count"):
        stream.skip(-1)
    with pytest.raises(ValueError, match="count"):
        stream.take(1.5)
    with pytest.raises(ValueError, match="TokenBatches"):
        TokenStream([1, 2, 3])


def test_a_stream_read_by_worker_threads_gives_each_element_its_batch(arrays):
    # keras.utils.PyDataset's workers read elements from several threads at
    # once: the stream's per-epoch plans must not be corrupted by that.
    import concurrent.futures

    path, _ = arrays
    stream = TokenBatches(path, tokens_per_batch=256, max_length=32).stream()
    n = len(stream.batches)
    expected = [TokenBatches(path, 256, 32).stream()[i] for i in range(4 * n)]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        got = list(pool.map(stream.__getitem__, range(4 * n)))
    for a, b in zip(got, expected):
        _same(a, b)


def test_a_stream_fits_on_tensorflow_whatever_its_first_batches_widths(tmp_path):
    # Keras makes a PyDataset's tf.data signature from its first two batches
    # (py_dataset_adapter.get_tf_dataset); two of one width fix that width,
    # and a wider third batch fails the epoch. as_tf_dataset leaves it open.
    import keras

    if keras.backend.backend() != "tensorflow":
        pytest.skip("the tf.data conversion is TensorFlow's backend's")
    pairs = [(np.r_[1, [5] * 3, 2], np.r_[1, [6] * 3, 2])] * 4 + [(np.r_[1, [5] * 9, 2], np.r_[1, [6] * 9, 2])]
    path = str(tmp_path / "widths.npz")
    save_token_arrays(path, pairs)
    stream = TokenBatches(path, tokens_per_batch=16, max_length=16, shuffle=False, boundaries=[8, 17]).stream()
    assert [stream[i][1].shape[1] for i in range(3)] == [4, 4, 10]
    dataset = stream.as_tf_dataset()
    for i, (x, y) in enumerate(dataset.take(4)):
        _same(({k: v.numpy() for k, v in x.items()}, y.numpy()), stream[i])
    assert len(list(stream.take(3).as_tf_dataset())) == 3


def test_a_stream_pickles_for_worker_processes(arrays):
    # keras.utils.PyDataset(use_multiprocessing=True) sends the dataset to
    # processes that may be spawned (macOS, Windows): it must pickle.
    import pickle

    path, _ = arrays
    stream = TokenBatches(path, tokens_per_batch=256, max_length=32).stream(workers=2).skip(3)
    again = pickle.loads(pickle.dumps(stream))
    assert again.workers == 2
    for i in (0, 1, 40):
        _same(again[i], stream[i])
