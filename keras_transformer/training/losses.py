"""Label-smoothed cross-entropy and token accuracy that ignore padding."""

import keras
from keras import ops


def _global_sum(tokens):
    """`tokens` summed over the replicas of a tf.distribute strategy (the
    TensorFlow backend's `MirroredStrategy` and multi-worker loops), or as it
    is. Each replica holds part of the global batch: dividing its sum by the
    global batch's token count makes the replicas' summed gradients (as
    Keras and `strategy.run` loops sum them) the gradient of the global
    batch's token mean. Keras divides only an unreduced loss by the replica
    count, not a scalar. `keras.distribution` (JAX) runs one program over
    the global batch, so there the batch's own sum is already global."""
    if keras.backend.backend() != "tensorflow":
        return tokens
    import tensorflow as tf  # tf.distribute exists only there

    replica = tf.distribute.get_replica_context()
    if replica is not None and replica.num_replicas_in_sync > 1:
        return replica.all_reduce(tf.distribute.ReduceOp.SUM, tokens)
    return tokens


@keras.saving.register_keras_serializable(package="keras_transformer")
class MaskedCrossEntropy(keras.losses.Loss):
    """Sparse cross-entropy with label smoothing, averaged over non-padding
    tokens ("Attention Is All You Need" section 5.4, epsilon_ls = 0.1).

    The smoothed target puts `1 - label_smoothing` on the true id and spreads
    `label_smoothing` uniformly over the whole vocabulary.

    Args:
        label_smoothing: float in [0, 1). Default 0.1.
        padding_id: int, label id that contributes nothing. Default 0.

    Call arguments:
        y_true: [B, T] int labels.
        y_pred: [B, T, V] logits.

    Returns:
        Scalar: the summed token losses divided by the number of non-padding
        tokens in the batch, so padding neither adds loss nor dilutes it.
        In a replica of a tf.distribute strategy, the replica's summed token
        losses divided by the whole global batch's token count: summed over
        replicas (as Keras and `strategy.run` loops sum gradients), that is
        the global batch's token mean, whatever each replica's share of the
        tokens. Do not divide it by the replica count again.
    """

    def __init__(self, label_smoothing=0.1, padding_id=0, name="masked_cross_entropy", **kwargs):
        super().__init__(name=name, **kwargs)
        if not 0 <= label_smoothing < 1:
            raise ValueError(
                f"`label_smoothing` must be in [0, 1). Received: label_smoothing={label_smoothing!r}"
            )
        self.label_smoothing = float(label_smoothing)
        self.padding_id = int(padding_id)

    def call(self, y_true, y_pred):
        y_true = ops.cast(y_true, "int32")
        logits = ops.cast(y_pred, "float32")
        log_probs = ops.log_softmax(logits, axis=-1)
        nll = -ops.take_along_axis(log_probs, ops.expand_dims(y_true, -1), axis=-1)[..., 0]  # [B, T]
        uniform = -ops.mean(log_probs, axis=-1)  # [B, T]
        losses = (1.0 - self.label_smoothing) * nll + self.label_smoothing * uniform
        weights = ops.cast(ops.not_equal(y_true, self.padding_id), "float32")
        tokens = _global_sum(ops.sum(weights))
        return ops.divide_no_nan(ops.sum(losses * weights), tokens)

    def get_config(self):
        config = super().get_config()
        config.update({"label_smoothing": self.label_smoothing, "padding_id": self.padding_id})
        return config


@keras.saving.register_keras_serializable(package="keras_transformer")
class MaskedAccuracy(keras.metrics.Mean):
    """Fraction of non-padding tokens whose arg-max logit is the label.

    Args:
        padding_id: int, label id that is not counted. Default 0.
    """

    def __init__(self, padding_id=0, name="masked_accuracy", **kwargs):
        super().__init__(name=name, **kwargs)
        self.padding_id = int(padding_id)

    def update_state(self, y_true, y_pred, sample_weight=None):
        y_true = ops.cast(y_true, "int32")
        correct = ops.cast(ops.equal(ops.cast(ops.argmax(y_pred, axis=-1), "int32"), y_true), "float32")
        weights = ops.cast(ops.not_equal(y_true, self.padding_id), "float32")
        if sample_weight is not None:
            weights *= ops.cast(sample_weight, "float32")
        return super().update_state(correct, sample_weight=weights)

    def get_config(self):
        config = super().get_config()
        config.update({"padding_id": self.padding_id})
        return config
