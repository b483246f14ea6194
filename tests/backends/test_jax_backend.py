"""The layers and models on the JAX backend, against the TensorFlow backend:
a model saved on TensorFlow gives the same logits on JAX, its cached decoding
steps and its greedy and beam searches run under `jax.jit`, it trains with
`fit` there, and the model trained on JAX loads back on TensorFlow with the
logits and translations JAX gave, also once exported. The JAX half runs in
its own process (tests/backends/jax_side.py), with TensorFlow unimportable."""

import os
import subprocess
import sys

import keras
import numpy as np
import tensorflow as tf

import keras_transformer as kt
from keras_transformer.decoding import beam_search
from keras_transformer.decoding import greedy_decode
from keras_transformer.decoding import sample
from keras_transformer.export.__main__ import main as export_main
from keras_transformer.text.tokens import END_ID
from keras_transformer.text.tokens import RESERVED_TOKENS
from keras_transformer.text.tokens import START_ID
from keras_transformer.text.tokens import write_vocab

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import jax  # noqa: E402,F401 - in the dev extras: a missing JAX fails here rather than skipping


def _jax_side(*args, **env):
    env = {**os.environ, "KERAS_BACKEND": "jax", "PYTHONPATH": ROOT, "JAX_PLATFORMS": "cpu", **env}
    result = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "backends", "jax_side.py"), *args],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert result.returncode == 0 and "jax side passed" in result.stdout, (result.stdout + result.stderr)[-4000:]


def test_data_and_model_parallel_training_on_two_devices_equals_one_device(tmp_path):
    _jax_side(str(tmp_path), "distributed", XLA_FLAGS="--xla_force_host_platform_device_count=2")


def _reversal_task(n=6):
    """Sentences of words w4 ... w39 (ids 4 ... 39), each target the source reversed:
    texts, and source and target ids wrapped in [START] ... [END], 0-padded."""
    rng = np.random.default_rng(0)
    texts, source, target = [], np.zeros((n, 11), "int32"), np.zeros((n, 11), "int32")
    for row in range(n):
        words = rng.integers(4, 40, 9 - row % 3)
        texts.append(" ".join(f"w{w}" for w in words))
        source[row, :len(words) + 2] = [START_ID, *words, END_ID]
        target[row, :len(words) + 2] = [START_ID, *words[::-1], END_ID]
    return texts, source, target


def save_tensorflow_side(tmp_path, num_layers):
    """A seeded model on TensorFlow, saved as tf_model.keras, with the reversal
    task and its logits in inputs.npz: what the other backend's side starts from.
    Returns (model, texts, source, target, logits)."""
    assert keras.backend.backend() == "tensorflow"
    keras.utils.set_random_seed(3)
    model = kt.Transformer(40, 40, num_layers=num_layers, d_model=32, num_heads=4, d_ff=64, dropout=0.1,
                           max_length=32)
    texts, source, target = _reversal_task()
    logits = keras.ops.convert_to_numpy(model({"source": source, "target": target}))
    model.save(tmp_path / "tf_model.keras")
    np.savez(tmp_path / "inputs.npz", source=source, target=target, logits=logits)
    return model, texts, source, target, logits


def test_a_model_round_trips_between_tensorflow_and_jax(tmp_path):
    # The cross-backend path of a user who trains on JAX and serves with
    # TensorFlow: a TF-saved model gives TF's logits on JAX, trains there,
    # decodes under jax.jit, and comes back as a .keras that gives JAX's
    # logits and JAX's translations on TensorFlow, through its own decoding
    # loop and through the SavedModel that `python -m keras_transformer.export`
    # writes.
    _, texts, source, target, logits = save_tensorflow_side(tmp_path, num_layers=2)

    _jax_side(str(tmp_path))

    trained = keras.saving.load_model(tmp_path / "jax_trained.keras")
    jax_side = np.load(tmp_path / "jax.npz")
    assert jax_side["after"] < 0.2 * jax_side["before"]
    again = keras.ops.convert_to_numpy(trained({"source": source, "target": target[:, :-1]}))
    np.testing.assert_allclose(again, jax_side["logits"], atol=2e-5, rtol=1e-5)
    # Training moved the weights: the round trip is not the untouched model's.
    assert np.abs(again - logits[:, :-1]).max() > 1e-2

    # TensorFlow's loop (growing cache, a batch that sheds finished sentences)
    # gives the tokens JAX's fixed-shape loop gave under jit. The model has
    # learnt the task, so the choices are not near ties that float error
    # could flip; the best hypothesis is compared exactly, the scores of all.
    greedy = greedy_decode(trained, source, 32, max_extra_length=4).numpy()
    np.testing.assert_array_equal(greedy, jax_side["greedy"])
    assert len({tuple(row) for row in greedy}) == len(source)  # not one degenerate answer
    beam = beam_search(trained, source, 32, beam_size=4, alpha=0.6, max_extra_length=50)
    np.testing.assert_array_equal(beam["ids"].numpy()[:, 0], jax_side["beam_ids"][:, 0])
    np.testing.assert_allclose(beam["scores"].numpy(), jax_side["beam_scores"], atol=1e-4)

    # Samples drawn on JAX under jit, each sentence with its own temperature and seed (negative
    # ones too), are TensorFlow's: the noise is a hash of (seed, sample, step, token), not a draw
    # from either backend's generator.
    settings = dict(temperature=np.array([1.0, 0.7, 1.3, 1.0, 0.0, 2.0], "float32"), top_k=5,
                    top_p=np.full([6], 0.95, "float32"), seed=np.arange(6, dtype="int64") * 1000 - 2000)
    sampled = sample(trained, source, 32, num_samples=3, max_extra_length=4, **settings)
    np.testing.assert_array_equal(sampled["ids"].numpy(), jax_side["sample_ids"])
    np.testing.assert_allclose(sampled["log_probs"].numpy(), jax_side["sample_log_probs"], atol=1e-4)
    assert len({tuple(row) for row in sampled["ids"].numpy().reshape(-1, 32)}) > len(source)  # samples differ
    big_seed = sample(trained, source, 32, num_samples=2, seed=2**40 + 7, max_extra_length=4)["ids"].numpy()
    np.testing.assert_array_equal(big_seed, jax_side["big_seed_ids"])
    low_word = sample(trained, source, 32, num_samples=2, seed=7, max_extra_length=4)["ids"].numpy()
    assert not np.array_equal(big_seed, low_word)  # the high word counts

    # Exported from the command line, raw text in: the SavedModel translates
    # as JAX's beam search (the export's settings: beam 4, alpha 0.6, 50 extra).
    vocab = list(RESERVED_TOKENS) + [f"w{i}" for i in range(4, 40)]
    write_vocab(vocab, str(tmp_path / "vocab.txt"))
    assert export_main(["export", "--model", str(tmp_path / "jax_trained.keras"), "--vocab",
                        str(tmp_path / "vocab.txt"), "--base-dir", str(tmp_path / "export"),
                        "--text-processing", "none"]) == 0
    loaded = tf.saved_model.load(str(tmp_path / "export" / "1"))
    # (No --signatures: all five, each saved; the export tests choose theirs.)
    assert set(loaded.signatures) == {"serving_default", "translate_ids", "score", "attention", "translate"}
    serve = loaded.signatures["serving_default"]
    translations = [t.decode() for t in serve(text=tf.constant(texts))["translation"].numpy()]
    expected = [" ".join(vocab[i] for i in row[:list(row).index(END_ID)]) for row in jax_side["beam_ids"][:, 0]]
    assert translations == expected
