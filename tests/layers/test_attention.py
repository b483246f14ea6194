import keras
import numpy as np
import pytest
from keras import ops

from keras_transformer.layers import MultiHeadAttention
from tests import reference
from tests.backend import compiled
from tests.backend import gradients
from tests.backend import jax_on_cpu
from tests.backend import jax_on_gpu
from tests.backend import keras_mask
from tests.backend import to_numpy
from tests.layer_test_case import run_layer_test

B, T, S, D, N = 2, 5, 7, 16, 4


def _weights(layer):
    return [to_numpy(w).astype(np.float64) for w in layer.weights]


def test_layer_contract():
    run_layer_test(
        MultiHeadAttention,
        {"num_heads": N, "key_dim": 4, "dropout": 0.1},
        (np.random.normal(size=(B, T, D)).astype("float32"), np.random.normal(size=(B, S, D)).astype("float32")),
        expected_output_shape=(B, T, D),
        expected_num_trainable_weights=8,
    )


@pytest.mark.parametrize("self_attention", [True, False])
def test_matches_numpy_reference_with_masks(self_attention):
    query = np.random.normal(size=(B, T, D)).astype("float32")
    value = query if self_attention else np.random.normal(size=(B, S, D)).astype("float32")
    layer = MultiHeadAttention(num_heads=N, key_dim=4)
    explicit = np.random.uniform(size=(B, T, value.shape[1])) > 0.3
    explicit[:, :, 0] = True
    output, scores = layer(query, value, attention_mask=explicit, return_attention_scores=True)
    ref_output, ref_scores = reference.multi_head_attention(query, value, _weights(layer), N, explicit)
    np.testing.assert_allclose(output, ref_output, atol=1e-5)
    np.testing.assert_allclose(scores, ref_scores, atol=1e-6)


@pytest.mark.parametrize("from_keras", [True, False])
def test_weights_move_between_ours_and_keras_multi_head_attention(from_keras):
    # The same weight list, in order and shape, as keras.layers.MultiHeadAttention
    # (keras/src/layers/attention/multi_head_attention.py: EinsumDense kernels
    # "abc,cde->abde" [D, N, H] with [N, H] biases, output "abcd,cde->abe" [N, H, D]).
    query = np.random.normal(size=(B, T, D)).astype("float32")
    value = np.random.normal(size=(B, S, 12)).astype("float32")
    # Every call of Keras's layer here asks for the scores, which takes its explicit einsum path on every
    # backend: without them (and without dropout) `_compute_attention` in
    # keras/src/layers/attention/multi_head_attention.py calls `ops.dot_product_attention`, which on JAX
    # (`jax.nn.dot_product_attention`) refuses value heads of another size than the key heads
    # ("value shape should be [B, S, N, key_dim]"). The build calls ask for them too.
    ours = MultiHeadAttention(num_heads=N, key_dim=4, value_dim=6, output_shape=10)
    theirs = keras.layers.MultiHeadAttention(num_heads=N, key_dim=4, value_dim=6, output_shape=10)
    ours(query, value)
    theirs(query, value, return_attention_scores=True)
    assert [w.shape for w in ours.weights] == [w.shape for w in theirs.weights]
    if from_keras:
        ours.set_weights(theirs.get_weights())
    else:
        theirs.set_weights(ours.get_weights())
    allowed = np.random.uniform(size=(B, T, S)) > 0.3
    allowed[:, :, 0] = True
    for q, v, kwargs in ((query, value, {}), (query, value, {"attention_mask": allowed}),
                         (query, query, {"use_causal_mask": True})):
        if v is query:  # the fused three-way projection, key and value sizes unequal, no biases
            sizes = dict(num_heads=N, key_dim=4, value_dim=6, use_bias=False)
            ours_self, theirs_self = MultiHeadAttention(**sizes), keras.layers.MultiHeadAttention(**sizes)
            ours_self(q, v)
            theirs_self(q, v, return_attention_scores=True)
            ours_self.set_weights(theirs_self.get_weights())
            a, a_scores = ours_self(q, v, return_attention_scores=True, **kwargs)
            b, b_scores = theirs_self(q, v, return_attention_scores=True, **kwargs)
        else:
            a, a_scores = ours(q, v, return_attention_scores=True, **kwargs)
            b, b_scores = theirs(q, v, return_attention_scores=True, **kwargs)
        np.testing.assert_allclose(a, b, atol=1e-5)
        np.testing.assert_allclose(a_scores, b_scores, atol=1e-6)


def test_weights_in_the_earlier_two_dimensional_layout_still_load():
    # Before the kernels took Keras's layout they were [D, N * H] and
    # [N * H, D_out], with [N * H] biases: a file of that time loads, reshaped.
    query = np.random.normal(size=(B, T, D)).astype("float32")
    layer = MultiHeadAttention(num_heads=N, key_dim=4, value_dim=6)
    expected = layer(query, query)
    flat = [w.reshape(w.shape[0], -1) if w.ndim == 3 and i < 6 else w.reshape(-1, w.shape[-1]) if w.ndim == 3
            else w.reshape(-1) for i, w in enumerate(layer.get_weights())]
    assert [w.ndim for w in flat] == [2, 1, 2, 1, 2, 1, 2, 1]
    fresh = MultiHeadAttention(num_heads=N, key_dim=4, value_dim=6)
    fresh(query, query)
    fresh.load_own_variables({str(i): w for i, w in enumerate(flat)})
    np.testing.assert_allclose(fresh(query, query), expected, atol=1e-6)


def test_scores_sum_to_one_and_are_zero_on_masked_keys():
    embedding = keras.layers.Embedding(20, D, mask_zero=True)
    ids = np.array([[3, 4, 5, 0, 0, 0, 0], [6, 7, 8, 9, 10, 11, 0]])
    x = embedding(ids)
    _, scores = MultiHeadAttention(num_heads=N, key_dim=4)(x, x, return_attention_scores=True)
    scores = to_numpy(scores)
    np.testing.assert_allclose(scores.sum(-1), 1.0, atol=1e-6)
    key_is_padding = (ids == 0)[:, None, None, :]
    assert np.all(np.where(np.broadcast_to(key_is_padding, scores.shape), scores, 0) == 0)
    assert np.all(scores[np.broadcast_to(~key_is_padding, scores.shape)] > 0)


def test_keras_mask_equals_explicit_mask():
    embedding = keras.layers.Embedding(20, D, mask_zero=True)
    ids = np.array([[3, 4, 5, 0, 0], [6, 7, 8, 9, 0]])
    x = embedding(ids)
    layer = MultiHeadAttention(num_heads=N, key_dim=4)
    automatic = layer(x, x)
    explicit = np.broadcast_to((ids != 0)[:, None, :], (2, 5, 5))
    unmasked = ops.copy(x)  # the same values without the Keras mask
    assert keras_mask(x) is not None and keras_mask(unmasked) is None
    manual = layer(unmasked, unmasked, attention_mask=explicit)
    np.testing.assert_allclose(automatic, manual, atol=1e-6)


def test_causal_output_unchanged_when_later_tokens_change():
    x = np.random.normal(size=(B, T, D)).astype("float32")
    layer = MultiHeadAttention(num_heads=N, key_dim=4)
    before = to_numpy(layer(x, x, use_causal_mask=True))
    for t in range(T):
        changed = x.copy()
        changed[:, t + 1 :] = np.random.normal(size=changed[:, t + 1 :].shape)
        after = to_numpy(layer(changed, changed, use_causal_mask=True))
        np.testing.assert_allclose(after[:, : t + 1], before[:, : t + 1], atol=1e-5)
        if t + 1 < T:
            assert not np.allclose(after[:, t + 1 :], before[:, t + 1 :])


def test_padded_content_does_not_change_unpadded_outputs():
    embedding = keras.layers.Embedding(50, D, mask_zero=True)
    layer = MultiHeadAttention(num_heads=N, key_dim=4)
    ids = np.array([[3, 4, 5, 0, 0], [6, 7, 8, 9, 0]])
    query = np.random.normal(size=(2, 3, D)).astype("float32")
    x = embedding(ids)
    out = to_numpy(layer(query, x))
    # Different vectors at the padded positions, same Keras mask.
    noisy = ops.where((ids != 0)[..., None], x, np.random.normal(size=x.shape).astype("float32") * 10)
    keras.src.backend.set_keras_mask(noisy, ops.convert_to_tensor(ids != 0))
    np.testing.assert_allclose(layer(query, noisy), out, atol=1e-5)
    # Trimming the padding away gives the same result for the first sentence.
    short = embedding(ids[:1, :3])
    np.testing.assert_allclose(layer(query[:1], short), out[:1], atol=1e-5)


def test_cached_self_attention_equals_full_causal_pass():
    x = np.random.normal(size=(B, T, D)).astype("float32")
    layer = MultiHeadAttention(num_heads=N, key_dim=4)
    full = layer(x, x, use_causal_mask=True)
    cache = layer.init_cache(B, max_length=T + 3)
    steps = []
    for t in range(T):
        out, cache = layer(x[:, t : t + 1], x[:, t : t + 1], cache=cache, cache_index=t)
        steps.append(out)
    np.testing.assert_allclose(ops.concatenate(steps, axis=1), full, atol=1e-5)
    # The cache holds the projected keys and values of every step.
    assert cache.shape == (B, 2, N, T + 3, 4)
    np.testing.assert_array_equal(cache[:, :, :, T:], 0.0)


def test_cached_chunks_and_graph_mode_equal_full_pass():
    x = np.random.normal(size=(B, 6, D)).astype("float32")
    layer = MultiHeadAttention(num_heads=N, key_dim=4)
    full = layer(x, x, use_causal_mask=True)

    # XLA-compiled (tf.function(jit_compile=True), jax.jit), the cache indices int32 tensors traced as
    # arguments: not known when the function is compiled, as in a decoding loop.
    @compiled
    def two_chunks(x, first_index, second_index):
        cache = layer.init_cache(B, 6)
        first, cache = layer(x[:, :2], x[:, :2], cache=cache, cache_index=first_index)
        second, cache = layer(x[:, 2:], x[:, 2:], cache=cache, cache_index=second_index)
        return ops.concatenate([first, second], axis=1)

    indices = ops.convert_to_tensor(0, "int32"), ops.convert_to_tensor(2, "int32")
    np.testing.assert_allclose(two_chunks(ops.convert_to_tensor(x), *indices), full, atol=1e-5)


def test_cached_cross_attention_equals_full_pass():
    query = np.random.normal(size=(B, T, D)).astype("float32")
    ids = np.array([[3, 4, 5, 6, 0, 0, 0], [6, 7, 8, 9, 10, 11, 12]])
    memory = keras.layers.Embedding(50, D, mask_zero=True)(ids)
    layer = MultiHeadAttention(num_heads=N, key_dim=4)
    full, full_scores = layer(query, memory, return_attention_scores=True)
    cache = layer.compute_cache(memory)
    out, scores, same_cache = layer(
        query, memory, value_mask=ids != 0, cache=cache, return_attention_scores=True
    )
    np.testing.assert_allclose(out, full, atol=1e-5)
    np.testing.assert_allclose(scores, full_scores, atol=1e-6)
    assert same_cache is cache


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_heads": 0, "key_dim": 4}, "num_heads"),
        ({"num_heads": 2, "key_dim": -1}, "key_dim"),
        ({"num_heads": 2, "key_dim": 4, "dropout": 1.0}, "dropout"),
        ({"num_heads": 2, "key_dim": 4, "dropout": -0.1}, "dropout"),
        ({"num_heads": 2, "key_dim": 4, "fused_attention": "yes"}, "fused_attention"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MultiHeadAttention(**kwargs)


def test_bad_rank_and_uncacheable_sizes():
    with pytest.raises(ValueError, match=r"`query` must have rank 3.*\(2, 16\)"):
        MultiHeadAttention(num_heads=2, key_dim=4)(np.zeros((2, 16), "float32"), np.zeros((2, 3, 16), "float32"))
    layer = MultiHeadAttention(num_heads=2, key_dim=4, value_dim=8)
    with pytest.raises(ValueError, match="key_dim == value_dim"):
        layer.init_cache(2, 10)


def test_kernels_are_initialized_from_the_fans_of_their_matrix():
    # Glorot on a [D, N, H] kernel counts fan_in D * N and fan_out D * H
    # (keras/src/initializers/random_initializers.py, compute_fans), six
    # times smaller a limit here than the [D, N * H] matrix's: the paper's
    # initialization, and the one this library's recipes were tuned with.
    layer = MultiHeadAttention(num_heads=8, key_dim=64)
    layer(np.zeros((1, 2, 512), "float32"), np.zeros((1, 2, 512), "float32"))
    limit = np.sqrt(6 / (512 + 512))
    for kernel in (layer.query_kernel, layer.output_kernel):
        values = keras.ops.convert_to_numpy(kernel)
        assert values.shape in ((512, 8, 64), (8, 64, 512))
        assert 0.99 * limit < np.abs(values).max() <= limit


def _fused_and_explicit(policy, **kwargs):
    keras.config.set_dtype_policy(policy)
    try:
        fused = MultiHeadAttention(num_heads=N, key_dim=4, fused_attention=True, **kwargs)
        explicit = MultiHeadAttention(num_heads=N, key_dim=4, fused_attention=False, **kwargs)
    finally:
        keras.config.set_dtype_policy("float32")
    return fused, explicit


@pytest.mark.parametrize("policy, atol", [("float32", 1e-5), ("mixed_bfloat16", 2e-2), ("mixed_float16", 2e-3)])
@pytest.mark.parametrize("self_attention", [True, False])
def test_the_fused_path_equals_the_explicit_one(policy, atol, self_attention):
    # keras.ops.dot_product_attention (the flash-attention path on GPUs) and
    # the explicit matmuls give one output and one gradient under every mask:
    # key padding (Keras masks), causal, and an attention mask [B, T, S].
    rng = np.random.default_rng(0)
    fused, explicit = _fused_and_explicit(policy)
    query = rng.normal(size=(B, T, D)).astype("float32")
    value = query if self_attention else rng.normal(size=(B, S, D)).astype("float32")
    value_mask = np.ones(value.shape[:2], bool)
    value_mask[0, -2:] = False
    attention_mask = rng.uniform(size=(B, T, value.shape[1])) > 0.3
    attention_mask[:, :, 0] = True  # every query keeps a key (see the docstring on rows of padding alone)
    fused(query, value)
    explicit(query, value)
    explicit.set_weights(fused.get_weights())
    if policy == "mixed_float16" and keras.backend.backend() == "jax" and jax_on_cpu():
        # XLA's CPU dot refuses float16 with float32 accumulation under jax.jit
        # ("precision 'F16_F16_F32' is not supported"): the layer keeps to the
        # explicit path there, and the call under jit works.
        assert not fused._fused(False, None)
        y, _, _ = gradients(fused, lambda call, x: (ops.sum(ops.cast(call(x, x), "float32")), call(x, x)), query)
        assert np.isfinite(y).all()
        return
    assert fused._fused(False, None) and not explicit._fused(False, None)
    per_head = rng.uniform(size=(B, N, T, value.shape[1])) > 0.3
    per_head[..., 0] = True
    for kwargs in (dict(value_mask=value_mask), dict(attention_mask=attention_mask),
                   dict(attention_mask=attention_mask[0]), dict(attention_mask=per_head, value_mask=value_mask),
                   dict(value_mask=value_mask, use_causal_mask=self_attention), {}):
        def forward(call, x):
            y = ops.cast(call(x, x if self_attention else value, **kwargs), "float32")
            return ops.sum(y * y), y

        outputs, grads = [], []
        for layer in (fused, explicit):
            # The gradients with respect to the query (and, in self-attention, key and value) and every weight.
            y, grad_x, grad_weights = gradients(layer, forward, query)
            outputs.append(y)
            grads.append([grad_x, *grad_weights])
        assert outputs[0].dtype == np.float32
        assert len(grads[0]) == 1 + 8
        np.testing.assert_allclose(outputs[0], outputs[1], atol=atol, rtol=atol, err_msg=str(kwargs))
        for a, b in zip(*grads):
            scale = max(1.0, float(np.abs(b).max()))
            np.testing.assert_allclose(a, b, atol=atol * scale * 10, rtol=atol * 10, err_msg=str(kwargs))


def test_the_fused_path_stands_aside_for_scores_dropout_and_the_cache():
    # Scores, active attention dropout and decoding steps need the explicit path.
    layer = MultiHeadAttention(num_heads=N, key_dim=4, dropout=0.5, fused_attention=True)
    x = np.random.default_rng(1).normal(size=(B, T, D)).astype("float32")
    assert not layer._fused(True, False)
    assert not layer._fused(False, True)
    assert layer._fused(False, False) and layer._fused(False, None)
    output, scores = layer(x, x, return_attention_scores=True)
    np.testing.assert_allclose(np.sum(scores, axis=-1), 1.0, atol=1e-5)
    trained = layer(x, x, training=True)
    assert not np.allclose(trained, layer(x, x))  # dropout applied: the explicit path ran
    # JAX's dot_product_attention takes one head size for queries and values.
    assert not MultiHeadAttention(num_heads=N, key_dim=4, value_dim=3, fused_attention=True)._fused(False, False)
    auto = MultiHeadAttention(num_heads=N, key_dim=4)
    # TensorFlow, or JAX on a CPU: explicit.
    assert auto.fused_attention is None and auto._fused(False, False) == jax_on_gpu()
    assert MultiHeadAttention.from_config(layer.get_config()).fused_attention is True
    assert "fused_attention" not in auto.get_config()  # a default config loads in earlier versions too


@pytest.mark.parametrize("shape", ["T,S", "B,T,S", "B,1,S", "B,N,T,S"])
def test_attention_masks_of_every_shape_keras_takes(shape):
    # keras.layers.MultiHeadAttention takes [T, S], [B, T, S] and [B, N, T, S]
    # masks (multi_head_attention.py, _masked_softmax expands from the heads
    # axis); with the same weights ours gives the same output and scores.
    rng = np.random.default_rng(2)
    query = rng.normal(size=(B, T, D)).astype("float32")
    value = rng.normal(size=(B, S, D)).astype("float32")
    sizes = {"B": B, "T": T, "S": S, "N": N, "1": 1}
    mask = rng.uniform(size=[sizes[d] for d in shape.split(",")]) > 0.4
    mask[..., 0] = True
    ours = MultiHeadAttention(num_heads=N, key_dim=4)
    theirs = keras.layers.MultiHeadAttention(num_heads=N, key_dim=4)
    ours(query, value)
    theirs(query, value)
    theirs.set_weights(ours.get_weights())
    output, scores = ours(query, value, attention_mask=mask, return_attention_scores=True)
    expected, expected_scores = theirs(query, value, attention_mask=mask, return_attention_scores=True)
    np.testing.assert_allclose(output, expected, atol=1e-5)
    np.testing.assert_allclose(scores, expected_scores, atol=1e-6)


def test_an_attention_mask_of_another_rank_is_refused_by_name():
    x = np.zeros((B, T, D), "float32")
    # A per-head mask for another number of heads (TensorFlow failed with a broadcast error).
    y = np.zeros((2, 5, 8), "float32")
    with pytest.raises(ValueError, match=r"per-head `attention_mask`.*num_heads=2 heads.*\(2, 3, 5, 5\)"):
        MultiHeadAttention(num_heads=2, key_dim=4)(y, y, attention_mask=np.ones((2, 3, 5, 5), bool))
    with pytest.raises(ValueError, match=r"`attention_mask` must have shape \[T, S\], \[B, T, S\] or \[B, N, T, S\]"):
        MultiHeadAttention(num_heads=N, key_dim=4)(x, x, attention_mask=np.ones((T,), bool))
