"""The variants against keras-hub's own implementations, with the same weights:
its `RotaryEmbedding`, its Llama decoder block (RMSNorm, grouped-query rotary
attention without biases, SwiGLU) and its Mistral decoder block (the same with a
sliding window). keras-hub keeps them inside its models; here they are options
of `EncoderLayer` (keras_hub/src/models/llama/llama_decoder.py,
keras_hub/src/models/mistral/mistral_transformer_decoder.py)."""

import numpy as np
import pytest

import keras_hub  # noqa: F401 - a dev dependency: a missing keras-hub fails here rather than skipping
from keras_hub.src.models.llama.llama_decoder import LlamaTransformerDecoder
from keras_hub.src.models.mistral.mistral_transformer_decoder import MistralTransformerDecoder

from keras_transformer.layers import EncoderLayer
from keras_transformer.layers import RotaryEmbedding
from tests.backend import to_numpy

B, T, D, N, K, FF = 2, 9, 32, 4, 2, 48


def test_rotary_embedding_equals_keras_hubs():
    x = np.random.default_rng(0).normal(size=(B, T, N, 8)).astype("float32")
    ours = RotaryEmbedding(max_wavelength=1000, scaling_factor=2.0)
    theirs = keras_hub.layers.RotaryEmbedding(max_wavelength=1000, scaling_factor=2.0)
    np.testing.assert_allclose(to_numpy(ours(x, start_index=3)), to_numpy(theirs(x, start_index=3)), atol=1e-5)


def _copy(hub_block, block):
    """keras-hub's block weights into ours (the attention kernels have Keras's [D, N, H] layout in both)."""
    hub = {w.path.split("/", 1)[1]: to_numpy(w) for w in hub_block.weights}

    def pick(*parts):
        (name,) = [n for n in hub if all(p in n for p in parts)]
        return hub[name]

    h = D // N
    attention = block.self_attention
    attention.query_kernel.assign(pick("query", "kernel").reshape(D, N, h))
    attention.key_kernel.assign(pick("key", "kernel").reshape(D, K, h))
    attention.value_kernel.assign(pick("value", "kernel").reshape(D, K, h))
    attention.output_kernel.assign(pick("attention_output", "kernel").reshape(N, h, D))
    gate, up = pick("feedforward_gate_dense", "kernel"), pick("feedforward_intermediate_dense", "kernel")
    block.feed_forward.inner.kernel.assign(np.concatenate([gate, up], axis=1))
    block.feed_forward.outer.kernel.assign(pick("feedforward_output_dense", "kernel"))
    block.self_attention_norm.scale.assign(pick("self_attention_layernorm", "scale"))
    block.feed_forward_norm.scale.assign(pick("feedforward_layernorm", "scale"))


@pytest.mark.parametrize("window", [None, 4])
def test_a_llama_or_mistral_block_equals_keras_hubs(window):
    x = np.random.default_rng(1).normal(size=(B, T, D)).astype("float32")
    padding = np.ones((B, T), bool)
    padding[1, 6:] = False
    if window is None:
        hub_block = LlamaTransformerDecoder(intermediate_dim=FF, num_query_heads=N, num_key_value_heads=K,
                                            layer_norm_epsilon=1e-5)
    else:
        hub_block = MistralTransformerDecoder(intermediate_dim=FF, num_query_heads=N, num_key_value_heads=K,
                                              layer_norm_epsilon=1e-5, sliding_window=window)
    expected = to_numpy(hub_block(x, decoder_padding_mask=padding))
    block = EncoderLayer(
        N, FF, dropout=0.0, norm_first=True, norm="rms", feed_forward="swiglu", use_bias=False,
        num_key_value_heads=K, position_embedding="rotary", sliding_window=window, layer_norm_epsilon=1e-5,
    )
    block(x)
    assert block.count_params() == hub_block.count_params()  # (their gate and up kernels are our one inner kernel)
    _copy(hub_block, block)
    ours = to_numpy(block(x, mask=padding, use_causal_mask=True))
    np.testing.assert_allclose(ours[padding], expected[padding], atol=1e-5)  # (padded rows' outputs are moot)
