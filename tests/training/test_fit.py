import atexit
import os
import shutil
import tempfile

import keras
import numpy as np
import pytest

import keras_transformer as kt
from keras_transformer import data
from keras_transformer import training

VOCAB = 40


def _pairs(seed, num_pairs):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(3, 12, size=num_pairs)
    sources = [rng.integers(4, VOCAB, size=n).tolist() for n in lengths]
    return [([2, *s, 3], [2, *s[::-1], 3]) for s in sources]


_ARRAY_FILES = {}


def _arrays_file(seed, num_pairs):
    if (seed, num_pairs) not in _ARRAY_FILES:
        directory = tempfile.mkdtemp(prefix="kt-test-stream-")
        atexit.register(shutil.rmtree, directory, True)
        path = os.path.join(directory, "pairs.npz")
        data.save_token_arrays(path, _pairs(seed, num_pairs))
        _ARRAY_FILES[seed, num_pairs] = path
    return _ARRAY_FILES[seed, num_pairs]


def stream_kinds():
    """The training streams this backend takes: tf.data on TensorFlow's, a
    `TokenStream` on every backend."""
    return ["tf.data", "arrays"] if keras.backend.backend() == "tensorflow" else ["arrays"]


def _stream(seed=0, num_pairs=96, batch_multiple=1, kind=None):
    """An endless, deterministic stream of small padded translation batches:
    `token_batches(repeat=True)` on TensorFlow's backend, the same pairs as a
    `TokenBatches(...).stream()` on the others (or `kind="arrays"`)."""
    kind = kind or stream_kinds()[0]
    if kind == "arrays":
        assert batch_multiple == 1, "TokenBatches has no batch_multiple"
        # One shape: jax.jit compiles the step once per shape.
        return data.TokenBatches(_arrays_file(seed, num_pairs), tokens_per_batch=128, max_length=16, seed=seed,
                                 boundaries=[17], pad_to_bucket_boundary=True, fill_batches=True).stream()
    import tensorflow as tf

    pairs = tf.data.Dataset.from_generator(
        lambda: ((np.array(s), np.array(t)) for s, t in _pairs(seed, num_pairs)),
        output_signature=(tf.TensorSpec([None], tf.int64), tf.TensorSpec([None], tf.int64)),
    ).map(lambda s, t: (tf.cast(s, tf.int32), tf.cast(t, tf.int32)))
    return data.token_batches(
        pairs, tokens_per_batch=128, max_length=16, shuffle=True, repeat=True, seed=seed, batch_multiple=batch_multiple
    )


def _model(dropout=0.1):
    model = kt.Transformer(VOCAB, VOCAB, num_layers=1, d_model=16, num_heads=2, d_ff=32, dropout=dropout, max_length=32)
    model.build()
    return training.compile_for_translation(model, warmup_steps=20)


class Interrupt(keras.callbacks.Callback):
    """Raises as a kill would: at the start of epoch `epoch`, after optimizer
    step `step`, or after this process has run `after` batches."""

    def __init__(self, epoch=None, step=None, after=None):
        super().__init__()
        self.epoch, self.step, self.after = epoch, step, after
        self.batches = 0

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.epoch:
            raise KeyboardInterrupt(f"interrupted before epoch {epoch}")

    def on_train_batch_end(self, batch, logs=None):
        self.batches += 1
        if int(self.model.optimizer.iterations.numpy()) == self.step or self.batches == self.after:
            raise KeyboardInterrupt(f"interrupted after step {self.step} / batch {self.batches}")


def _weights(model):
    return [w.numpy() for w in model.weights]


def test_checkpoints_are_kept_and_averaged(tmp_path):
    model = _model()
    run_dir = str(tmp_path)
    training.train(model, _stream(), 4, 4, run_dir, keep_checkpoints=2, verbose=0)
    paths = training.callbacks.list_checkpoints(os.path.join(run_dir, "checkpoints"))
    assert [os.path.basename(p) for p in paths] == ["epoch-0003.weights.h5", "epoch-0004.weights.h5"]
    snapshots = []
    for path in paths:
        model.load_weights(path)
        snapshots.append(_weights(model))
    assert any(not np.array_equal(a, b) for a, b in zip(*snapshots))
    training.average_last_checkpoints(model, run_dir, n=2)
    for value, a, b in zip(_weights(model), *snapshots):
        np.testing.assert_allclose(value, (a + b) / 2, rtol=1e-6, atol=1e-7)


def test_time_budget_stops_after_one_step(tmp_path):
    model = _model()
    history = training.train(model, _stream(), 10, 5, str(tmp_path), minutes=1e-9, verbose=0)
    assert int(model.optimizer.iterations.numpy()) == 1
    assert len(history["loss"]) == 1


def test_validation_loss_and_tensorboard_logs(tmp_path):
    model = _model()
    validation = _stream(seed=1).take(3)
    history = training.train(
        model, _stream(), 5, 2, str(tmp_path), validation_data=validation, early_stopping_patience=3, verbose=0,
        tensorboard=True,  # the default on TensorFlow's backend only
    )
    assert len(history["val_loss"]) == 2 and np.isfinite(history["val_loss"]).all()
    assert os.listdir(tmp_path / "logs" / "train")
    best = int(np.argmin(history["val_loss"])) + 1
    model.load_weights(str(tmp_path / "best.weights.h5"))
    checkpoint = kt.Transformer(VOCAB, VOCAB, num_layers=1, d_model=16, num_heads=2, d_ff=32, max_length=32)
    checkpoint.build()
    training.compile_for_translation(checkpoint).optimizer.build(checkpoint.trainable_variables)
    checkpoint.load_weights(str(tmp_path / "checkpoints" / f"epoch-{best:04d}.weights.h5"))
    for a, b in zip(_weights(model), _weights(checkpoint)):
        np.testing.assert_array_equal(a, b)


def test_train_rejects_an_uncompiled_model(tmp_path):
    model = kt.Transformer(VOCAB, VOCAB, num_layers=1, d_model=16, num_heads=2, d_ff=32)
    with pytest.raises(ValueError, match="built and compiled"):
        training.train(model, _stream(), 1, 1, str(tmp_path))


@pytest.mark.tensorflow_only  # tensorflow-text tokenizes the slice
def test_loss_falls_on_a_multi30k_slice(tmp_path, multi30k_train_slice, multi30k_tokenizer):
    tok = multi30k_tokenizer
    en, de = multi30k_train_slice
    pairs = data.tokenized_pairs(tok, en[:300], de[:300], max_length=48)
    stream = data.token_batches(pairs, 1024, 48, shuffle=True, repeat=True)
    model = kt.Transformer(tok.vocab_size, tok.vocab_size, num_layers=1, d_model=64, num_heads=4, d_ff=128, dropout=0.0)
    model.build()
    training.compile_for_translation(model, warmup_steps=50, learning_rate_scale=0.4)
    # The loss on four fixed batches, before and after: epoch means of
    # different batches are too noisy to ask for a fall at every epoch.
    fixed = data.token_batches(pairs, 1024, 48, shuffle=False).take(4)
    before = model.evaluate(fixed, verbose=0)[0]
    history = training.train(model, stream, steps_per_epoch=15, epochs=7, run_dir=str(tmp_path), verbose=0)
    after = model.evaluate(fixed, verbose=0)[0]
    assert after < 0.75 * before, (before, after)
    losses = history["loss"]  # epoch means of the label-smoothed loss
    assert np.mean(losses[-2:]) < 0.75 * np.mean(losses[:2]), losses


def test_compiled_model_loads_with_only_the_package_imported(tmp_path):
    import subprocess
    import sys

    model = _model()
    model.fit(_stream().take(2), steps_per_epoch=2, epochs=1, verbose=0)
    path = str(tmp_path / "model.keras")
    model.save(path)
    script = (
        "import sys, keras, keras_transformer\n"
        "model = keras.saving.load_model(sys.argv[1])\n"
        "print(type(model.optimizer._learning_rate).__name__, int(model.optimizer.iterations.numpy()))\n"
    )
    result = subprocess.run([sys.executable, "-c", script, path], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split()[-2:] == ["WarmupInverseSqrt", "2"]


def _linear_model(warmup_steps=2):
    model = kt.Transformer(VOCAB, VOCAB, num_layers=1, d_model=16, num_heads=2, d_ff=32, dropout=0.0, max_length=32)
    model.build()
    return training.compile_for_translation(model, warmup_steps=warmup_steps, schedule="linear")


def test_linear_schedule_ends_at_zero_with_the_run(tmp_path):
    model = _linear_model()
    schedule = model.optimizer._learning_rate
    training.train(model, _stream(), 4, 2, str(tmp_path), verbose=0)
    assert schedule.total_steps == 8
    assert float(model.optimizer.learning_rate) == 0.0
    # The compiled step reads the end live: at a rate of zero a step changes
    # nothing; moving the end on makes the next step change the weights.
    ds = _stream(seed=3)
    before = _weights(model)
    model.fit(ds, steps_per_epoch=2, epochs=1, verbose=0)
    assert all(np.array_equal(a, b) for a, b in zip(before, _weights(model)))
    schedule.set_total_steps(100)
    model.fit(ds, steps_per_epoch=1, epochs=1, verbose=0)
    assert any(not np.array_equal(a, b) for a, b in zip(before, _weights(model)))


class _FakeClock:
    """Advances one second at every reading after the first."""

    def __init__(self):
        self.now = -1.0

    def __call__(self):
        self.now += 1.0
        return self.now


class _RecordTotal(keras.callbacks.Callback):
    def __init__(self, schedule):
        super().__init__()
        self.schedule, self.totals = schedule, []

    def on_train_batch_end(self, batch, logs=None):
        self.totals.append(self.schedule.total_steps)


def test_time_budget_moves_the_decay_end_to_when_time_runs_out():
    model = _linear_model()
    schedule = model.optimizer._learning_rate
    if keras.backend.backend() == "jax":
        # JAX compiles the step with the end it has then: a clear refusal.
        with pytest.raises(ValueError, match="JAX backend"):
            training.TimeBudget(12 / 60, schedule, max_steps=1000)
        return
    # One step a second and a 12-second budget: the run ends at step 12.
    budget = training.TimeBudget(12 / 60, schedule, max_steps=1000, clock=_FakeClock())
    record = _RecordTotal(schedule)
    model.fit(_stream(), steps_per_epoch=50, epochs=1, callbacks=[budget, record], verbose=0)
    assert int(model.optimizer.iterations.numpy()) == 12
    assert record.totals[:11] == [12] * 11
    assert float(schedule(12)) == 0.0
    # An epochs limit that comes before the budget wins.
    model = _linear_model()
    schedule = model.optimizer._learning_rate
    budget = training.TimeBudget(12 / 60, schedule, max_steps=6, clock=_FakeClock())
    model.fit(_stream(), steps_per_epoch=3, epochs=1, callbacks=[budget], verbose=0)
    assert schedule.total_steps == 6


def _as_fit_input(stream):
    return stream.as_tf_dataset() if keras.backend.backend() == "tensorflow" else stream


def test_train_takes_token_batches_whose_first_batches_share_a_width(tmp_path):
    # On TensorFlow's backend Keras fixes a PyDataset's shapes from its first
    # two batches (keras/src/trainers/data_adapters/py_dataset_adapter.py,
    # get_tf_dataset): here two of width 4, then one of 10, which failed the
    # epoch before `train` converted the stream. Validation on a TokenBatches
    # uses one fixed pass: Keras calls its on_epoch_end during every
    # evaluation, which regrouped the batches each time.
    short, long = ([2, 5, 6, 7, 3], [2, 7, 6, 5, 3]), ([2, *range(4, 13), 3], [2, *range(12, 3, -1), 3])
    data.save_token_arrays(str(tmp_path / "train.npz"), [short] * 4 + [long])
    on_tensorflow = keras.backend.backend() == "tensorflow"
    # (Elsewhere one padded shape, for jax.jit: the widths matter on TensorFlow's backend only.)
    shapes = {} if on_tensorflow else dict(pad_to_bucket_boundary=True, fill_batches=True)
    batches = data.TokenBatches(str(tmp_path / "train.npz"), tokens_per_batch=16, max_length=16, shuffle=False,
                                boundaries=[8, 17] if on_tensorflow else [17], **shapes)
    if on_tensorflow:
        assert [batches[i][1].shape[1] for i in range(len(batches))] == [4, 4, 10]
    data.save_token_arrays(str(tmp_path / "val.npz"), _pairs(7, 40))
    val = data.TokenBatches(str(tmp_path / "val.npz"), tokens_per_batch=64, max_length=16, seed=3,
                            boundaries=[17], pad_to_bucket_boundary=True, fill_batches=True)  # one shape for jit
    assert len(val) > 2
    model = _model()
    history = training.train(model, batches.stream(), len(batches), 2, str(tmp_path / "run"), validation_data=val,
                             verbose=0)
    assert len(history["loss"]) == 2 and np.isfinite(history["loss"]).all()
    fixed = model.evaluate(_as_fit_input(val.stream().take(len(val))), verbose=0)[0]
    np.testing.assert_allclose(history["val_loss"][-1], fixed, rtol=1e-5)
    assert val.epoch == 0


def test_train_refuses_streams_it_cannot_resume_exactly(tmp_path):
    stream = _stream(kind="arrays")
    # A finite stream starts again when it runs out; `skip` on resuming would not.
    with pytest.raises(ValueError, match="endless"):
        training.train(_model(), stream.take(5), 4, 2, str(tmp_path))
    # Keras's enqueuer (used when workers > 1, or workers > 0 with processes:
    # keras/src/trainers/data_adapters/py_dataset_adapter.py) starts the
    # first fit at the second batch (it reads one to build the metrics, then
    # resets). On TensorFlow's backend `train` reads a TokenStream through
    # tf.data instead, in the training thread, so there it is taken.
    on_tensorflow = keras.backend.backend() == "tensorflow"
    for index, kwargs in enumerate((dict(workers=2), dict(use_multiprocessing=True))):
        threaded = data.TokenBatches(_arrays_file(0, 96), 128, 16).stream(**kwargs)
        if on_tensorflow:
            training.train(_model(), threaded, 1, 1, str(tmp_path / f"threaded-{index}"), verbose=0)
        else:
            with pytest.raises(ValueError, match="workers=1"):
                training.train(_model(), threaded, 4, 2, str(tmp_path))

    class Threaded(keras.utils.PyDataset):  # not a TokenStream: Keras's enqueuer reads it on every backend
        def __init__(self):
            super().__init__(workers=2)

        num_batches = None

        def __getitem__(self, index):
            return stream[index]

        def skip(self, count):
            return self

    with pytest.raises(ValueError, match="workers=1"):
        training.train(_model(), Threaded(), 4, 2, str(tmp_path))
    with pytest.raises(ValueError, match="skip"):
        training.train(_model(), [1, 2, 3], 4, 2, str(tmp_path))
    # A TokenBatches is one epoch: the error names the stream to pass instead.
    with pytest.raises(ValueError, match=r"batches\.stream\(\)"):
        training.train(_model(), data.TokenBatches(_arrays_file(0, 96), 128, 16), 4, 2, str(tmp_path))


def test_train_refuses_validation_data_that_never_ends(tmp_path):
    # Keras evaluates until the data runs out: an endless stream hung the run.
    val = data.TokenBatches(_arrays_file(1, 32), 128, 16)
    with pytest.raises(ValueError, match=r"take\(k\)"):
        training.train(_model(), _stream(kind="arrays"), 4, 1, str(tmp_path), validation_data=val.stream())
    training.train(_model(), _stream(kind="arrays"), 1, 1, str(tmp_path / "taken"),
                   validation_data=val.stream().take(2), verbose=0)


@pytest.mark.tensorflow_only  # tf.data datasets
def test_train_refuses_finite_or_endless_tf_data_where_it_cannot_work(tmp_path):
    import tensorflow as tf

    stream = _stream(kind="arrays")
    finite = tf.data.Dataset.from_generator(lambda: (stream[i] for i in range(4)), output_signature=(
        {"source": tf.TensorSpec([None, None], tf.int32), "target": tf.TensorSpec([None, None], tf.int32)},
        tf.TensorSpec([None, None], tf.int32))).apply(tf.data.experimental.assert_cardinality(4))
    with pytest.raises(ValueError, match=r"has 4 batches"):
        training.train(_model(), finite, 4, 2, str(tmp_path))
    with pytest.raises(ValueError, match=r"repeats forever"):
        training.train(_model(), finite.repeat(), 4, 2, str(tmp_path), validation_data=finite.repeat())
