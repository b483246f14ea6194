"""Label-smoothed cross-entropy and token accuracy that ignore padding."""

import keras
import tensorflow as tf


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
        y_true = tf.cast(y_true, tf.int32)
        logits = tf.cast(y_pred, tf.float32)
        log_probs = tf.nn.log_softmax(logits, axis=-1)
        nll = -tf.gather(log_probs, y_true, axis=-1, batch_dims=2)  # [B, T]
        uniform = -tf.reduce_mean(log_probs, axis=-1)  # [B, T]
        losses = (1.0 - self.label_smoothing) * nll + self.label_smoothing * uniform
        weights = tf.cast(tf.not_equal(y_true, self.padding_id), tf.float32)
        tokens = tf.reduce_sum(weights)
        replica = tf.distribute.get_replica_context()
        if replica is not None and replica.num_replicas_in_sync > 1:
            # Each replica holds part of the global batch: divide its sum
            # by the global batch's token count. Keras and `strategy.run`
            # loops sum the replicas' gradients, which then is the gradient
            # of the global batch's token mean. (Keras divides only an
            # unreduced loss by the replica count, not a scalar.)
            tokens = replica.all_reduce(tf.distribute.ReduceOp.SUM, tokens)
        return tf.math.divide_no_nan(tf.reduce_sum(losses * weights), tokens)

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
        y_true = tf.cast(y_true, tf.int32)
        correct = tf.cast(tf.equal(tf.argmax(y_pred, axis=-1, output_type=tf.int32), y_true), tf.float32)
        weights = tf.cast(tf.not_equal(y_true, self.padding_id), tf.float32)
        if sample_weight is not None:
            weights *= tf.cast(sample_weight, tf.float32)
        return super().update_state(correct, sample_weight=weights)

    def get_config(self):
        config = super().get_config()
        config.update({"padding_id": self.padding_id})
        return config
