"""A PyTorch smoke test: a model saved on TensorFlow loads with equal logits
on the PyTorch backend, trains there with `training.train` (resumed exactly
after a kill), decodes, and comes back to TensorFlow with the logits and
greedy tokens PyTorch gave. The PyTorch half runs in its own process
(tests/backends/torch_side.py), with TensorFlow unimportable."""

import os
import subprocess
import sys

import keras
import numpy as np

from keras_transformer.decoding import greedy_decode
from tests.backends.test_jax_backend import save_tensorflow_side

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import torch  # noqa: E402,F401 - installed by `make test`: a missing PyTorch fails here rather than skipping


def test_a_model_trains_resumes_and_decodes_on_pytorch_and_comes_back(tmp_path):
    _, _, source, target, logits = save_tensorflow_side(tmp_path, num_layers=1)
    # A Llama-style CausalLM too (rotary, grouped-query, sliding window, RMSNorm, SwiGLU): the PyTorch side
    # checks its logits and that its cached steps (a rolling cache) equal its full pass.
    import keras_transformer as kt

    lm = kt.CausalLM(40, num_layers=2, d_model=32, num_heads=4, num_key_value_heads=2, d_ff=48, sliding_window=3)
    lm_ids = np.random.default_rng(5).integers(1, 40, size=(2, 7)).astype("int32")
    lm.save(tmp_path / "tf_lm.keras")  # before its first call: saving builds it (it once saved no weights)
    np.savez(tmp_path / "lm.npz", ids=lm_ids, logits=keras.ops.convert_to_numpy(lm(lm_ids)))

    env = {**os.environ, "KERAS_BACKEND": "torch", "PYTHONPATH": ROOT, "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "backends", "torch_side.py"), str(tmp_path)],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert result.returncode == 0 and "torch side passed" in result.stdout, (result.stdout + result.stderr)[-4000:]

    trained = keras.saving.load_model(tmp_path / "torch_trained.keras")
    torch_side = np.load(tmp_path / "torch.npz")
    again = keras.ops.convert_to_numpy(trained({"source": source, "target": target[:, :-1]}))
    np.testing.assert_allclose(again, torch_side["logits"], atol=2e-5, rtol=1e-5)
    assert np.abs(again - logits[:, :-1]).max() > 1e-2  # it trained
    np.testing.assert_array_equal(greedy_decode(trained, source, 12, max_extra_length=4).numpy(), torch_side["tokens"])
