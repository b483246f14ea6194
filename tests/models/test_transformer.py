import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
from keras import ops

from keras_transformer import PRESETS
from keras_transformer import Transformer
from tests.backend import dtype
from tests.backend import to_numpy

SOURCE = np.array([[5, 6, 7, 8, 0, 0], [9, 10, 11, 12, 13, 14]])
TARGET = np.array([[1, 5, 6, 0, 0], [1, 7, 8, 9, 10]])


def _small(**kwargs):
    args = dict(num_layers=2, d_model=32, num_heads=4, d_ff=64, dropout=0.0, max_length=64)
    args.update(kwargs)
    return Transformer(source_vocab_size=40, target_vocab_size=40, **args)


def test_output_shape_and_presets():
    model = Transformer.from_preset("tiny", source_vocab_size=40, target_vocab_size=50)
    logits = model({"source": SOURCE, "target": TARGET})
    assert logits.shape == (2, 5, 50) and dtype(logits) == "float32"
    assert model.encoder.num_layers == 4 and model.d_model == 128 and model.d_ff == 256
    assert PRESETS["base"] == dict(num_layers=6, d_model=512, num_heads=8, d_ff=2048, dropout=0.1)
    assert PRESETS["big"]["d_model"] == 1024 and PRESETS["big"]["num_heads"] == 16


def test_shared_embeddings_count_weights_once():
    def embedding_params(share):
        model = _small(share_embeddings=share)
        model({"source": SOURCE, "target": TARGET})
        return sum(int(np.prod(w.shape)) for w in model.trainable_weights if "embedding" in w.path or "output_projection" in w.path)

    # 40 x 32 per matrix; "none" adds a 40-wide output bias.
    assert embedding_params("all") == 40 * 32
    assert embedding_params("decoder") == 2 * 40 * 32
    assert embedding_params("none") == 3 * 40 * 32 + 40
    with pytest.raises(ValueError, match="share_embeddings='all' needs"):
        Transformer(40, 41, share_embeddings="all")
    with pytest.raises(ValueError, match="share_embeddings.*'sometimes'"):
        Transformer(40, 40, share_embeddings="sometimes")


def test_config_round_trip():
    model = _small(norm_first=True)
    restored = Transformer.from_config(model.get_config())
    assert restored.get_config() == model.get_config()


def test_target_is_causal_and_source_padding_is_ignored():
    model = _small()
    logits = to_numpy(model({"source": SOURCE, "target": TARGET}))
    changed_target = TARGET.copy()
    changed_target[1, 3:] = [20, 21]
    changed = to_numpy(model({"source": SOURCE, "target": changed_target}))
    np.testing.assert_allclose(changed[1, :3], logits[1, :3], atol=1e-5)
    # Trimming the padding off sentence 0 changes nothing at its real positions.
    trimmed = to_numpy(model({"source": SOURCE[:1, :4], "target": TARGET[:1, :3]}))
    np.testing.assert_allclose(trimmed, logits[:1, :3], atol=1e-5)


@pytest.mark.parametrize("norm_first", [False, True])
def test_cached_decoding_equals_full_pass(norm_first):
    model = _small(norm_first=norm_first)
    target = TARGET[1:]  # no target padding
    source = SOURCE
    full = model({"source": source, "target": np.repeat(target, 2, axis=0)})
    encoder_output, source_mask = model.encode(source)
    cache = model.init_cache(encoder_output, max_length=8)
    steps = []
    for t in range(target.shape[1]):
        step = np.repeat(target[:, t : t + 1], 2, axis=0)
        logits, cache = model.decode(step, encoder_output, source_mask, cache=cache, cache_index=t)
        steps.append(logits)
    np.testing.assert_allclose(ops.concatenate(steps, axis=1), full, atol=1e-4)


def _copy_task(batches=40, batch_size=32, length=8, vocab=20, seed=0):
    rng = np.random.default_rng(seed)
    source = rng.integers(3, vocab, size=(batches * batch_size, length))
    target = np.concatenate([np.ones((len(source), 1), int), source], axis=1)
    return {"source": source, "target": target[:, :-1]}, target[:, 1:]


def _fit_copy_task(jit_compile, epochs=8):
    model = Transformer(20, 20, num_layers=2, d_model=64, num_heads=4, d_ff=128, dropout=0.0, max_length=32)
    model.compile(
        optimizer=keras.optimizers.Adam(3e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=jit_compile,
    )
    inputs, labels = _copy_task(batches=30)
    history = model.fit(inputs, labels, batch_size=32, epochs=epochs, verbose=0)
    return model, history.history["loss"]


def test_fit_learns_copy_task_with_xla():
    model, losses = _fit_copy_task(jit_compile=True)
    assert losses[-1] < 0.2 * losses[0], losses
    inputs, labels = _copy_task(batches=1, seed=1)
    accuracy = np.mean(np.argmax(model.predict(inputs, verbose=0), -1) == labels)
    assert accuracy > 0.9, accuracy


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_mixed_precision_outputs_float32_and_trains(policy):
    keras.config.set_dtype_policy(policy)
    model = _small()
    logits = model({"source": SOURCE, "target": TARGET})
    assert dtype(logits) == "float32", logits.dtype
    assert model.encoder.stack[0].self_attention.compute_dtype == policy.split("_")[1]
    assert all(w.dtype == "float32" for w in model.weights)
    model.compile(
        optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    history = model.fit({"source": SOURCE, "target": TARGET}, TARGET, epochs=2, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))


def test_saved_keras_file_loads_in_fresh_process(tmp_path):
    model = _small(share_embeddings="none", norm_first=True)
    expected = to_numpy(model({"source": SOURCE, "target": TARGET}))
    path = tmp_path / "model.keras"
    model.save(path)
    np.save(tmp_path / "expected.npy", expected)
    script = textwrap.dedent(
        f"""
        import numpy as np, keras
        import keras_transformer  # registers the custom objects
        model = keras.models.load_model({str(path)!r})
        source = np.array({SOURCE.tolist()}); target = np.array({TARGET.tolist()})
        logits = keras.ops.convert_to_numpy(model({{"source": source, "target": target}}))
        expected = np.load({str(tmp_path / "expected.npy")!r})
        assert type(model).__name__ == "Transformer"
        assert np.array_equal(logits, expected), np.abs(logits - expected).max()
        print("OK")
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "OK" in result.stdout, result.stderr[-2000:]


def test_bad_inputs_and_arguments():
    model = _small()
    with pytest.raises(ValueError, match="dict with keys 'source' and 'target'"):
        model(SOURCE)
    with pytest.raises(ValueError, match="divisible by `num_heads`.*d_model=30, num_heads=4"):
        Transformer(10, 10, d_model=30, num_heads=4)
    with pytest.raises(ValueError, match="num_layers"):
        Transformer(10, 10, num_layers=0)
    with pytest.raises(ValueError, match="preset.*'huge'"):
        Transformer.from_preset("huge", 10, 10)


def test_a_model_saved_with_two_dimensional_attention_kernels_loads_with_equal_logits():
    # tests/fixtures/transformer_2d_kernels.keras was written by the library
    # before MultiHeadAttention took Keras's weight layout (kernels [D, N * H]
    # then, [D, N, H] now), compiled and after one Adam step, with its logits
    # and optimizer slots. It loads compiled (as `--evaluate-only` loads a run)
    # with equal logits, the slots reshaped, and trains on.
    import h5py
    import zipfile

    fixtures = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "fixtures")
    path = os.path.join(fixtures, "transformer_2d_kernels.keras")
    with zipfile.ZipFile(path) as archive, archive.open("model.weights.h5") as f, h5py.File(f) as h5:
        shapes = []
        h5.visititems(lambda name, item: shapes.append(item.shape) if isinstance(item, h5py.Dataset) else None)
    assert (16, 16) in shapes and (16, 2, 8) not in shapes  # the file really holds the earlier layout
    data = np.load(os.path.join(fixtures, "transformer_2d_kernels.npz"))
    model = keras.saving.load_model(path)
    assert tuple(model.encoder.stack[0].self_attention.query_kernel.shape) == (16, 2, 8)
    logits = keras.ops.convert_to_numpy(model({"source": data["source"], "target": data["target"]}))
    np.testing.assert_allclose(logits, data["logits"], atol=1e-5, rtol=1e-5)
    slots = [keras.ops.convert_to_numpy(v) for v in model.optimizer.variables]
    assert len(slots) == len([k for k in data.files if k.startswith("slot_")])
    for i, slot in enumerate(slots):
        np.testing.assert_array_equal(slot, data[f"slot_{i}"].reshape(slot.shape))
    assert any(np.abs(s).max() > 0 for s in slots[2:])  # Adam's moments, not zeros
    model.train_on_batch({"source": data["source"], "target": data["target"][:, :-1]}, data["target"][:, 1:])


def test_a_training_backup_with_two_dimensional_attention_kernels_resumes(tmp_path):
    # The same file's weights as a `.weights.h5` backup (StepBackup, epoch
    # checkpoints): a compiled model with a built optimizer loads it, slots too.
    import zipfile

    from keras_transformer.training import compile_for_translation

    fixtures = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "fixtures")
    with zipfile.ZipFile(os.path.join(fixtures, "transformer_2d_kernels.keras")) as archive:
        (tmp_path / "backup.weights.h5").write_bytes(archive.read("model.weights.h5"))
    data = np.load(os.path.join(fixtures, "transformer_2d_kernels.npz"))
    model = Transformer(30, 30, num_layers=1, d_model=16, num_heads=2, d_ff=32, dropout=0.1, max_length=16)
    model.build()
    compile_for_translation(model, warmup_steps=10)
    model.optimizer.build(model.trainable_variables)
    model.load_weights(str(tmp_path / "backup.weights.h5"))
    logits = keras.ops.convert_to_numpy(model({"source": data["source"], "target": data["target"]}))
    np.testing.assert_allclose(logits, data["logits"], atol=1e-5, rtol=1e-5)
    for i, slot in enumerate(model.optimizer.variables):
        slot = keras.ops.convert_to_numpy(slot)
        np.testing.assert_array_equal(slot, data[f"slot_{i}"].reshape(slot.shape))


def test_only_the_earlier_attention_shapes_are_reshaped():
    # A kernel stored as [D, 4, 8] is not the [D, 8, 4] one with its heads
    # scrambled: only the exact 2-D shapes of before are reshaped.
    from keras_transformer.layers import MultiHeadAttention

    layer = MultiHeadAttention(num_heads=8, key_dim=4)
    x = np.zeros((1, 2, 16), "float32")
    layer(x, x)
    weights = layer.get_weights()
    weights[0] = weights[0].reshape(16, 4, 8)
    with pytest.raises(ValueError):
        layer.load_own_variables({str(i): w for i, w in enumerate(weights)})
