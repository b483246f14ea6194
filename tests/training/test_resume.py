"""Resuming `training.train` after a kill: every batch at its position, the
best checkpoint and early stopping's state kept, backups all or nothing."""

import os

import keras
import numpy as np
import pytest

import keras_transformer as kt
from keras_transformer import training
from tests.training.test_fit import VOCAB
from tests.training.test_fit import Interrupt
from tests.training.test_fit import _model
from tests.training.test_fit import _stream
from tests.training.test_fit import _weights
from tests.training.test_fit import stream_kinds


def _run(tmp_path, name, epochs, interrupts=(), model=_model, callbacks=(), kind=None, **kwargs):
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
            history = training.train(
                fresh, _stream(kind=kind), 6, epochs, run_dir, backup_every=4, callbacks=extra, verbose=0, **kwargs
            )
        except KeyboardInterrupt:
            resumed_at.append(training.StepBackup(os.path.join(run_dir, "backup")).restore(model()))
            continue
        assert interrupt is None, f"{interrupt} did not happen"
    return fresh, history, resumed_at


@pytest.mark.parametrize("kind", stream_kinds())
def test_a_run_interrupted_in_an_early_epoch_resumes_exactly(tmp_path, kind):
    # Four epochs of 6 batches, backups every 4 batches and at epoch ends.
    # Killed after batch 5 (resumes at 4, in the first epoch), then after
    # batch 10 (resumes at 8: that kill came in the second `fit` call, after
    # the interrupted epoch was finished). The last run finishes epoch 2 and
    # runs epochs 3 and 4 in a second `fit`. Every batch must be the one the
    # straight run had at that position (dropout is on: its random state is
    # in the backup too), so the weights end equal. On every backend with a
    # TokenStream (a keras.utils.PyDataset), and on TensorFlow's with tf.data.
    straight, _, _ = _run(tmp_path, "straight", 4, kind=kind)
    resumed, history, resumed_at = _run(tmp_path, "resumed", 4, [dict(after=5), dict(after=6)], kind=kind)
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


def test_the_validation_of_an_epoch_cut_short_still_updates_the_best_checkpoint(tmp_path):
    # A budget that runs out in the first epoch: its validation is of real
    # weights (with a linear schedule, the annealed last ones).
    history = training.train(
        _model(), _stream(), 4, 2, str(tmp_path), validation_data=_stream(seed=1).take(1),
        early_stopping_patience=1, minutes=1e-9, verbose=0,
    )
    assert len(history["val_loss"]) == 1
    assert os.path.exists(tmp_path / "best.weights.h5")
    # The early-stopping count waits for whole epochs.
    assert training.train(_model(), _stream(), 4, 2, str(tmp_path), validation_data=_stream(seed=1).take(1),
                          early_stopping_patience=1, minutes=1e-9, verbose=0) != {}


@pytest.mark.tensorflow_only  # a tf.data dataset of unknown length
def test_the_watches_work_in_a_plain_fit_of_unknown_length(tmp_path):
    # Keras gives callbacks no step count for a dataset of unknown length.
    import tensorflow as tf

    model = _model()
    finite = _stream().take(3).filter(lambda x, y: tf.shape(y)[0] > 0)
    best = training.BestCheckpoint(str(tmp_path / "best.weights.h5"))
    stop = training.EarlyStopping(patience=1)
    model.fit(finite, validation_data=finite, epochs=2, callbacks=[best, stop], verbose=0)
    assert os.path.exists(tmp_path / "best.weights.h5") and np.isfinite(best.best)
    # Without the monitored value, a warning instead of a silent no-op.
    with pytest.warns(UserWarning, match="val_missing"):
        model.fit(
            finite, epochs=1, callbacks=[training.BestCheckpoint(str(tmp_path / "x.weights.h5"), "val_missing")],
            verbose=0,
        )
