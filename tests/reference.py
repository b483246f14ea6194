"""NumPy reference implementations of the paper's equations, for tests."""

import numpy as np


def softmax(x, axis=-1):
    x = x - x.max(axis=axis, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis=axis, keepdims=True)


def layer_norm(x, gamma, beta, eps):
    mean = x.mean(-1, keepdims=True)
    var = x.var(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * gamma + beta


def multi_head_attention(query, value, weights, num_heads, mask=None):
    """Attention(Q, K, V) = softmax(QK^T / sqrt(d_k)) V over `num_heads` heads.

    weights: [Wq, bq, Wk, bk, Wv, bv, Wo, bo], kernels in Keras's layout
        ([D, N, H] and [N, H, D_out], biases [N, H]) or as 2-D matrices.
    mask: [B, T, S] bool, True where attention is allowed.
    Returns (output [B, T, D], scores [B, N, T, S]).
    """
    wq, bq, wk, bk, wv, bv, wo, bo = [np.asarray(w, np.float64) for w in weights]
    wq, wk, wv = (w.reshape(w.shape[0], -1) for w in (wq, wk, wv))
    bq, bk, bv = (b.reshape(-1) for b in (bq, bk, bv))
    wo = wo.reshape(-1, wo.shape[-1])
    batch, t, _ = query.shape
    s = value.shape[1]
    h = wq.shape[1] // num_heads
    q = (query @ wq + bq).reshape(batch, t, num_heads, h).transpose(0, 2, 1, 3)
    k = (value @ wk + bk).reshape(batch, s, num_heads, h).transpose(0, 2, 1, 3)
    v = (value @ wv + bv).reshape(batch, s, num_heads, h).transpose(0, 2, 1, 3)
    logits = q @ k.transpose(0, 1, 3, 2) / np.sqrt(h)
    if mask is not None:
        logits = np.where(mask[:, None], logits, -1e9)
    scores = softmax(logits)
    x = (scores @ v).transpose(0, 2, 1, 3).reshape(batch, t, num_heads * h)
    return x @ wo + bo, scores


def encoder_layer(x, weights, num_heads, mask=None, norm_first=False, eps=1e-6):
    """One encoder layer (no dropout). weights in `EncoderLayer.weights` order."""
    attn, (g1, b1), (w1, c1, w2, c2), (g2, b2) = weights[:8], weights[8:10], weights[10:14], weights[14:16]

    def attention(y):
        return multi_head_attention(y, y, attn, num_heads, mask)[0]

    def feed_forward(y):
        return np.maximum(y @ w1 + c1, 0) @ w2 + c2

    if norm_first:
        x = x + attention(layer_norm(x, g1, b1, eps))
        return x + feed_forward(layer_norm(x, g2, b2, eps))
    x = layer_norm(x + attention(x), g1, b1, eps)
    return layer_norm(x + feed_forward(x), g2, b2, eps)


def decoder_layer(x, memory, weights, num_heads, memory_mask=None, norm_first=False, eps=1e-6):
    """One decoder layer (no dropout). weights in `DecoderLayer.weights` order."""
    self_attn, (g1, b1) = weights[:8], weights[8:10]
    cross_attn, (g2, b2) = weights[10:18], weights[18:20]
    (w1, c1, w2, c2), (g3, b3) = weights[20:24], weights[24:26]
    batch, t = x.shape[:2]
    causal = np.broadcast_to(np.tril(np.ones((t, t), bool)), (batch, t, t))
    cross_mask = None
    if memory_mask is not None:
        cross_mask = np.broadcast_to(memory_mask[:, None, :], (batch, t, memory.shape[1]))

    blocks = [
        (lambda y: multi_head_attention(y, y, self_attn, num_heads, causal)[0], g1, b1),
        (lambda y: multi_head_attention(y, memory, cross_attn, num_heads, cross_mask)[0], g2, b2),
        (lambda y: np.maximum(y @ w1 + c1, 0) @ w2 + c2, g3, b3),
    ]
    for sublayer, gamma, beta in blocks:
        if norm_first:
            x = x + sublayer(layer_norm(x, gamma, beta, eps))
        else:
            x = layer_norm(x + sublayer(x), gamma, beta, eps)
    return x


# -- the variants since the paper ----------------------------------------------------------------


def rotary(x, positions, max_wavelength=10000.0, scaling_factor=1.0):
    """RoPE (Su et al. 2021) on x [B, T, N, H] at positions [T] or [B, T]: each
    pair (x_i, x_{i + H/2}) rotated by the angle pos / scaling_factor *
    max_wavelength^(-2i / H), as a 2x2 rotation matrix, pair by pair."""
    x = np.asarray(x, np.float64)
    b, t, n, h = x.shape
    positions = np.broadcast_to(np.asarray(positions, np.float64), (b, t)) / scaling_factor
    out = np.empty_like(x)
    for i in range(h // 2):
        theta = positions * max_wavelength ** (-2.0 * i / h)  # [B, T]
        cos, sin = np.cos(theta)[:, :, None], np.sin(theta)[:, :, None]
        a, c = x[..., i], x[..., i + h // 2]
        out[..., i] = cos * a - sin * c
        out[..., i + h // 2] = sin * a + cos * c
    return out


def grouped_query_attention(query, value, weights, num_heads, mask=None, positions=None, max_wavelength=10000.0):
    """Attention with K key/value heads shared by groups of num_heads / K query
    heads (query head n reads key/value head n // (num_heads / K)), with
    optional rotary embeddings at `positions` (queries and keys alike, so for
    self-attention). weights: [Wq, Wk, Wv, Wo] (no biases) in Keras's layout.
    mask: [B, T, S] bool. Returns (output [B, T, D], scores [B, N, T, S])."""
    wq, wk, wv, wo = [np.asarray(w, np.float64) for w in weights]
    kv, h = wk.shape[1], wk.shape[2]
    q = np.einsum("btd,dnh->btnh", query, wq)
    k = np.einsum("bsd,dnh->bsnh", value, wk)
    v = np.einsum("bsd,dnh->bsnh", value, wv)
    if positions is not None:
        q, k = rotary(q, positions, max_wavelength), rotary(k, positions, max_wavelength)
    groups = num_heads // kv
    k, v = np.repeat(k, groups, axis=2), np.repeat(v, groups, axis=2)
    logits = np.einsum("btnh,bsnh->bnts", q, k) / np.sqrt(h)
    if mask is not None:
        logits = np.where(mask[:, None], logits, -1e9)
    scores = softmax(logits)
    x = np.einsum("bnts,bsnh->btnh", scores, v)
    return np.einsum("btnh,nhd->btd", x, wo), scores


def rms_norm(x, scale, eps):
    """x / sqrt(mean(x^2) + eps) * scale (Zhang and Sennrich 2019)."""
    return x / np.sqrt(np.mean(np.square(x), -1, keepdims=True) + eps) * scale


def silu(x):
    return x / (1.0 + np.exp(-x))


def gelu(x):
    from math import erf

    return 0.5 * x * (1.0 + np.vectorize(erf)(x / np.sqrt(2.0)))


def gated_feed_forward(x, w_gate, w_linear, w_out, activation):
    """(activation(x W) * x V) W2 (Shazeer 2020), no biases."""
    return (activation(x @ w_gate) * (x @ w_linear)) @ w_out


def window_mask(t, s, window, causal=True):
    """[T, S] bool: key s visible to query t when t - s < window (and s <= t
    when causal, else also s - t < window)."""
    rows, cols = np.arange(t)[:, None], np.arange(s)[None, :]
    mask = rows - cols < window
    return mask & (cols <= rows) if causal else mask & (cols - rows < window)
