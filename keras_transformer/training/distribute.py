"""GPU-ready switches: dtype policy and tf.distribute strategies, plus the
custom training loop that multi-worker training needs.

Keras 3's `model.fit` fails under `MultiWorkerMirroredStrategy` ("Attempt to
convert a value (PerReplica...)", keras-team/keras#20585), so `multi-worker`
runs `train_custom_loop` instead: the same model, loss and optimizer, with
`strategy.run` inside a `tf.function`.
"""

import json
import os
import warnings
from typing import Dict, List, Optional

import keras
import tensorflow as tf

from keras_transformer.layers import validation
from keras_transformer.training.callbacks import checkpoint_epoch
from keras_transformer.training.callbacks import list_checkpoints
from keras_transformer.training.callbacks import save_epoch_checkpoint
from keras_transformer.training.schedules import fit_schedule_to_run

STRATEGY_CHOICES = ("default", "mirrored", "multi-worker")


def set_mixed_precision(enabled: bool, cpu_bfloat16: Optional[bool] = None) -> str:
    """Sets the global Keras dtype policy and returns its name.

    `enabled` gives mixed_float16 when a GPU is visible, and on a CPU
    mixed_bfloat16 where the CPU computes in bfloat16 natively, float32
    elsewhere: on a CPU without bfloat16 instructions, TensorFlow emulates
    them and a step takes about twice as long as in float32 (the Multi30k
    recipe's step: 1,001 against 509 ms on a 2-core Xeon with AVX-512 but
    no AVX512_BF16; docs/benchmarks.md). float16 matmuls are slow on every
    CPU. float32 when not `enabled`.

    Args:
        enabled: bool, use a mixed policy where it is faster.
        cpu_bfloat16: with `enabled` and no GPU: None (default) detects
            native bfloat16 (`cpu_has_native_bfloat16`); True or False
            decides.
    """
    if not enabled:
        name = "float32"
    elif tf.config.list_physical_devices("GPU"):
        name = "mixed_float16"
    else:
        native = cpu_has_native_bfloat16() if cpu_bfloat16 is None else cpu_bfloat16
        name = "mixed_bfloat16" if native else "float32"
        if not native and cpu_bfloat16 is None:
            warnings.warn(
                "mixed precision: no native bfloat16 here (no avx512_bf16, amx_bf16 or Arm bf16 flag, or "
                "TF_ENABLE_ONEDNN_OPTS=0), where "
                "mixed_bfloat16 runs about half as fast as float32, so the policy is float32 "
                "(set_mixed_precision(True, cpu_bfloat16=True) forces bfloat16)",
                stacklevel=2,
            )
    keras.config.set_dtype_policy(name)
    return name


_BFLOAT16_FLAGS = {"avx512_bf16", "amx_bf16", "bf16"}  # x86 (AVX-512, AMX) and Arm (FEAT_BF16)


def cpu_has_native_bfloat16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether TensorFlow can compute in bfloat16 natively here: the CPU has
    bfloat16 instructions (the flags in `cpuinfo`; False where the file
    cannot be read, as on macOS and Windows), and oneDNN, which uses them,
    is not turned off (`TF_ENABLE_ONEDNN_OPTS=0`)."""
    if os.environ.get("TF_ENABLE_ONEDNN_OPTS", "1").strip().lower() in ("0", "false"):
        return False
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as f:
            text = f.read()
    except OSError:
        return False
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features") and _BFLOAT16_FLAGS & set(value.split()):
            return True
    return False


def make_strategy(name: str) -> tf.distribute.Strategy:
    """"default" (one device), "mirrored" (every local GPU, or the CPU), or
    "multi-worker" (MultiWorkerMirroredStrategy; the cluster comes from the
    TF_CONFIG environment variable)."""
    validation.check_choice("strategy", name, STRATEGY_CHOICES)
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        # Every GPU; without GPUs, every logical CPU device (one unless the
        # process split the CPU with tf.config.set_logical_device_configuration).
        devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
        return tf.distribute.MirroredStrategy([d.name for d in devices])
    config = os.environ.get("TF_CONFIG")
    if not config:
        raise ValueError(
            "strategy 'multi-worker' needs the TF_CONFIG environment variable, e.g. "
            '{"cluster": {"worker": ["host1:12345", "host2:12345"]}, "task": {"type": "worker", "index": 0}}'
        )
    try:
        json.loads(config)
    except json.JSONDecodeError as e:
        raise ValueError(f"TF_CONFIG is not valid JSON: {e}") from None
    return tf.distribute.MultiWorkerMirroredStrategy()


def train_custom_loop(
    model,
    strategy: tf.distribute.Strategy,
    train_stream: tf.data.Dataset,
    steps_per_epoch: int,
    epochs: int,
    run_dir: Optional[str] = None,
) -> Dict[str, List[float]]:
    """Trains `model` (built and compiled inside `strategy.scope()`) with a
    custom loop, for strategies where `model.fit` does not work.

    Every worker runs this with the same arguments. Each global batch of
    `train_stream` is split across the replicas; the loss (`MaskedCrossEntropy`)
    divides each replica's summed token losses by the global batch's token
    count and the optimizer sums the gradients across replicas, so every
    replica applies the update of the global batch's token mean. The chief
    writes `run_dir/checkpoints/epoch-NNNN.weights.h5` (optimizer state
    included) at every epoch end; started again, every worker resumes from
    the newest one, after the batches of the epochs it holds.

    Returns:
        {"loss": [mean training loss of each epoch]}.
    """
    loss_fn = model.loss
    optimizer = model.optimizer
    fit_schedule_to_run(optimizer, epochs * steps_per_epoch)
    checkpoint_dir = os.path.join(run_dir, "checkpoints") if run_dir else None

    start_epoch = 0
    if checkpoint_dir and list_checkpoints(checkpoint_dir):
        if not optimizer.built:
            optimizer.build(model.trainable_variables)
        newest = list_checkpoints(checkpoint_dir)[-1]
        model.load_weights(newest)
        # The file's epoch, not optimizer.iterations // steps_per_epoch: a
        # LossScaleOptimizer does not count the steps it skipped.
        start_epoch = checkpoint_epoch(newest)

    def replica_step(inputs, labels):
        with tf.GradientTape() as tape:
            logits = model(inputs, training=True)
            loss = loss_fn(labels, logits)
            # LossScaleOptimizer (mixed_float16) scales here and unscales in apply.
            scaled = optimizer.scale_loss(loss)
        grads = tape.gradient(scaled, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    @tf.function
    def train_step(iterator):
        inputs, labels = next(iterator)
        losses = strategy.run(replica_step, args=(inputs, labels))
        # Each replica's loss is its share of the global token mean.
        return strategy.reduce(tf.distribute.ReduceOp.SUM, losses, axis=None)

    stream = train_stream.skip(start_epoch * steps_per_epoch)
    options = tf.data.Options()
    # Worker i takes batches i, i + workers, ...: the stream is not file-based.
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    iterator = iter(strategy.experimental_distribute_dataset(stream.with_options(options)))
    history = {"loss": []}
    chief = strategy.extended.should_checkpoint
    for epoch in range(start_epoch, epochs):
        total = 0.0
        for _ in range(steps_per_epoch):
            total += float(train_step(iterator))
        history["loss"].append(total / steps_per_epoch)
        if chief:
            print(f"epoch {epoch + 1}/{epochs}: loss {history['loss'][-1]:.4f}", flush=True)
        if chief and checkpoint_dir:
            save_epoch_checkpoint(model, checkpoint_dir, epoch + 1)
    return history
