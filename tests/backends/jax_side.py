"""The JAX half of tests/backends/test_jax_backend.py, run in its own process
(a process has one Keras backend): `python jax_side.py WORK_DIR`, or
`python jax_side.py WORK_DIR distributed` on two devices
(XLA_FLAGS=--xla_force_host_platform_device_count=2).

TensorFlow is made unimportable first, so everything here shows that the
layers, models, losses, metrics and schedules need no TensorFlow. WORK_DIR
holds what the TensorFlow side wrote (tf_model.keras, inputs.npz with its
logits); this side writes jax_trained.keras and jax.npz (its logits, losses and
translations under jit) for it to check.
"""

import os
import sys

if __name__ == "__main__":  # not when pytest imports this file for its doctests
    sys.modules["tensorflow"] = None  # any `import tensorflow` now fails
    os.environ["KERAS_BACKEND"] = "jax"

import keras  # noqa: E402
import numpy as np  # noqa: E402
from keras import ops  # noqa: E402

import keras_transformer as kt  # noqa: E402
from keras_transformer.training.losses import MaskedAccuracy  # noqa: E402
from keras_transformer.training.losses import MaskedCrossEntropy  # noqa: E402
from keras_transformer.training.schedules import fit_schedule_to_run  # noqa: E402
from keras_transformer.training.schedules import translation_optimizer  # noqa: E402


def check_tensorflow_model_loads_with_equal_logits(work):
    data = np.load(os.path.join(work, "inputs.npz"))
    model = keras.saving.load_model(os.path.join(work, "tf_model.keras"))
    logits = ops.convert_to_numpy(model({"source": data["source"], "target": data["target"]}))
    np.testing.assert_allclose(logits, data["logits"], atol=2e-5, rtol=1e-5)
    return model, data


def check_cached_steps_under_jit_equal_a_full_pass(model, data):
    # The preallocated cache under jax.jit with a traced position: each step's
    # logits equal the full causal pass's logits at that position.
    source, target = data["source"], data["target"]
    encoder_output, source_mask = model.encode(source)
    full = ops.convert_to_numpy(model.decode(target, encoder_output, source_mask))
    cache = model.init_cache(encoder_output, target.shape[1])

    import jax

    @jax.jit
    def step(token, cache, index):
        return model.decode(token, encoder_output, source_mask, cache=cache, cache_index=index)

    for i in range(target.shape[1]):
        logits, cache = step(target[:, i:i + 1], cache, np.int32(i))
        # Padding positions of the target differ (a full pass masks them as keys).
        real = target[:, i] != 0
        np.testing.assert_allclose(np.asarray(logits)[real, 0], full[real, i], atol=2e-5, rtol=1e-5)


def train_on_jax(model, data, work):
    source, target = data["source"], data["target"]
    decoder_input, labels = target[:, :-1], target[:, 1:]
    optimizer = translation_optimizer(model.d_model, warmup_steps=10, scale=0.1, schedule="linear")
    assert fit_schedule_to_run(optimizer, 120).total_steps == 120
    model.compile(optimizer=optimizer, loss=MaskedCrossEntropy(label_smoothing=0.1), metrics=[MaskedAccuracy()])
    x = {"source": source, "target": decoder_input}
    before = float(model.evaluate(x, labels, verbose=0)[0])
    model.fit(x, labels, batch_size=len(source), epochs=120, verbose=0)  # dropout on, 120 steps
    after = float(model.evaluate(x, labels, verbose=0)[0])
    assert after < 0.2 * before, (before, after)
    model.save(os.path.join(work, "jax_trained.keras"))
    logits = ops.convert_to_numpy(model(x))
    return dict(logits=logits, before=before, after=after)


def decode_under_jit(model, data):
    # Greedy and beam search on the fixed-shape loop, traced by jax.jit; the
    # decoder over the whole prefix (no cache) gives the same tokens.
    import jax

    from keras_transformer.decoding import beam_search
    from keras_transformer.decoding import greedy_decode

    source = data["source"]
    greedy = np.asarray(jax.jit(lambda s: greedy_decode(model, s, 32, max_extra_length=4))(source))
    uncached = greedy_decode(model, source, 32, max_extra_length=4, use_cache=False)
    np.testing.assert_array_equal(greedy, np.asarray(uncached))
    beam = jax.jit(lambda s: beam_search(model, s, 32, beam_size=4, alpha=0.6, max_extra_length=50))(source)
    uncached = beam_search(model, source, 32, beam_size=4, alpha=0.6, max_extra_length=50, use_cache=False)
    np.testing.assert_array_equal(np.asarray(beam["ids"])[:, 0], np.asarray(uncached["ids"])[:, 0])
    np.testing.assert_allclose(np.asarray(beam["scores"]), np.asarray(uncached["scores"]), atol=1e-4)
    # Empty sources and empty batches give empty results, as on TensorFlow.
    for empty in (np.zeros((2, 0), "int32"), np.zeros((0, 5), "int32")):
        assert np.asarray(greedy_decode(model, empty, 4)).shape == (len(empty), 4)
        out = beam_search(model, empty, 4, beam_size=2, return_attention=True)
        assert out["ids"].shape == (len(empty), 2, 4) and out["attention"].shape == (len(empty), 2, 4, empty.shape[1])
    try:  # the preallocated cache's size must be known when traced
        greedy_decode(model, source, np.float32(8))
    except ValueError as error:
        assert "Python integer" in str(error), error
    else:
        raise AssertionError("a max_length of no integer type was taken")
    # Sampling under jit, settings per sentence: the counter-based noise draws what TensorFlow draws.
    from keras_transformer.decoding import sample

    settings = dict(temperature=np.array([1.0, 0.7, 1.3, 1.0, 0.0, 2.0], "float32"), top_k=5,
                    top_p=np.full([6], 0.95, "float32"), seed=np.arange(6, dtype="int32") * 1000 - 2000)
    sampled = jax.jit(lambda s: sample(model, s, 32, num_samples=3, max_extra_length=4, **settings))(source)
    # A seed past 32 bits keeps its high word on JAX (whose integers are 32-bit) when given as a Python int.
    big_seed = jax.jit(lambda s: sample(model, s, 32, num_samples=2, seed=2**40 + 7, max_extra_length=4))(source)
    return dict(big_seed_ids=np.asarray(big_seed["ids"]),
                greedy=greedy, beam_ids=np.asarray(beam["ids"]), beam_scores=np.asarray(beam["scores"]),
                sample_ids=np.asarray(sampled["ids"]), sample_log_probs=np.asarray(sampled["log_probs"]))


def check_distributed_training_equals_one_device():
    # The same model, data and SGD steps on one device, under DataParallel
    # and under ModelParallel with the library's layout map: the same losses
    # (not N times them) and the same weights after training.
    import jax

    from keras_transformer.models.distribution import layout_map

    devices = jax.devices()
    assert len(devices) == 2, devices
    rng = np.random.default_rng(4)
    source = rng.integers(3, 40, size=(8, 9)).astype("int32")
    target = rng.integers(3, 40, size=(8, 9)).astype("int32")
    source[:3, 6:] = 0
    target[2:5, 5:] = 0  # rows with different token counts on the two devices
    x, labels = {"source": source, "target": target[:, :-1]}, target[:, 1:]

    def run(distribution):
        keras.distribution.set_distribution(distribution)
        keras.utils.set_random_seed(5)
        model = kt.Transformer(40, 40, num_layers=1, d_model=16, num_heads=2, d_ff=32, dropout=0.0, max_length=16)
        model.compile(optimizer=keras.optimizers.SGD(0.5), loss=MaskedCrossEntropy())
        history = model.fit(x, labels, batch_size=8, epochs=3, shuffle=False, verbose=0)
        weights = [ops.convert_to_numpy(w) for w in model.weights]
        keras.distribution.set_distribution(None)
        return model, history.history["loss"], weights

    _, losses, weights = run(None)
    _, dp_losses, dp_weights = run(keras.distribution.DataParallel(devices=devices))
    mesh = keras.distribution.DeviceMesh((1, 2), ("batch", "model"), devices)
    mp_model, mp_losses, mp_weights = run(
        keras.distribution.ModelParallel(layout_map=layout_map(mesh), batch_dim_name="batch")
    )
    for other_losses, other_weights in ((dp_losses, dp_weights), (mp_losses, mp_weights)):
        np.testing.assert_allclose(other_losses, losses, rtol=1e-5)
        for a, b in zip(other_weights, weights):
            np.testing.assert_allclose(a, b, atol=1e-5)
    assert losses[-1] < losses[0]
    attention = mp_model.encoder.stack[0].self_attention
    inner = mp_model.encoder.stack[0].feed_forward.inner.kernel
    for variable, axis in ((attention.query_kernel, 1), (attention.output_kernel, 0), (inner, 1)):
        spec = variable.value.sharding.spec
        assert spec[axis] == "model", (variable.path, spec)  # really sharded, not replicated


def check_dropout_statistics():
    # The library's Dropout on JAX: the rate of zeros, the scale of the kept
    # elements, and two calls drawing different masks.
    layer = kt.Dropout(0.3, seed=1)
    ones = np.ones((400, 501), "float32")  # an odd size: the last 30-bit word serves one element
    first = ops.convert_to_numpy(layer(ones, training=True))
    second = ops.convert_to_numpy(layer(ones, training=True))
    kept = first != 0
    assert abs(1 - kept.mean() - 0.3) < 0.005, kept.mean()
    np.testing.assert_allclose(first[kept], 1 / (1 - round(0.3 * 32768) / 32768), rtol=1e-6)
    assert (kept != (second != 0)).mean() > 0.3  # a new mask each call
    assert np.array_equal(ops.convert_to_numpy(layer(ones, training=False)), ones)


def check_fused_attention_equals_explicit():
    # jax.nn.dot_product_attention (the path that becomes cuDNN's flash
    # attention on a GPU) against the explicit matmuls, with padded keys and
    # a causal mask.
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 7, 16)).astype("float32")
    fused = kt.MultiHeadAttention(num_heads=4, key_dim=4, fused_attention=True)
    explicit = kt.MultiHeadAttention(num_heads=4, key_dim=4, fused_attention=False)
    fused(x, x)
    explicit(x, x)
    explicit.set_weights(fused.get_weights())
    keep = np.ones((3, 7), bool)
    keep[1, 4:] = False
    for kwargs in ({}, dict(value_mask=keep, use_causal_mask=True)):
        np.testing.assert_allclose(ops.convert_to_numpy(fused(x, x, **kwargs)),
                                   ops.convert_to_numpy(explicit(x, x, **kwargs)), atol=1e-5)


def main(work):
    assert keras.backend.backend() == "jax"
    assert kt.Transformer is not None  # the package imports without TensorFlow
    check_dropout_statistics()
    check_fused_attention_equals_explicit()
    model, data = check_tensorflow_model_loads_with_equal_logits(work)
    check_cached_steps_under_jit_equal_a_full_pass(model, data)
    results = train_on_jax(model, data, work)
    results.update(decode_under_jit(model, data))
    np.savez(os.path.join(work, "jax.npz"), **results)
    # Batches from token arrays, the data path that needs no TensorFlow.
    from keras_transformer.data.arrays import TokenBatches
    from keras_transformer.data.arrays import save_token_arrays

    path = os.path.join(work, "arrays.npz")
    save_token_arrays(path, ((s[s != 0], t[t != 0]) for s, t in zip(data["source"], data["target"])))
    history = model.fit(TokenBatches(path, tokens_per_batch=32, max_length=16), epochs=2, shuffle=False, verbose=0)
    assert np.all(np.isfinite(history.history["loss"])), history.history

    from keras_transformer.training.callbacks import TimeBudget

    try:  # the end it would move is never seen by JAX's compiled step
        TimeBudget(1.0, schedule=model.optimizer._learning_rate)
    except ValueError as error:
        assert "JAX" in str(error), error
    else:
        raise AssertionError("TimeBudget took a schedule on JAX")
    assert "tensorflow" not in {m.split(".")[0] for m, v in sys.modules.items() if v is not None}
    print("jax side passed")


if __name__ == "__main__":
    if sys.argv[2:] == ["distributed"]:
        check_distributed_training_equals_one_device()
        print("jax side passed")
    else:
        main(sys.argv[1])
