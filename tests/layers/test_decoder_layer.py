import keras
import numpy as np
import pytest
from keras import ops

from keras_transformer.layers import DecoderLayer
from tests import reference
from tests.backend import to_numpy
from tests.layer_test_case import run_layer_test

B, T, S, D, N = 2, 5, 7, 16, 4
SOURCE_IDS = np.array([[3, 4, 5, 6, 0, 0, 0], [6, 7, 8, 9, 10, 11, 12]])


def _memory():
    return keras.layers.Embedding(30, D, mask_zero=True)(SOURCE_IDS)


@pytest.mark.parametrize("norm_first", [False, True])
def test_layer_contract(norm_first):
    run_layer_test(
        DecoderLayer,
        {"num_heads": N, "d_ff": 32, "norm_first": norm_first},
        (np.random.normal(size=(B, T, D)).astype("float32"), np.random.normal(size=(B, S, D)).astype("float32")),
        expected_output_shape=(B, T, D),
        expected_num_trainable_weights=26,
    )


@pytest.mark.parametrize("norm_first", [False, True])
def test_matches_numpy_reference(norm_first):
    x = np.random.normal(size=(B, T, D)).astype("float32")
    memory = _memory()
    layer = DecoderLayer(num_heads=N, d_ff=32, norm_first=norm_first)
    output, scores = layer(x, memory, return_attention_scores=True)
    weights = [to_numpy(w).astype(np.float64) for w in layer.weights]
    expected = reference.decoder_layer(x, to_numpy(memory), weights, N, SOURCE_IDS != 0, norm_first)
    np.testing.assert_allclose(output, expected, atol=1e-4)
    assert scores.shape == (B, N, T, S)
    np.testing.assert_allclose(to_numpy(scores).sum(-1), 1.0, atol=1e-6)
    np.testing.assert_array_equal(to_numpy(scores)[0, :, :, 4:], 0.0)


def test_causal_output_unchanged_when_later_tokens_change():
    x = np.random.normal(size=(B, T, D)).astype("float32")
    memory = _memory()
    layer = DecoderLayer(num_heads=N, d_ff=32)
    before = to_numpy(layer(x, memory))
    changed = x.copy()
    changed[:, 3:] += 1.0
    after = to_numpy(layer(changed, memory))
    np.testing.assert_allclose(after[:, :3], before[:, :3], atol=1e-5)
    assert not np.allclose(after[:, 3:], before[:, 3:])


def test_source_padding_content_does_not_change_outputs():
    x = np.random.normal(size=(B, T, D)).astype("float32")
    memory = _memory()
    layer = DecoderLayer(num_heads=N, d_ff=32)
    out = to_numpy(layer(x, memory))
    noisy = ops.where((SOURCE_IDS != 0)[..., None], memory, 100.0)
    out_noisy = to_numpy(layer(x, noisy, encoder_output_mask=SOURCE_IDS != 0))
    np.testing.assert_allclose(out_noisy, out, atol=1e-5)
    trimmed = to_numpy(layer(x[:1], memory[:1, :4]))
    np.testing.assert_allclose(trimmed, out[:1], atol=1e-5)


@pytest.mark.parametrize("norm_first", [False, True])
def test_cached_steps_equal_full_pass(norm_first):
    x = np.random.normal(size=(B, T, D)).astype("float32")
    memory = _memory()
    layer = DecoderLayer(num_heads=N, d_ff=32, norm_first=norm_first)
    full, full_scores = layer(x, memory, return_attention_scores=True)
    cache = layer.init_cache(memory, max_length=T)
    assert cache["cross_attention"].shape == (B, 2, N, S, D // N)
    steps, step_scores = [], []
    for t in range(T):
        out, scores, cache = layer(
            x[:, t : t + 1], memory, encoder_output_mask=SOURCE_IDS != 0,
            return_attention_scores=True, cache=cache, cache_index=t,
        )
        steps.append(out)
        step_scores.append(scores)
    np.testing.assert_allclose(ops.concatenate(steps, axis=1), full, atol=1e-5)
    np.testing.assert_allclose(ops.concatenate(step_scores, axis=2), full_scores, atol=1e-6)
