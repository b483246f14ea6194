"""Runs a few training steps under a tf.distribute strategy and saves what
the tests compare. Started as a subprocess: strategies need a fresh process.

    python -m tests.training.distributed_worker mirrored OUT.npz
    TF_CONFIG=... python -m tests.training.distributed_worker multi-worker OUT.npz
    python -m tests.training.distributed_worker same-step OUT.npz
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import keras_transformer as kt  # noqa: E402
from keras_transformer import training  # noqa: E402
from tests.training.test_fit import VOCAB, _stream  # noqa: E402

# Batch sizes divisible by the two replicas.
STREAM_ARGS = {"batch_multiple": 2}


def _uneven_batch():
    """One batch of 4 rows: the first two long, the last two short, so the
    two replicas' halves hold 16 and 3 target tokens."""
    target = np.zeros([4, 9], np.int32)
    target[0, :9], target[1, :8], target[2, :2], target[3, :2] = 5, 6, 7, 8
    target[:, 0] = 2
    source = np.where(target > 0, 9, 0).astype(np.int32)
    inputs = {"source": source, "target": target[:, :-1]}
    return inputs, target[:, 1:]


def same_step(out):
    """Loss, val loss and one SGD step on one batch: on one device, with
    `model.fit` under MirroredStrategy, and with `train_custom_loop`."""
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    inputs, labels = _uneven_batch()
    batch = tf.data.Dataset.from_tensors((inputs, labels))
    keras.utils.set_random_seed(3)
    results = {}
    initial = None
    for name in ("one-device", "mirrored-fit", "mirrored-custom-loop"):
        strategy = tf.distribute.get_strategy() if name == "one-device" else training.make_strategy("mirrored")
        with strategy.scope():
            model = kt.Transformer(VOCAB, VOCAB, num_layers=1, d_model=16, num_heads=2, d_ff=32, dropout=0.0)
            model.build()
            training.compile_for_translation(model, optimizer=keras.optimizers.SGD(1.0))
        if initial is None:
            initial = model.get_weights()
        model.set_weights(initial)
        results[f"{name}/replicas"] = strategy.num_replicas_in_sync
        results[f"{name}/eval"] = model.evaluate(batch, verbose=0)[0]
        if name == "mirrored-custom-loop":
            history = training.train_custom_loop(model, strategy, batch.repeat(), 1, 1)
        else:
            history = model.fit(batch, epochs=1, verbose=0).history
        results[f"{name}/loss"] = history["loss"][0]
        for i, (before, after) in enumerate(zip(initial, model.get_weights())):
            results[f"{name}/update_{i}"] = after - before
    np.savez(out, **results)


def main(mode, out):
    if mode == "same-step":
        return same_step(out)
    if mode == "mirrored":
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    keras.utils.set_random_seed(3)
    strategy = training.make_strategy(mode)
    with strategy.scope():
        model = kt.Transformer(VOCAB, VOCAB, num_layers=1, d_model=16, num_heads=2, d_ff=32, dropout=0.0)
        model.build()
        training.compile_for_translation(model, warmup_steps=4)
    initial = [w.numpy() for w in model.weights]
    if mode == "mirrored":
        history = training.train(model, _stream(**STREAM_ARGS), 4, 1, os.path.dirname(out) + "/run", verbose=0)
    else:
        history = training.train_custom_loop(model, strategy, _stream(**STREAM_ARGS), 4, 1)
    # Every replica's copy of every variable (MirroredVariable.values).
    replicas = [[np.asarray(v) for v in getattr(w.value, "values", [w.value])] for w in model.weights]
    replica_gap = max(float(np.max(np.abs(copies[0] - c))) for copies in replicas for c in copies)
    change = max(float(np.max(np.abs(a - w.numpy()))) for a, w in zip(initial, model.weights))
    np.savez(
        out, *[w.numpy() for w in model.weights], replicas=strategy.num_replicas_in_sync,
        copies=len(replicas[0]), replica_gap=replica_gap, change=change,
        loss=np.asarray(history["loss"]), steps=int(model.optimizer.iterations.numpy()),
    )


if __name__ == "__main__":
    main(*sys.argv[1:])
