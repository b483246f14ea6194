"""The training entry point a script calls: `model.fit` with the callbacks a
long run needs, step-exact resumption and checkpoint averaging, on every
Keras backend."""

import importlib.util
import os
from typing import Dict, List, Optional, Sequence

import keras
import numpy as np

from keras_transformer.training.callbacks import BestCheckpoint
from keras_transformer.training.callbacks import EarlyStopping
from keras_transformer.training.callbacks import EpochCheckpoints
from keras_transformer.training.callbacks import StepBackup
from keras_transformer.training.callbacks import TimeBudget
from keras_transformer.training.callbacks import list_checkpoints
from keras_transformer.training.losses import MaskedAccuracy
from keras_transformer.training.losses import MaskedCrossEntropy
from keras_transformer.training.schedules import fit_schedule_to_run
from keras_transformer.training.schedules import translation_optimizer


def compile_for_translation(
    model,
    warmup_steps: int = 4000,
    learning_rate_scale: float = 1.0,
    label_smoothing: float = 0.1,
    jit_compile: bool = False,
    optimizer=None,
    schedule: str = "inverse_sqrt",
):
    """Compiles `model` with the paper's recipe: label-smoothed masked
    cross-entropy, masked accuracy, and Adam(0.9, 0.98, 1e-9) on the warm-up
    schedule (unless `optimizer` is given). `schedule="linear"` keeps the
    warm-up and peak but then decays linearly to zero at the end of the
    run that `train` is given (its epochs, or its time budget)."""
    if optimizer is None:
        optimizer = translation_optimizer(model.d_model, warmup_steps, learning_rate_scale, schedule)
    model.compile(
        optimizer=optimizer,
        loss=MaskedCrossEntropy(label_smoothing=label_smoothing),
        metrics=[MaskedAccuracy()],
        jit_compile=jit_compile,
    )
    return model


def train(
    model,
    train_stream,
    steps_per_epoch: int,
    epochs: int,
    run_dir: str,
    validation_data=None,
    minutes: Optional[float] = None,
    early_stopping_patience: Optional[int] = None,
    keep_checkpoints: int = 10,
    backup_every: int = 100,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    verbose="auto",
    tensorboard: Optional[bool] = None,
) -> Dict[str, List[float]]:
    """Trains a compiled, built `model` with `model.fit`, resumably.

    `run_dir` receives `logs/` (TensorBoard's), `checkpoints/` (the newest
    `keep_checkpoints` epoch-end weights, for `average_checkpoints`),
    `best.weights.h5` (lowest `val_loss`, with validation data) and
    `backup/` (a `StepBackup`). Called again with the same arguments after
    an interruption, it restores the backup and continues from the exact
    batch it reached, skipping the batches already seen; the best
    `val_loss` so far and early stopping's count of epochs without one are
    restored too, so the resumed run keeps the same best checkpoint and
    stops at the same epoch as a run that never stopped. Called again after
    early stopping, it returns at once.

    An optimizer on `WarmupLinearDecay` made without an end (as
    `compile_for_translation(schedule="linear")` makes it) decays to zero
    at `epochs * steps_per_epoch`, or, with `minutes`, at the step the
    budget is estimated to run out at (see `TimeBudget`).

    Args:
        model: a compiled Keras model whose variables exist (call `build`).
        train_stream: an endless, deterministic stream of batches with a
            `skip(n)` method: a `tf.data.Dataset` (`token_batches(repeat=True)`,
            TensorFlow's backend) or a `data.TokenStream`
            (`TokenBatches(...).stream()`, every backend; with the default
            workers=1). Step `n` of the run uses element `n`.
        steps_per_epoch: int, steps between validations and checkpoints.
        epochs: int, the most epochs to run in total.
        run_dir: str, the run's directory.
        validation_data: finite batches for `val_loss` (a `tf.data.Dataset`,
            a `TokenBatches`, whose current epoch's batches are used in every
            validation, or a stream's `take(k)`), or None.
        minutes: float, stop after this much wall-clock time in this call.
        early_stopping_patience: int, stop after this many epochs without a
            lower `val_loss`; None disables early stopping.
        keep_checkpoints: int, epoch checkpoints kept. Default 10.
        backup_every: int, steps between backups. Default 100.
        callbacks: extra Keras callbacks.
        verbose: passed to `fit` (Keras's progress bar by default).
        tensorboard: bool, write TensorBoard logs; None (the default) writes
            them on TensorFlow's backend only. Keras's TensorBoard callback
            writes with TensorFlow on every backend, so True on another
            loads TensorFlow into the process (on a GPU it may take memory
            the backend needs).

    Returns:
        The merged `History.history` of this call.
    """
    _check_stream(train_stream, keras.backend.backend() == "tensorflow")
    if tensorboard is None:
        tensorboard = keras.backend.backend() == "tensorflow"
    elif tensorboard and importlib.util.find_spec("tensorflow") is None:
        raise ValueError("`tensorboard=True` needs TensorFlow installed (Keras's TensorBoard callback writes with it)")
    if hasattr(validation_data, "stream") and hasattr(validation_data, "__len__"):
        # A TokenBatches regroups at every on_epoch_end, which Keras calls
        # during each evaluation: one fixed pass of its current epoch instead.
        validation_data = validation_data.stream().take(len(validation_data))
    _check_validation(validation_data)
    if not model.built or model.optimizer is None:
        raise ValueError("`model` must be built and compiled before `train` (call model.build() and compile).")
    if validation_data is None and early_stopping_patience is not None:
        raise ValueError("`early_stopping_patience` needs `validation_data` to watch val_loss")
    per_call = int(getattr(model, "steps_per_execution", 1) or 1)
    if steps_per_epoch % per_call or backup_every % per_call:
        # Keras runs whole executions, so an epoch would take more batches
        # than steps_per_epoch and resumption would skip the wrong number.
        raise ValueError(
            f"`steps_per_epoch` ({steps_per_epoch}) and `backup_every` ({backup_every}) must be "
            f"multiples of the model's steps_per_execution ({per_call})"
        )
    watches = {}
    if validation_data is not None:
        watches["best_checkpoint"] = BestCheckpoint(os.path.join(run_dir, "best.weights.h5"))
    if early_stopping_patience is not None:
        watches["early_stopping"] = EarlyStopping(early_stopping_patience)
    backup = StepBackup(os.path.join(run_dir, "backup"), save_freq=backup_every, stateful=watches)
    step = backup.restore(model)
    if "early_stopping" in watches and watches["early_stopping"].stopped:
        return {}
    schedule = fit_schedule_to_run(model.optimizer, epochs * steps_per_epoch)
    budget = TimeBudget(minutes, schedule, max_steps=epochs * steps_per_epoch) if minutes else None
    # The backup comes last: its epoch-end save holds the watches' new state.
    all_callbacks = [
        *([keras.callbacks.TensorBoard(os.path.join(run_dir, "logs"))] if tensorboard else []),
        EpochCheckpoints(os.path.join(run_dir, "checkpoints"), keep=keep_checkpoints),
        *callbacks,
        *watches.values(),
        *([budget] if budget is not None else []),
        backup,
    ]

    history: Dict[str, List[float]] = {}
    on_tensorflow = keras.backend.backend() == "tensorflow"
    if on_tensorflow and hasattr(validation_data, "as_tf_dataset"):
        validation_data = validation_data.as_tf_dataset()

    def fit(initial_epoch, steps):
        stream = train_stream.skip(step)
        if on_tensorflow and hasattr(stream, "as_tf_dataset"):
            stream = stream.as_tf_dataset()  # a TokenStream: its shapes stay unknown
        h = model.fit(
            stream,
            initial_epoch=initial_epoch,
            epochs=initial_epoch + 1 if steps < steps_per_epoch else epochs,
            steps_per_epoch=steps,
            validation_data=validation_data,
            callbacks=all_callbacks,
            shuffle=False,
            verbose=verbose,
        )
        for key, values in h.history.items():
            history.setdefault(key, []).extend(values)
        return backup.step

    epoch, done_in_epoch = divmod(step, steps_per_epoch)
    if epoch >= epochs:
        return history
    if done_in_epoch:
        # Finish the interrupted epoch first, with only its remaining steps.
        step = fit(epoch, steps_per_epoch - done_in_epoch)
        epoch += 1
        if model.stop_training or epoch >= epochs or (budget and budget.stopped_early):
            return history
    fit(epoch, steps_per_epoch)
    return history


def _check_stream(stream, on_tensorflow: bool):
    """Refuses a stream `train` cannot resume exactly."""
    if not hasattr(stream, "skip"):
        hint = " (for a TokenBatches, pass `batches.stream()`)" if hasattr(stream, "stream") else ""
        raise ValueError(
            "`train_stream` must be an endless stream with a `skip(n)` method: a tf.data.Dataset "
            f"or a keras_transformer.data.TokenStream{hint}. Received: {type(stream).__name__}"
        )
    if hasattr(stream, "cardinality") and not isinstance(stream, keras.utils.PyDataset):
        count = int(stream.cardinality())
        if count >= 0:  # tf.data's INFINITE is -1, UNKNOWN -2
            raise ValueError(
                f"`train_stream` must be endless (`dataset.repeat()`); this tf.data.Dataset has {count} batches, "
                "and Keras would start it again when it runs out, which `skip` on resuming would not"
            )
    if isinstance(stream, keras.utils.PyDataset):
        if stream.num_batches is not None:
            # Keras starts a finite one again when it runs out; `skip` on resuming would not.
            raise ValueError(f"`train_stream` must be endless; this one has {stream.num_batches} batches")
        workers, processes = stream.workers, stream.use_multiprocessing
        # Keras reads through its enqueuer under this condition
        # (keras/src/trainers/data_adapters/py_dataset_adapter.py); on
        # TensorFlow a TokenStream is read through tf.data instead.
        enqueued = workers > 1 or (workers > 0 and processes)
        if enqueued and not (on_tensorflow and hasattr(stream, "as_tf_dataset")):
            # The first fit after compile reads a batch to build the metrics,
            # then resets the iterator; with workers, Keras's enqueuer then
            # starts at the second element, and resumption loses step-exactness.
            raise ValueError(
                "`train_stream` must read its batches in the training thread (workers=1, no "
                f"use_multiprocessing); this one has workers={workers}, use_multiprocessing={processes}"
            )


def _check_validation(data):
    """Refuses validation data that never ends (Keras would evaluate forever)."""
    if isinstance(data, keras.utils.PyDataset) and data.num_batches is None:
        raise ValueError(
            "`validation_data` must be finite; this stream is endless: pass `stream.take(k)` for k fixed batches"
        )
    if hasattr(data, "cardinality") and not isinstance(data, keras.utils.PyDataset):
        if int(data.cardinality()) == -1:  # tf.data.INFINITE_CARDINALITY
            raise ValueError(
                "`validation_data` must be finite; this tf.data.Dataset repeats forever: pass `dataset.take(k)`"
            )


def average_checkpoints(model, paths: Sequence[str]):
    """Sets `model`'s weights to the mean of the weights saved at `paths`
    (the paper averages the last checkpoints). Optimizer state is left as the
    last file had it."""
    if not paths:
        raise ValueError("`paths` is empty: no checkpoints to average")
    total = None
    for path in paths:
        model.load_weights(path)
        values = [np.asarray(w.numpy(), np.float64) for w in model.weights]
        total = values if total is None else [t + v for t, v in zip(total, values)]
    for weight, value in zip(model.weights, total):
        weight.assign((value / len(paths)).astype(weight.dtype))
    return model


def average_last_checkpoints(model, run_dir: str, n: int = 10):
    """Averages the newest `n` epoch checkpoints of a `train` run; returns
    the paths used."""
    paths = list_checkpoints(os.path.join(run_dir, "checkpoints"))[-n:]
    average_checkpoints(model, paths)
    return paths
