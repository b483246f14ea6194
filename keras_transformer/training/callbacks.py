"""Callbacks for long training runs: step-exact backups, kept epoch
checkpoints, and a wall-clock budget."""

import glob
import json
import os
import re
import time
import warnings
from typing import Dict, List, Optional

import keras
import numpy as np

from keras_transformer.layers import validation


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
    """Backs up everything needed to resume a run at the exact batch it
    stopped at: weights, optimizer state, dropout random states, the count
    of batches consumed, and the state of the callbacks given in `stateful`.

    Unlike `keras.callbacks.BackupAndRestore`, which restarts an interrupted
    epoch from its first batch, this records the number of batches the run
    has consumed; `train` then skips them, so a resumed run sees the same
    batches and ends with the same weights as one that never stopped. The
    count is its own, not the optimizer's `iterations`: a
    `LossScaleOptimizer` (mixed_float16) does not advance `iterations` on a
    step whose gradients overflowed, though the batch was consumed.

    A backup is all or nothing: the weights go to a new file and the small
    JSON record that names it is renamed into place last, so a kill at any
    point leaves the previous backup whole.

    Args:
        backup_dir: str, a directory used only by this callback.
        save_freq: int, batches between backups; a backup is also written at
            every epoch end.
        stateful: dict of name -> callback with `get_state()` and
            `set_state(state)` (JSON-serializable), saved with each backup
            and restored by `restore`. Put this callback after them in the
            callback list, so an epoch-end backup holds their updated state.
    """

    def __init__(self, backup_dir: str, save_freq: int = 100, stateful: Optional[Dict] = None):
        super().__init__()
        validation.check_positive_int("save_freq", save_freq)
        self.backup_dir = backup_dir
        self.save_freq = save_freq
        self.stateful = dict(stateful or {})
        self._meta = os.path.join(backup_dir, "backup.json")
        self.step = 0
        self._epoch_start = 0
        self._saved_step = 0

    def exists(self) -> bool:
        return os.path.exists(self._meta)

    def restore(self, model) -> int:
        """Loads the backup into `model` (built, compiled) and the stateful
        callbacks; returns the number of batches consumed when it was taken
        (0 when there is none)."""
        self.step = self._saved_step = 0
        if not self.exists():
            return 0
        with open(self._meta) as f:
            meta = json.load(f)
        if "weights" not in meta:
            raise ValueError(
                f"{self._meta} was written by an earlier keras_transformer (before backups "
                "named their weights file); resume it with that version or remove the directory"
            )
        if not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)
        model.load_weights(os.path.join(self.backup_dir, meta["weights"]))
        seeds = _seed_states(model)
        if len(seeds) != len(meta["seeds"]):
            raise ValueError(
                f"Backup in {self.backup_dir} holds {len(meta['seeds'])} dropout random states; "
                f"the model has {len(seeds)}: it is not this model's backup"
            )
        for variable, value in zip(seeds, meta["seeds"]):
            variable.assign(np.asarray(value, dtype=variable.dtype))
        if int(model.optimizer.iterations.numpy()) != meta["iterations"]:
            raise ValueError(
                f"Backup in {self.backup_dir} is inconsistent: its record says optimizer step "
                f"{meta['iterations']}, its weights file {int(model.optimizer.iterations.numpy())}"
            )
        for name, state in meta["callbacks"].items():
            if name in self.stateful:
                self.stateful[name].set_state(state)
        self.step = self._saved_step = int(meta["step"])
        return self.step

    def save(self):
        os.makedirs(self.backup_dir, exist_ok=True)
        weights = f"backup-{self.step:010d}.weights.h5"
        save_weights_atomically(self.model, os.path.join(self.backup_dir, weights))
        meta = {
            "step": self.step,
            "iterations": int(self.model.optimizer.iterations.numpy()),
            "weights": weights,
            "seeds": [np.asarray(v.numpy()).tolist() for v in _seed_states(self.model)],
            "callbacks": {name: callback.get_state() for name, callback in self.stateful.items()},
        }
        _atomic_json(self._meta, meta)  # the commit point
        for old in glob.glob(os.path.join(self.backup_dir, "backup-*.weights.h5")):
            if os.path.basename(old) != weights:
                os.remove(old)
        self._saved_step = self.step

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_start = self.step

    def on_train_batch_end(self, batch, logs=None):
        # `batch` is the epoch's last batch index run (steps_per_execution
        # may run several per call).
        self.step = self._epoch_start + batch + 1
        if batch + 1 == (self.params or {}).get("steps"):
            # The epoch's last batch: its backup waits for the epoch end, so
            # a kill during validation resumes before the epoch ended and
            # runs its validation and epoch-end callbacks again.
            return
        if self.step // self.save_freq > self._saved_step // self.save_freq:
            self.save()

    def on_epoch_end(self, epoch, logs=None):
        self.save()


class _ValidationWatch(keras.callbacks.Callback):
    """Tracks the lowest `monitor` value seen at epoch ends.

    An epoch without the monitored value (`validation_freq` > 1) is skipped,
    with a warning the first time.
    """

    def __init__(self, monitor: str = "val_loss"):
        super().__init__()
        self.monitor = monitor
        self.best = float("inf")
        self._warned = False

    def _improved(self, logs):
        """None when this epoch end does not count, else whether `monitor`
        reached a new low."""
        value = (logs or {}).get(self.monitor)
        if value is None:
            if not self._warned:
                warnings.warn(
                    f"{type(self).__name__}: `{self.monitor}` is not in this epoch's logs "
                    f"(keys: {sorted(logs or {})}); the epoch is skipped"
                )
                self._warned = True
            return None
        if value < self.best:
            self.best = float(value)
            return True
        return False

    def _best_state(self):
        return None if self.best == float("inf") else self.best

    def _set_best(self, value):
        self.best = float("inf") if value is None else float(value)


class BestCheckpoint(_ValidationWatch):
    """Saves the weights (atomically) whenever `monitor` reaches a new low.

    Unlike `keras.callbacks.ModelCheckpoint(save_best_only=True)`, whose best
    value starts at infinity in every new process, its state is restorable
    (`get_state` / `set_state`, kept by `StepBackup`), so the first
    validation after a restart does not overwrite a better checkpoint.
    Every validation counts, that of an epoch cut short by a `TimeBudget`
    too (at the end of a run with a linear schedule, often the best).

    Args:
        path: str, a `.weights.h5` file.
        monitor: str, the logged value to minimize. Default "val_loss".
    """

    def __init__(self, path: str, monitor: str = "val_loss"):
        super().__init__(monitor)
        self.path = path

    def on_epoch_end(self, epoch, logs=None):
        if self._improved(logs):
            save_weights_atomically(self.model, self.path)

    def get_state(self):
        return {"best": self._best_state()}

    def set_state(self, state):
        self._set_best(state["best"])


class EarlyStopping(_ValidationWatch):
    """Stops training after `patience` epochs without a new low of
    `monitor`.

    Unlike `keras.callbacks.EarlyStopping`, it does not reset its count at
    the start of every `fit` call, and its state is restorable (kept by
    `StepBackup`), so a run that is interrupted and resumed stops at the
    same epoch as one that never stopped. Only whole epochs count: an epoch
    that a `TimeBudget` cut short is counted when a resumed run finishes it.

    Args:
        patience: int, epochs without improvement before stopping.
        monitor: str, the logged value to minimize. Default "val_loss".
    """

    def __init__(self, patience: int, monitor: str = "val_loss"):
        super().__init__(monitor)
        validation.check_positive_int("patience", patience)
        self.patience = patience
        self.wait = 0
        self._batches = 0

    @property
    def stopped(self) -> bool:
        return self.wait >= self.patience

    def on_epoch_begin(self, epoch, logs=None):
        self._batches = 0

    def on_train_batch_end(self, batch, logs=None):
        self._batches = batch + 1

    def on_epoch_end(self, epoch, logs=None):
        # An epoch that Keras ended early (a `TimeBudget` stop) is finished,
        # and validated again, when the run resumes: only whole epochs count.
        if self._batches < ((self.params or {}).get("steps") or 0):
            return
        improved = self._improved(logs)
        if improved is None:
            return
        self.wait = 0 if improved else self.wait + 1
        if self.stopped:
            self.model.stop_training = True

    def get_state(self):
        return {"best": self._best_state(), "wait": self.wait}

    def set_state(self, state):
        self._set_best(state["best"])
        self.wait = int(state["wait"])


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


def checkpoint_epoch(path: str) -> int:
    """The 1-based epoch of an `epoch-NNNN.weights.h5` file."""
    return int(re.search(r"epoch-(\d+)\.weights\.h5$", path).group(1))


def list_checkpoints(directory: str) -> List[str]:
    """`epoch-NNNN.weights.h5` files in `directory`, oldest first."""
    return sorted(glob.glob(os.path.join(directory, "epoch-*.weights.h5")), key=checkpoint_epoch)


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
        if schedule is not None and keras.backend.backend() == "jax":
            # JAX traces the train step once: a schedule end moved later is never seen.
            raise ValueError(
                "TimeBudget cannot move a schedule's end on the JAX backend (its compiled train step "
                "reads the end once). Give the schedule its total_steps, or pass schedule=None."
            )
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
