"""The layers compose in the functional API: encoder-only and decoder-only."""

import keras
import numpy as np
from keras import ops

import keras_transformer as kt
from tests.backend import to_numpy


def _embed(ids, vocab_size=30, d_model=32):
    x = kt.TokenEmbedding(vocab_size, d_model)(ids)
    return kt.PositionalEncoding(max_length=64)(x)


def test_encoder_only_classifier_masks_padding_and_round_trips(tmp_path):
    ids = keras.Input(shape=(None,), dtype="int32")
    x = kt.Encoder(num_layers=2, num_heads=4, d_ff=64, dropout=0.0)(_embed(ids))
    pooled = keras.layers.GlobalAveragePooling1D()(x)  # honours the Keras mask
    model = keras.Model(ids, keras.layers.Dense(3)(pooled))

    batch = np.array([[5, 6, 7, 0, 0], [8, 9, 10, 11, 12]])
    logits = to_numpy(model(batch))
    # The padded sentence classifies the same with its padding trimmed.
    np.testing.assert_allclose(model(batch[:1, :3]), logits[:1], atol=1e-5)

    path = tmp_path / "classifier.keras"
    model.save(path)
    np.testing.assert_array_equal(keras.models.load_model(path)(batch), logits)


def test_decoder_only_language_model_trains_and_generates_with_cache():
    vocab = 30
    ids = keras.Input(shape=(None,), dtype="int32")
    stack = kt.Encoder(num_layers=2, num_heads=4, d_ff=64, dropout=0.0, norm_first=True)
    x = stack(_embed(ids, vocab), use_causal_mask=True)
    model = keras.Model(ids, keras.layers.Dense(vocab)(x))
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    # Counting sequences: each token is the previous one plus one.
    starts = np.random.default_rng(0).integers(1, vocab - 12, size=512)
    sequences = starts[:, None] + np.arange(12)[None, :]
    history = model.fit(sequences[:, :-1], sequences[:, 1:], epochs=8, batch_size=32, verbose=0)
    assert history.history["loss"][-1] < 0.2 * history.history["loss"][0]

    # Cached generation through the same layers equals the full causal pass.
    embedding, positions, dense = model.layers[1], model.layers[2], model.layers[-1]
    prompt = ops.convert_to_tensor([[3, 4, 5]], "int32")
    cache = stack.init_cache(batch_size=1, max_length=10)
    tokens = prompt
    hidden, cache = stack(positions(embedding(prompt)), cache=cache, cache_index=0)
    next_token = ops.cast(ops.argmax(dense(hidden[:, -1:]), -1), "int32")
    for step in range(3, 9):
        tokens = ops.concatenate([tokens, next_token], axis=1)
        hidden, cache = stack(positions(embedding(next_token), start_index=step), cache=cache, cache_index=step)
        next_token = ops.cast(ops.argmax(dense(hidden), -1), "int32")
    np.testing.assert_array_equal(tokens[0], np.arange(3, 12))
    full = model(tokens)
    np.testing.assert_array_equal(ops.argmax(full[:, -1], -1), next_token[:, 0])
