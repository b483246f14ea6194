"""Callbacks for long training runs: step-exact backups, kept epoch
checkpoints, and a wall-clock budget."""

import glob
import json
import os
import re
import time
from typing import List

import keras
import numpy as np


def _seed_states(model):
    """Dropout random-number states, which `save_weights` leaves out."""
    return [v for v in model.variables if "seed_generator" in v.path]


def _atomic_json(path, obj):
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f)
    os.replace(tmp, path)


def save_weights_atomically(model, path):
    """`model.save_weights(path)` through a temporary file renamed into
    place, so a kill mid-save leaves the previous file intact."""
    # Keras picks the format from the suffix, so the temporary name keeps it.
    tmp = os.path.join(os.path.dirname(path), "tmp.weights.h5")
    model.save_weights(tmp, overwrite=True)
    os.replace(tmp, path)


def save_epoch_checkpoint(model, directory, epoch):
    """Writes `directory/epoch-NNNN.weights.h5` for the 1-based `epoch`."""
    os.makedirs(directory, exist_ok=True)
    save_weights_atomically(model, os.path.join(directory, f"epoch-{epoch:04d}.weights.h5"))


class StepBackup(keras.callbacks.Callback):
    """Backs up everything needed to resume a run at the exact step it
    stopped at: weights, optimizer state (its step counter included) and
    dropout random states.

    Unlike `keras.callbacks.BackupAndRestore`, which restarts an interrupted
    epoch from its first batch, this records the global step; `train` then
    skips the batches already seen, so a resumed run sees the same batches
    and ends with the same weights as one that never stopped. Files are
    written to temporary names and renamed, so a kill during a save leaves
    the previous backup intact.

    Args:
        backup_dir: str, a directory used only by this callback.
        save_freq: int, steps between backups; a backup is also written at
            every epoch end and when training ends.
    """

    def __init__(self, backup_dir: str, save_freq: int = 100):
        super().__init__()
        if not isinstance(save_freq, int) or save_freq <= 0:
            raise ValueError(f"`save_freq` must be a positive int. Received: {save_freq!r}")
        self.backup_dir = backup_dir
        self.save_freq = save_freq
        self._weights = os.path.join(backup_dir, "backup.weights.h5")
        self._seeds = os.path.join(backup_dir, "seeds.npy")
        self._meta = os.path.join(backup_dir, "backup.json")

    def exists(self) -> bool:
        return os.path.exists(self._meta)

    def restore(self, model) -> int:
        """Loads the backup into `model` (built, compiled); returns the step
        it was taken at, or 0 when there is none."""
        if not self.exists():
            return 0
        if not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)
        model.load_weights(self._weights)
        states = np.load(self._seeds)
        for variable, value in zip(_seed_states(model), states):
            variable.assign(value)
        with open(self._meta) as f:
            step = json.load(f)["step"]
        if int(model.optimizer.iterations.numpy()) != step:
            raise ValueError(
                f"Backup in {self.backup_dir} is inconsistent: metadata says step {step}, "
                f"optimizer says {int(model.optimizer.iterations.numpy())}"
            )
        return step

    def save(self):
        os.makedirs(self.backup_dir, exist_ok=True)
        save_weights_atomically(self.model, self._weights)
        seeds = np.stack([np.asarray(v.numpy()) for v in _seed_states(self.model)] or [np.zeros(2)])
        with open(f"{self._seeds}.tmp", "wb") as f:
            np.save(f, seeds)
        os.replace(f"{self._seeds}.tmp", self._seeds)
        _atomic_json(self._meta, {"step": int(self.model.optimizer.iterations.numpy())})

    def on_train_batch_end(self, batch, logs=None):
        if int(self.model.optimizer.iterations.numpy()) % self.save_freq == 0:
            self.save()

    def on_epoch_end(self, epoch, logs=None):
        self.save()


class EpochCheckpoints(keras.callbacks.Callback):
    """Saves the weights at every epoch end as `epoch-NNNN.weights.h5`,
    keeping the newest `keep` files (for checkpoint averaging).

    Args:
        directory: str.
        keep: int, how many of the newest checkpoints to keep. Default 10.
    """

    def __init__(self, directory: str, keep: int = 10):
        super().__init__()
        self.directory = directory
        self.keep = keep

    def on_epoch_end(self, epoch, logs=None):
        save_epoch_checkpoint(self.model, self.directory, epoch + 1)
        for old in list_checkpoints(self.directory)[: -self.keep]:
            os.remove(old)


def list_checkpoints(directory: str) -> List[str]:
    """`epoch-NNNN.weights.h5` files in `directory`, oldest first."""
    paths = glob.glob(os.path.join(directory, "epoch-*.weights.h5"))
    return sorted(paths, key=lambda p: int(re.search(r"epoch-(\d+)", p).group(1)))


class TimeBudget(keras.callbacks.Callback):
    """Stops training once `minutes` of wall-clock time have passed since
    training began; the current epoch ends early (with its validation and
    checkpoint).

    Given a `schedule` with `set_total_steps` (`WarmupLinearDecay`), it
    also moves the schedule's end to the step the budget will run out at,
    re-estimated after every batch from the steps per second so far
    (validation time included), so the learning rate reaches zero as time
    runs out even when the machine's speed changes during the run.

    Args:
        minutes: float, the budget.
        schedule: optional schedule to fit to the budget.
        max_steps: optional int, the run's last step in any case (for
            example epochs * steps_per_epoch); the estimate never exceeds it.
        clock: function returning seconds (for tests). Default
            `time.monotonic`.
    """

    def __init__(self, minutes: float, schedule=None, max_steps=None, clock=time.monotonic):
        super().__init__()
        self.seconds = 60.0 * minutes
        self.schedule = schedule
        self.max_steps = max_steps
        self.clock = clock
        self.start = None
        self.start_step = None
        self.stopped_early = False

    def on_train_begin(self, logs=None):
        if self.start is None:
            self.start = self.clock()
            self.start_step = int(self.model.optimizer.iterations.numpy())

    def on_train_batch_end(self, batch, logs=None):
        elapsed = self.clock() - self.start
        if elapsed >= self.seconds:
            self.model.stop_training = True
            self.stopped_early = True
        elif self.schedule is not None and elapsed > 0:
            step = int(self.model.optimizer.iterations.numpy())
            rate = (step - self.start_step) / elapsed
            total = step + int(rate * max(self.seconds - elapsed, 0.0))
            if self.max_steps is not None:
                total = min(total, self.max_steps)
            self.schedule.set_total_steps(max(total, step + 1, self.schedule.warmup_steps + 1))
