"""The JAX half of tests/backends/test_jax_backend.py, run in its own process
(a process has one Keras backend): `python jax_side.py WORK_DIR`.

TensorFlow is made unimportable first, so everything here shows that the
layers, models, losses, metrics and schedules need no TensorFlow. WORK_DIR
holds what the TensorFlow side wrote (tf_model.keras, inputs.npz with its
logits); this side writes jax_trained.keras and jax.npz for it to check.
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
    optimizer = translation_optimizer(model.d_model, warmup_steps=4, schedule="linear")
    assert fit_schedule_to_run(optimizer, 40).total_steps == 40
    model.compile(optimizer=optimizer, loss=MaskedCrossEntropy(label_smoothing=0.1), metrics=[MaskedAccuracy()])
    x = {"source": source, "target": decoder_input}
    before = float(model.evaluate(x, labels, verbose=0)[0])
    model.fit(x, labels, batch_size=len(source), epochs=20, verbose=0)  # dropout on, 20 steps
    after = float(model.evaluate(x, labels, verbose=0)[0])
    assert after < 0.8 * before, (before, after)
    model.save(os.path.join(work, "jax_trained.keras"))
    logits = ops.convert_to_numpy(model(x))
    np.savez(os.path.join(work, "jax.npz"), logits=logits, before=before, after=after)


def main(work):
    assert keras.backend.backend() == "jax"
    assert kt.Transformer is not None  # the package imports without TensorFlow
    model, data = check_tensorflow_model_loads_with_equal_logits(work)
    check_cached_steps_under_jit_equal_a_full_pass(model, data)
    train_on_jax(model, data, work)
    assert "tensorflow" not in {m.split(".")[0] for m, v in sys.modules.items() if v is not None}
    print("jax side passed")


if __name__ == "__main__":
    main(sys.argv[1])
