import os

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_transformer as kt
from keras_transformer import data
from keras_transformer import training

VOCAB = 40


def _stream(seed=0, num_pairs=96, batch_multiple=1):
    """An endless, deterministic stream of small padded translation batches."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(3, 12, size=num_pairs)
    sources = [rng.integers(4, VOCAB, size=n).tolist() for n in lengths]
    pairs = tf.data.Dataset.from_generator(
        lambda: ((np.array([2, *s, 3]), np.array([2, *s[::-1], 3])) for s in sources),
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


def _run(tmp_path, name, epochs, interrupts=(), model=_model, callbacks=(), **kwargs):
    """Trains a fresh seeded model for `epochs` of 6 steps in run_dir `name`,
    killed at each of `interrupts` and resumed (each time in a fresh model,
    as a new process would be), until it ends."""
    run_dir = str(tmp_path / name)
    resumed_at = []
    for interrupt in [*interrupts, None]:
        keras.utils.set_random_seed(5)
        fresh = model()
        extra = [*callbacks, *([Interrupt(**interrupt)] if interrupt else [])]
        try:
            history = training.train(fresh, _stream(), 6, epochs, run_dir, backup_every=4, callbacks=extra, verbose=0, **kwargs)
        except KeyboardInterrupt:
            resumed_at.append(training.StepBackup(os.path.join(run_dir, "backup")).restore(model()))
            continue
        assert interrupt is None, f"{interrupt} did not happen"
    return fresh, history, resumed_at


def test_a_run_interrupted_in_an_early_epoch_resumes_exactly(tmp_path):
    # Four epochs of 6 batches, backups every 4 batches and at epoch ends.
    # Killed after batch 5 (resumes at 4, in the first epoch), then after
    # batch 10 (resumes at 8: that kill came in the second `fit` call, after
    # the interrupted epoch was finished). The last run finishes epoch 2 and
    # runs epochs 3 and 4 in a second `fit`. Every batch must be the one the
    # straight run had at that position (dropout is on: its random state is
    # in the backup too), so the weights end equal.
    straight, _, _ = _run(tmp_path, "straight", 4)
    resumed, history, resumed_at = _run(tmp_path, "resumed", 4, [dict(after=5), dict(after=6)])
    assert resumed_at == [4, 8]
    assert int(resumed.optimizer.iterations.numpy()) == 24
    assert len(history["loss"]) == 3  # the rest of epoch 2, epochs 3 and 4
    for a, b in zip(_weights(straight), _weights(resumed)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


class _ValLosses(keras.callbacks.Callback):
    """Replaces the epoch's val_loss by a fixed sequence (callbacks after it
    in the list see the same logs dict)."""

    def __init__(self, values):
        super().__init__()
        self.values = values

    def on_epoch_end(self, epoch, logs=None):
        logs["val_loss"] = self.values[epoch]


def test_best_checkpoint_and_early_stopping_survive_restarts(tmp_path):
    # val_loss falls to its low at epoch 2, then rises: with patience 2 a run
    # stops after epoch 4, and best.weights.h5 holds epoch 2's weights. This
    # one is killed before epoch 4 begins (resumes at batch 18) and after
    # batch 21 (resumes at 20, inside epoch 4), so epoch 4's validation comes
    # in a third process. Keras's ModelCheckpoint and EarlyStopping would
    # start that process from best = inf and a count of 0: it would overwrite
    # best.weights.h5 with epoch 4's weights and train on.
    values = [3.0, 2.0, 2.5, 2.6, 2.7, 2.8]
    kwargs = dict(validation_data=_stream(seed=1).take(1), early_stopping_patience=2)
    model, _, resumed_at = _run(
        tmp_path, "run", 6, [dict(epoch=3), dict(after=3)], callbacks=[_ValLosses(values)], **kwargs
    )
    assert resumed_at == [18, 20]
    assert int(model.optimizer.iterations.numpy()) == 24  # stopped after epoch 4
    run_dir = str(tmp_path / "run")
    best, epoch_2 = _model(), _model()
    best.load_weights(os.path.join(run_dir, "best.weights.h5"))
    epoch_2.load_weights(os.path.join(run_dir, "checkpoints", "epoch-0002.weights.h5"))
    for a, b in zip(_weights(best), _weights(epoch_2)):
        np.testing.assert_array_equal(a, b)
    # Run again after the early stop, it trains no further.
    assert training.train(model, _stream(), 6, 6, run_dir, verbose=0, **kwargs) == {}
    assert int(model.optimizer.iterations.numpy()) == 24


def _float16_model():
    # mixed_float16 with a loss scale so large that the first steps' float16
    # gradients overflow: LossScaleOptimizer skips those updates (and does
    # not count them in `iterations`) while halving the scale.
    keras.config.set_dtype_policy("mixed_float16")
    model = kt.Transformer(VOCAB, VOCAB, num_layers=1, d_model=16, num_heads=2, d_ff=32, dropout=0.1, max_length=32)
    model.build()
    base = training.translation_optimizer(16, 20)
    # From 2**28 the scale halves to about 2**17 before a step goes
    # through: 11 of the first 18 steps overflow here.
    optimizer = keras.optimizers.LossScaleOptimizer(base, initial_scale=2.0**28)
    return training.compile_for_translation(model, optimizer=optimizer)


def test_resume_counts_batches_not_optimizer_steps_under_loss_scaling(tmp_path):
    straight, _, _ = _run(tmp_path, "straight", 3, model=_float16_model)
    skipped = 18 - int(straight.optimizer.iterations.numpy())
    assert 4 <= skipped <= 14  # the overflows happened, and some steps were applied
    assert training.StepBackup(str(tmp_path / "straight" / "backup")).restore(_float16_model()) == 18
    # Killed after batch 9: resumes at batch 8, though the optimizer counts
    # fewer steps.
    resumed, _, resumed_at = _run(tmp_path, "resumed", 3, [dict(after=9)], model=_float16_model)
    assert resumed_at == [8]
    assert int(resumed.optimizer.iterations.numpy()) == 18 - skipped
    for a, b in zip(_weights(straight), _weights(resumed)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_a_backup_is_all_or_nothing(tmp_path, monkeypatch):
    model = _model()
    backup_dir = str(tmp_path / "backup")
    training.train(model, _stream(), 4, 1, str(tmp_path), backup_every=4, verbose=0)
    at_4 = _weights(model)
    # A kill after the new weights file is written, before the record that
    # names it: the backup still restores step 4 whole.
    def killed(path, obj):
        raise KeyboardInterrupt("killed while writing the backup record")

    monkeypatch.setattr(training.callbacks, "_atomic_json", killed)
    with pytest.raises(KeyboardInterrupt):
        training.train(model, _stream(), 4, 2, str(tmp_path), backup_every=4, verbose=0)
    monkeypatch.undo()
    assert not all(np.array_equal(a, b) for a, b in zip(at_4, _weights(model)))
    fresh = _model()
    assert training.StepBackup(backup_dir).restore(fresh) == 4
    for a, b in zip(at_4, _weights(fresh)):
        np.testing.assert_array_equal(a, b)
    # A backup of an earlier format is refused with a clear message.
    with open(os.path.join(backup_dir, "backup.json"), "w") as f:
        f.write('{"step": 4}')
    with pytest.raises(ValueError, match="earlier keras_transformer"):
        training.StepBackup(backup_dir).restore(_model())


class _KillInValidation(keras.callbacks.Callback):
    def __init__(self, epoch):
        super().__init__()
        self.epoch, self.current = epoch, None

    def on_epoch_begin(self, epoch, logs=None):
        self.current = epoch

    def on_test_begin(self, logs=None):
        if self.current == self.epoch:
            raise KeyboardInterrupt("killed during validation")


def test_a_kill_during_validation_reruns_that_epoch_end(tmp_path):
    # backup_every divides steps_per_epoch: the epoch's last batch must not
    # be backed up before its validation, or a kill there would resume in
    # the next epoch and that epoch's validation and checkpoint never come.
    run_dir = str(tmp_path)
    kwargs = dict(validation_data=_stream(seed=1).take(1), backup_every=3, verbose=0)
    with pytest.raises(KeyboardInterrupt):
        training.train(_model(), _stream(), 6, 3, run_dir, callbacks=[_KillInValidation(1)], **kwargs)
    assert training.StepBackup(os.path.join(run_dir, "backup")).restore(_model()) == 9
    history = training.train(_model(), _stream(), 6, 3, run_dir, **kwargs)
    assert len(history["val_loss"]) == 2  # epochs 2 and 3
    names = [os.path.basename(p) for p in training.callbacks.list_checkpoints(os.path.join(run_dir, "checkpoints"))]
    assert names == ["epoch-0001.weights.h5", "epoch-0002.weights.h5", "epoch-0003.weights.h5"]


def test_epochs_cut_short_by_the_time_budget_do_not_count_for_early_stopping(tmp_path):
    # Chained one-step jobs (a budget that runs out after each batch): the
    # epoch that each one ends early is finished by the next, so only whole
    # epochs count. Patience 2 with a flat val_loss stops after epoch 3,
    # batch 12 of 4-batch epochs, as one uninterrupted run would.
    kwargs = dict(validation_data=_stream(seed=1).take(1), early_stopping_patience=2, minutes=1e-9, verbose=0)
    model = _model()
    for _ in range(14):
        history = training.train(model, _stream(), 4, 6, str(tmp_path), callbacks=[_ValLosses([2.0] * 6)], **kwargs)
        if history == {}:
            break
    assert int(model.optimizer.iterations.numpy()) == 12


def test_train_refuses_epochs_that_steps_per_execution_does_not_divide(tmp_path):
    model = kt.Transformer(VOCAB, VOCAB, num_layers=1, d_model=16, num_heads=2, d_ff=32, max_length=32)
    model.build()
    model.compile(optimizer="adam", loss=training.MaskedCrossEntropy(), steps_per_execution=4)
    with pytest.raises(ValueError, match="steps_per_execution"):
        training.train(model, _stream(), 10, 1, str(tmp_path))


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
        model, _stream(), 5, 2, str(tmp_path), validation_data=validation, early_stopping_patience=3, verbose=0
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
