import math

import keras
import numpy as np
import pytest

from keras_transformer.training import MaskedAccuracy
from keras_transformer.training import MaskedCrossEntropy
from keras_transformer.training import WarmupInverseSqrt
from keras_transformer.training import WarmupLinearDecay
from keras_transformer.training import paper_optimizer
from keras_transformer.training import translation_optimizer


def _reference_loss(labels, logits, smoothing):
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    total, count = 0.0, 0
    vocab = logits.shape[-1]
    for b, t in zip(*np.nonzero(labels)):
        target = np.full(vocab, smoothing / vocab)
        target[labels[b, t]] += 1 - smoothing
        total += -(target * log_probs[b, t]).sum()
        count += 1
    return total / count


def test_label_smoothed_loss_equals_reference():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 4, 7)).astype("float32")
    labels = np.array([[3, 1, 0, 0], [2, 6, 5, 4]])
    for smoothing in (0.0, 0.1):
        loss = float(MaskedCrossEntropy(label_smoothing=smoothing)(labels, logits))
        assert loss == pytest.approx(_reference_loss(labels, logits, smoothing), rel=1e-5)
    # Without smoothing it is Keras's sparse cross-entropy over the real tokens.
    keras_loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    expected = float(keras_loss(labels[1], logits[1]))
    assert float(MaskedCrossEntropy(label_smoothing=0.0)(labels[1:], logits[1:])) == pytest.approx(expected, rel=1e-5)


def test_padding_changes_nothing():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(1, 3, 9)).astype("float32")
    labels = np.array([[4, 8, 2]])
    padded_logits = np.concatenate([logits, rng.normal(size=(1, 5, 9)).astype("float32") * 10], axis=1)
    padded_labels = np.concatenate([labels, np.zeros((1, 5), int)], axis=1)
    loss = MaskedCrossEntropy()
    assert float(loss(padded_labels, padded_logits)) == pytest.approx(float(loss(labels, logits)), rel=1e-6)
    accuracy = MaskedAccuracy()
    accuracy.update_state(padded_labels, padded_logits)
    expected = np.mean(np.argmax(logits, -1) == labels)
    assert float(accuracy.result()) == pytest.approx(expected)


def test_schedule_values_at_chosen_steps():
    schedule = WarmupInverseSqrt(d_model=512, warmup_steps=4000)
    # Warm-up: linear in the step; peak at warmup_steps; then step^-0.5.
    assert float(schedule(1)) == pytest.approx(512**-0.5 * 4000**-1.5, rel=1e-5)
    assert float(schedule(2000)) == pytest.approx(512**-0.5 * 2000 * 4000**-1.5, rel=1e-5)
    assert float(schedule(4000)) == pytest.approx(512**-0.5 / math.sqrt(4000), rel=1e-5)
    assert float(schedule(16000)) == pytest.approx(512**-0.5 / math.sqrt(16000), rel=1e-5)
    assert float(schedule(4000)) == pytest.approx(6.9877e-4, rel=1e-4)
    restored = keras.optimizers.schedules.deserialize(keras.optimizers.schedules.serialize(schedule))
    assert float(restored(123)) == float(schedule(123))
    optimizer = paper_optimizer(128)
    assert (optimizer.beta_1, optimizer.beta_2, optimizer.epsilon) == (0.9, 0.98, 1e-9)
    with pytest.raises(ValueError, match="warmup_steps=0"):
        WarmupInverseSqrt(128, warmup_steps=0)


def test_linear_decay_values_at_chosen_steps():
    schedule = WarmupLinearDecay(1e-3, warmup_steps=10, total_steps=30)
    expected = {0: 1e-4, 1: 1e-4, 5: 5e-4, 10: 1e-3, 15: 7.5e-4, 20: 5e-4, 29: 5e-5, 30: 0.0, 45: 0.0}
    for step, value in expected.items():
        assert float(schedule(step)) == pytest.approx(value, rel=1e-5, abs=1e-9), step
    # Moving the end changes the rate the same object gives for the same step.
    schedule.set_total_steps(110)
    assert float(schedule(60)) == pytest.approx(1e-3 * 50 / 100, rel=1e-5)
    # No end yet: it stays at the peak after warm-up.
    assert float(WarmupLinearDecay(1e-3, 10)(10_000)) == pytest.approx(1e-3)
    restored = keras.optimizers.schedules.deserialize(keras.optimizers.schedules.serialize(schedule))
    assert restored.total_steps == 110 and not restored.fit_to_run
    assert float(restored(60)) == float(schedule(60))
    with pytest.raises(ValueError, match="total_steps=10"):
        WarmupLinearDecay(1e-3, warmup_steps=10, total_steps=10)
    with pytest.raises(ValueError, match="peak_learning_rate=0"):
        WarmupLinearDecay(0, warmup_steps=10)


def test_translation_optimizer_linear_keeps_the_papers_peak():
    optimizer = translation_optimizer(128, warmup_steps=1000, scale=0.5, schedule="linear")
    peak = float(WarmupInverseSqrt(128, warmup_steps=1000, scale=0.5)(1000))
    assert float(optimizer.learning_rate) == pytest.approx(peak / 1000, rel=1e-5)  # step 0 counts as 1
    assert optimizer._learning_rate.peak_learning_rate == pytest.approx(peak, rel=1e-6)
    with pytest.raises(ValueError, match="schedule='cosine'"):
        translation_optimizer(128, schedule="cosine")
