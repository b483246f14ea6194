"""The PyTorch half of tests/backends/test_torch_backend.py, run in its own
process with TensorFlow unimportable: `python torch_side.py WORK_DIR`.

It loads the model the TensorFlow side saved (tf_model.keras, inputs.npz)
and checks its logits (and a Llama-style `CausalLM`'s, with its cached
steps), trains it with `training.train` from a `TokenStream`
(killed once and resumed, against a run that was not), saves the result as
torch_trained.keras, and writes torch.npz (its logits and greedy tokens)
for the TensorFlow side to check.
"""

import os
import shutil
import sys

if __name__ == "__main__":  # not when pytest imports this file for its doctests
    sys.modules["tensorflow"] = None  # any `import tensorflow` now fails
    os.environ["KERAS_BACKEND"] = "torch"

import keras  # noqa: E402
import numpy as np  # noqa: E402
from keras import ops  # noqa: E402

from keras_transformer import data as kt_data  # noqa: E402
from keras_transformer import training  # noqa: E402
from keras_transformer.decoding import greedy_decode  # noqa: E402


class _Kill(keras.callbacks.Callback):
    def __init__(self, after):
        super().__init__()
        self.after, self.batches = after, 0

    def on_train_batch_end(self, batch, logs=None):
        self.batches += 1
        if self.batches == self.after:
            raise KeyboardInterrupt("killed")


def _weights(model):
    return [ops.convert_to_numpy(w) for w in model.weights]


def _check_fused_default_follows_the_keras_device():
    # The fused path's default asks where Keras computes (KERAS_TORCH_DEVICE,
    # a keras.device scope: keras/src/backend/torch/core.py, get_device), not
    # whether CUDA exists: a CPU-placed model on a CUDA machine stays unfused.
    import torch

    from keras_transformer.layers import attention

    layer = attention.MultiHeadAttention(num_heads=2, key_dim=4)
    available = torch.cuda.is_available
    torch.cuda.is_available = lambda: True
    try:
        with keras.device("cpu"):
            assert attention._platform() == "cpu" and not layer._fused(False, False)
        with keras.device("cuda"):
            assert attention._platform() == "cuda" and layer._fused(False, False)
    finally:
        torch.cuda.is_available = available


def _check_a_llama_style_model(work):
    """The CausalLM the TensorFlow side saved: its logits, and cached steps equal to the full pass."""
    lm = keras.saving.load_model(os.path.join(work, "tf_lm.keras"))
    saved = np.load(os.path.join(work, "lm.npz"))
    ids = saved["ids"]
    full = ops.convert_to_numpy(lm(ids))
    np.testing.assert_allclose(full, saved["logits"], atol=2e-5, rtol=1e-5)
    cache = lm.init_cache(ids.shape[0], ids.shape[1])
    logits, cache = lm.call_with_cache(ids[:, :4], cache, 0)
    steps = [ops.convert_to_numpy(logits)]
    for t in range(4, ids.shape[1]):
        logits, cache = lm.call_with_cache(ids[:, t : t + 1], cache, t)
        steps.append(ops.convert_to_numpy(logits))
    np.testing.assert_allclose(np.concatenate(steps, axis=1), full, atol=1e-4)


def main(work):
    assert keras.backend.backend() == "torch"
    _check_fused_default_follows_the_keras_device()
    _check_a_llama_style_model(work)
    inputs = np.load(os.path.join(work, "inputs.npz"))
    source, target = inputs["source"], inputs["target"]
    model_path = os.path.join(work, "tf_model.keras")
    model = keras.saving.load_model(model_path)
    logits = ops.convert_to_numpy(model({"source": source, "target": target}))
    np.testing.assert_allclose(logits, inputs["logits"], atol=2e-5, rtol=1e-5)

    # Pairs of the reversal task as token arrays, an endless stream of one shape.
    pairs = [(s[s != 0], t[t != 0]) for s, t in zip(source, target)] * 8
    kt_data.save_token_arrays(os.path.join(work, "pairs.npz"), pairs)
    batches = kt_data.TokenBatches(os.path.join(work, "pairs.npz"), tokens_per_batch=60, max_length=11,
                                   boundaries=[12], pad_to_bucket_boundary=True, fill_batches=True)

    def run(name, kill=None):
        shutil.rmtree(os.path.join(work, name), ignore_errors=True)
        for callbacks in ([_Kill(kill)] if kill else [], []):
            keras.utils.set_random_seed(1)
            fresh = keras.saving.load_model(model_path)
            training.compile_for_translation(fresh, warmup_steps=10, learning_rate_scale=3.0)
            fresh.optimizer.build(fresh.trainable_variables)
            try:
                training.train(fresh, batches.stream(), 4, 3, os.path.join(work, name), backup_every=2,
                               validation_data=batches.stream().take(1), callbacks=callbacks, verbose=0)
            except KeyboardInterrupt:
                assert training.StepBackup(os.path.join(work, name, "backup")).restore(fresh) == 6
                continue
            assert not callbacks, "the kill did not come"
            return fresh

    straight = run("straight")
    resumed = run("resumed", kill=7)  # resumes at step 6, in the second epoch
    assert int(ops.convert_to_numpy(resumed.optimizer.iterations)) == 12
    for a, b in zip(_weights(straight), _weights(resumed)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert any(np.abs(a - b).max() > 1e-3 for a, b in zip(_weights(straight), _weights(model)))

    straight.save(os.path.join(work, "torch_trained.keras"))
    trained_logits = ops.convert_to_numpy(straight({"source": source, "target": target[:, :-1]}))
    tokens = greedy_decode(straight, source, 12, max_extra_length=4)
    np.savez(os.path.join(work, "torch.npz"), logits=trained_logits, tokens=ops.convert_to_numpy(tokens))
    print("torch side passed")


if __name__ == "__main__":
    main(sys.argv[1])
