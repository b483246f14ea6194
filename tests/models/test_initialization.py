"""Every weight of a fresh model gets its own initial draw.

Keras 3 initializers made with `seed=None` fix one seed when they are
created and draw statelessly from it, so one instance used for two weights
of the same shape gives them the same values (keras
`src/initializers/random_initializers.py`, `RandomInitializer`). Keras's own
`MultiHeadAttention` clones its initializers for each weight
(`keras/src/layers/attention/multi_head_attention.py`,
`_get_common_kwargs_for_sublayer`), and so must these layers.
"""

import itertools

import keras
import numpy as np
import pytest

import keras_transformer as kt
from keras_transformer.layers.initializers import clone_initializer
from tests.backend import to_numpy


def _equal_pairs(weights):
    """Pairs of weights that hold the same values (the same shape once
    flattened: a [128, 512] kernel equal to a reshaped [512, 128] one counts)."""
    random = [w for w in weights if np.unique(to_numpy(w)).size > 1]  # not ones or zeros
    pairs = []
    for a, b in itertools.combinations(random, 2):
        x, y = to_numpy(a).ravel(), to_numpy(b).ravel()
        if x.size == y.size and np.array_equal(x, y):
            pairs.append((a.path, b.path))
    return pairs


@pytest.mark.parametrize("share", ["all", "none"])
def test_no_two_weights_of_a_fresh_transformer_are_equal(share):
    model = kt.Transformer.from_preset("tiny", 1000, 1000, share_embeddings=share)
    model.build()
    # A shared embedding is one variable, so nothing here is meant to be equal.
    kernels = [w for w in model.weights if tuple(w.shape) in ((128, 4, 32), (4, 32, 128))]
    assert len(kernels) == 48  # 4 encoder x 4 + 4 decoder x 8 attention projections
    assert _equal_pairs(model.weights) == []


def test_one_initializer_instance_for_every_layer():
    # A user's instance, passed to several layers and used for several weights.
    init = keras.initializers.GlorotUniform()
    layers = [
        kt.layers.MultiHeadAttention(2, 8, kernel_initializer=init),
        kt.layers.FeedForward(16, kernel_initializer=init),
        kt.layers.EncoderLayer(2, 16, kernel_initializer=init),
        kt.layers.DecoderLayer(2, 16, kernel_initializer=init),
        kt.layers.Encoder(2, 2, 16, kernel_initializer=init),
        kt.layers.Decoder(2, 2, 16, kernel_initializer=init),
    ]
    x = np.random.default_rng(0).normal(size=(2, 5, 16)).astype("float32")
    weights = []
    for layer in layers:
        if isinstance(layer, (kt.layers.DecoderLayer, kt.layers.Decoder)):
            layer(x, x)
        elif isinstance(layer, kt.layers.MultiHeadAttention):
            layer(x, x)
        else:
            layer(x)
        weights += layer.weights
    # FeedForward's [16, 16] kernels share fan_in + fan_out with the
    # attention kernels, so equal draws would show here too.
    assert _equal_pairs(weights) == []
    # The layers keep the user's initializer in their config.
    assert layers[0].get_config()["kernel_initializer"]["class_name"] == "GlorotUniform"


def test_embeddings_given_one_initializer_differ():
    init = keras.initializers.RandomNormal(stddev=0.1)
    a, b = kt.layers.TokenEmbedding(30, 8, embeddings_initializer=init), kt.layers.TokenEmbedding(30, 8, embeddings_initializer=init)
    a.build(), b.build()
    assert not np.array_equal(to_numpy(a.embeddings), to_numpy(b.embeddings))


def test_a_seeded_build_is_reproducible():
    def build(seed):
        keras.utils.set_random_seed(seed)
        model = kt.Transformer(50, 50, num_layers=2, d_model=16, num_heads=2, d_ff=32)
        model.build()
        return [to_numpy(w) for w in model.weights]

    first, again, other = build(7), build(7), build(8)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    assert sum(not np.array_equal(a, b) for a, b in zip(first, other)) > len(first) // 3


def test_clone_initializer():
    init = keras.initializers.GlorotUniform()
    clone = clone_initializer(init)
    assert type(clone) is keras.initializers.GlorotUniform and clone is not init
    assert not np.array_equal(clone((8, 8)), init((8, 8)))
    # An explicit integer seed is the user's choice, kept as Keras keeps it.
    seeded = keras.initializers.GlorotUniform(seed=3)
    np.testing.assert_array_equal(clone_initializer(seeded)((4, 4)), seeded((4, 4)))
    # A name or a config works as for `keras.initializers.get`.
    assert type(clone_initializer("zeros")) is keras.initializers.Zeros


def test_initializers_that_cannot_or_need_not_be_cloned_are_kept():
    def ones(shape, dtype=None):
        return np.ones(shape, dtype or "float32")

    assert clone_initializer(ones) is ones

    class Scaled(keras.initializers.Initializer):  # no get_config: from_config would give scale 1
        def __init__(self, scale=1.0):
            self.scale = scale

        def __call__(self, shape, dtype=None):
            return keras.ops.full(shape, self.scale, dtype=dtype)

    scaled = Scaled(2.0)
    assert clone_initializer(scaled) is scaled
    # A SeedGenerator-seeded initializer draws anew at each call: shared, the
    # four projections still differ.
    generator = keras.initializers.GlorotUniform(seed=keras.random.SeedGenerator(1))
    assert clone_initializer(generator) is generator
    layer = kt.layers.MultiHeadAttention(2, 8, kernel_initializer=generator)
    x = np.zeros((1, 3, 16), "float32")
    layer(x, x)
    assert _equal_pairs(layer.weights) == []
    # A function works as a layer's initializer too.
    kt.layers.FeedForward(8, kernel_initializer=ones)(x)
