"""The layers and models on the JAX backend, against the TensorFlow backend:
a model saved on TensorFlow gives the same logits on JAX, its cached decoding
steps run under `jax.jit`, it trains with `fit` there, and the model trained
on JAX loads back on TensorFlow with the logits JAX gave. The JAX half runs in
its own process (tests/backends/jax_side.py), with TensorFlow unimportable."""

import os
import subprocess
import sys

import keras
import numpy as np

import keras_transformer as kt

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import jax  # noqa: E402,F401 - in the dev extras: a missing JAX fails here rather than skipping


def _jax_side(*args, **env):
    env = {**os.environ, "KERAS_BACKEND": "jax", "PYTHONPATH": ROOT, "JAX_PLATFORMS": "cpu", **env}
    result = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "backends", "jax_side.py"), *args],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert result.returncode == 0 and "jax side passed" in result.stdout, (result.stdout + result.stderr)[-4000:]


def test_data_and_model_parallel_training_on_two_devices_equals_one_device(tmp_path):
    _jax_side(str(tmp_path), "distributed", XLA_FLAGS="--xla_force_host_platform_device_count=2")


def test_a_model_round_trips_between_tensorflow_and_jax(tmp_path):
    assert keras.backend.backend() == "tensorflow"
    keras.utils.set_random_seed(3)
    model = kt.Transformer(40, 40, num_layers=2, d_model=32, num_heads=4, d_ff=64, dropout=0.1, max_length=32)
    rng = np.random.default_rng(0)
    source = rng.integers(3, 40, size=(6, 9)).astype("int32")
    target = rng.integers(3, 40, size=(6, 8)).astype("int32")
    source[:2, 6:] = 0  # padded rows: masks must agree too
    target[:3, 5:] = 0
    logits = keras.ops.convert_to_numpy(model({"source": source, "target": target}))
    model.save(tmp_path / "tf_model.keras")
    np.savez(tmp_path / "inputs.npz", source=source, target=target, logits=logits)

    _jax_side(str(tmp_path))

    trained = keras.saving.load_model(tmp_path / "jax_trained.keras")
    jax_side = np.load(tmp_path / "jax.npz")
    assert jax_side["after"] < 0.8 * jax_side["before"]
    again = keras.ops.convert_to_numpy(trained({"source": source, "target": target[:, :-1]}))
    np.testing.assert_allclose(again, jax_side["logits"], atol=2e-5, rtol=1e-5)
    # Training moved the weights: the round trip is not the untouched model's.
    assert np.abs(again - logits[:, :-1]).max() > 1e-2
