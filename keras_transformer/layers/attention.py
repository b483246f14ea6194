"""Multi-head scaled dot-product attention with a key/value cache.

Shape legend: B batch, T query length, S key/value length, L cache length,
D model (feature) size, N heads, H size per head.
"""

import functools
import numbers

import keras
import numpy as np
from keras import ops

from keras_transformer.layers import masks
from keras_transformer.layers.initializers import clone_initializer
from keras_transformer.layers import validation
from keras_transformer.layers.dropout import Dropout
from keras_transformer.layers.rotary import RotaryEmbedding

POSITION_EMBEDDINGS = (None, "rotary")


def earlier_shape(variable):
    """The shape `variable` of a `MultiHeadAttention` had before the layer took
    Keras's layout: query/key/value kernels [D, N, H] were [D, N * H], their
    biases [N, H] were [N * H], the output kernel [N, H, D] was [N * H, D]; None
    for a variable whose shape did not change."""
    name = variable.path.rsplit("/", 1)[-1]
    shape = tuple(variable.shape)
    if name in ("query_kernel", "key_kernel", "value_kernel") and len(shape) == 3:
        return (shape[0], shape[1] * shape[2])
    if name in ("query_bias", "key_bias", "value_bias") and len(shape) == 2:
        return (shape[0] * shape[1],)
    if name == "output_kernel" and len(shape) == 3:
        return (shape[0] * shape[1], shape[2])
    return None


def _reshape_earlier(store, variables, earlier_of):
    """`store` as a dict, each value whose shape is `earlier_of(its variable)`
    reshaped to the variable's shape."""
    values = {key: store[key] for key in store.keys()}
    for i, variable in enumerate(variables):
        value = values.get(str(i))
        if value is not None and tuple(value.shape) == earlier_of(variable):
            values[str(i)] = np.reshape(np.asarray(value), variable.shape)
    return values


def accept_earlier_optimizer_state(optimizer, model):
    """Lets `optimizer` load state saved with the earlier attention layout.

    Each slot of a `MultiHeadAttention` weight (Keras names a slot after its
    weight's path) whose stored shape is that weight's earlier shape (see
    `earlier_shape`) is reshaped; nothing else is. `Transformer` calls this
    itself when it loads; call it before loading a compiled file or a
    training backup into a model of your own made of these layers. Without
    it, such a load fails ("N objects could not be loaded").
    """
    for target in (optimizer, getattr(optimizer, "inner_optimizer", None)):
        if target is None or getattr(target, "_kt_accepts_earlier", False):
            continue
        load = target.load_own_variables

        def load_own_variables(store, target=target, load=load):
            earlier = {}  # a weight's path, as slot names hold it -> (its shape, its earlier shape)
            for variable in model.variables:
                old = earlier_shape(variable)
                if old is not None:
                    earlier[variable.path.replace("/", "_")] = (tuple(variable.shape), old)

            def slot_earlier_shape(slot):
                owners = [path for path in earlier if slot.name.startswith(path + "_")]
                if not owners:
                    return None
                shape, old = earlier[max(owners, key=len)]
                return old if tuple(slot.shape) == shape else None

            load(_reshape_earlier(store, target.variables, slot_earlier_shape))

        target.load_own_variables = load_own_variables
        target._kt_accepts_earlier = True


def _as_matrix(initializer, matrix_shape):
    """`initializer` drawn as a `matrix_shape` matrix, then reshaped to the
    weight's shape (its fans are the matrix's)."""

    def initialize(shape, dtype=None):
        return ops.reshape(initializer(matrix_shape, dtype=dtype), shape)

    return initialize


def _per_head(attention_mask, num_heads):
    """An attention mask of Keras's shapes, [T, S], [B, T, S] (or [B, 1, S]) or
    [B, N, T, S], as a bool mask of rank 4 (size 1 where it is the same for
    every head, or every sentence)."""
    if attention_mask is None:
        return None
    rank = len(attention_mask.shape)
    if rank not in (2, 3, 4):
        raise ValueError(
            "`attention_mask` must have shape [T, S], [B, T, S] or [B, N, T, S]. "
            f"Received: attention_mask.shape={tuple(attention_mask.shape)}"
        )
    if rank == 4 and attention_mask.shape[1] not in (None, 1, num_heads):
        raise ValueError(
            f"A per-head `attention_mask` [B, N, T, S] must have 1 or num_heads={num_heads} heads. "
            f"Received: attention_mask.shape={tuple(attention_mask.shape)}"
        )
    mask = ops.cast(attention_mask, "bool")
    for _ in range(4 - rank):
        mask = ops.expand_dims(mask, 0 if rank == 2 else 1)
    return mask


def _merge(key_padding, attention_mask, causal):
    """The key-padding [B, S], attention [.., .., T, S] and causal [T, S] masks
    as one bool mask of rank 4, broadcastable to [B, N, T, S], or None."""
    mask = masks.merge_masks(key_padding, None, causal)
    if mask is not None:
        mask = ops.expand_dims(mask, 1)
    if attention_mask is not None:
        mask = attention_mask if mask is None else ops.logical_and(mask, attention_mask)
    return mask


def _platform() -> str:
    """Where the backend computes now: JAX's platform ("cpu", "gpu", "tpu"),
    PyTorch's Keras device type ("cuda", "cpu", "mps", ...: KERAS_TORCH_DEVICE
    or a `keras.device` scope, as Keras places tensors), else "cpu"
    (TensorFlow's is not asked)."""
    backend = keras.backend.backend()
    if backend == "jax":
        return _jax_platform()
    if backend == "torch":
        from keras.src.backend.torch.core import get_device

        return str(get_device()).split(":")[0]
    return "cpu"


@functools.cache
def _jax_platform() -> str:
    import jax

    return jax.default_backend()


@keras.saving.register_keras_serializable(package="keras_transformer")
class MultiHeadAttention(keras.layers.Layer):
    """Multi-head attention, "Attention Is All You Need" section 3.2.

    A drop-in replacement for `keras.layers.MultiHeadAttention` for the
    arguments both have: the same call signature and Keras's weight layout
    (query, key and value kernels [D, N, H] with [N, H] biases, output
    kernel [N, H, D_out]), so `set_weights` moves weights between the two
    either way; plus a key/value cache for incremental decoding. Written in
    `keras.ops`: it runs on every Keras backend.

    Differences from Keras's layer: inputs are [B, T, D] only (Keras also
    takes more axes between batch and features); a padded query row (Keras
    mask of `query`) still attends to the real keys, where Keras's layer
    masks the whole row; and kernels are initialized from the fans of the
    [D, N * H] matrix they form, as in the paper's implementations (Keras
    counts fans of the 3-D kernel, which makes the initial weights about
    six times smaller for the base model).

    Files saved before the kernels took Keras's layout (2-D kernels
    [D, N * H] and [N * H, D_out]) still load: `load_own_variables`
    reshapes them.

    When `query`, `value` and `key` are one tensor (self-attention) the three
    projections run as one matmul; when `key` is `value` the key and value
    projections run as one.

    Two paths compute the attention itself. The explicit one (matmuls and a
    float32 softmax) gives the scores and applies attention dropout; the
    fused one is `keras.ops.dot_product_attention`, which on a GPU may run
    as one flash-attention kernel (cuDNN, through JAX). The fused one runs
    where it can give the same output: no scores asked for, attention
    dropout inactive, no cache (decoding steps stay explicit), value
    heads of the key heads' size, and not float16 on JAX's CPU (XLA's CPU
    dot refuses float16 with float32 accumulation under `jax.jit`). With
    `fused_attention=None` it is used on the JAX and PyTorch backends when
    they compute on a GPU (not on TPUs: Keras's splash-attention path reads
    sentence 0's mask for the whole batch); on CPUs, and on TensorFlow (whose
    `dot_product_attention` is einsums), it was slower than the explicit
    path: 1.2x the time of the whole layer on TensorFlow's CPU kernels
    (docs/benchmarks.md). The two paths differ only on
    a query row that every key is masked from (a row of padding alone):
    the explicit path averages the values over all keys by their logits,
    the fused one uniformly. Such a row's output means nothing, but it
    enters the gradients if a loss counts it (a masked loss does not).

    Masks: the Keras masks of `value` and `key` mask padded keys; the Keras
    mask of `query` is passed on to the output but does not mask attention
    rows (a padded query still attends to real keys, so every row of the
    scores sums to 1 over its unmasked keys and is 0 on masked keys).

    Args:
        num_heads: int, number of attention heads N.
        key_dim: int, size H of each head for query and key.
        value_dim: int, size of each head for value. Defaults to `key_dim`.
        dropout: float in [0, 1), dropout on the attention probabilities.
        use_bias: bool, whether the projections have biases. Default True.
        output_shape: int, size of the output features. Defaults to the
            query's last dimension.
        kernel_initializer: initializer for the projection kernels.
        bias_initializer: initializer for the projection biases.
        fused_attention: None (default): the fused path on a GPU with the
            JAX or PyTorch backend, where it can be used; True:
            wherever it can be used (any backend and device; on a TPU,
            Keras's splash-attention path outside `jax.jit` reads one
            sentence's mask for the whole batch); False: never.
        num_key_value_heads: int dividing `num_heads`: grouped-query
            attention (Ainslie et al. 2023), K key and value heads, each
            shared by `num_heads / K` query heads (query head n reads
            key/value head n // (num_heads / K)); 1 is multi-query
            attention. The key and value kernels are [D, K, H] and the
            cache [B, 2, K, L, H]. Default `num_heads` (multi-head).
        position_embedding: None (default; positions come from the
            inputs) or "rotary": queries and keys are rotated by their
            positions (`RotaryEmbedding`) after their projections, so the
            scores depend on positions only through their distance.
        rotary_max_wavelength: float, `RotaryEmbedding`'s longest wavelength.
            Default 10000.
        rotary_scaling_factor: float >= 1, positions are divided by it.
            Default 1.
        sliding_window: int W or None (default): each query attends only to
            the keys at most W - 1 positions before it (with the causal
            mask: the last W keys, itself included; without it also at
            most W - 1 positions after it). With a window the
            self-attention cache from `init_cache` is a rolling one of
            min(W, max_length) slots: position p is written to slot p mod
            the cache length.

    Call arguments:
        query: [B, T, Dq] tensor.
        value: [B, S, Dv] tensor.
        key: optional [B, S, Dk] tensor; defaults to `value`.
        attention_mask: optional bool or 0/1 tensor, `True` where query t
            may attend to key s: [B, T, S] (or [B, 1, S]), [T, S] for every
            sentence, or [B, N, T, S] per head, as Keras's layer takes. In a cached
            self-attention step S is the cache length L, and the mask is
            how to hide cache slots that hold padding: the Keras masks of
            `value` and `key` cover only this step's tokens and are not
            applied there.
        return_attention_scores: bool, also return the scores [B, N, T, S].
        training: bool, whether dropout is active.
        use_causal_mask: bool, mask keys after each query position.
        cache: optional key/value cache [B, 2, K, L, H] (K key/value heads).
            With `cache_index`
            it is a self-attention cache (from `init_cache`): the keys and
            values of `value` are written at positions
            `[cache_index, cache_index + T)` and the queries attend causally
            to every cached position up to their own. Without `cache_index` it
            is a precomputed cross-attention cache (from `compute_cache`) and
            `value`/`key` are used only for their masks.
        cache_index: int or scalar int tensor, position of the first query.
            With a sliding window the keys attended to are the cache's slots
            followed by this step's tokens, and `attention_mask` is over
            those L + T keys.
        positions: optional int [T] or [B, T] tensor, the positions the
            rotary embedding gives the queries and the keys of this call:
            per-row positions for rows that start at different places.
            Default `cache_index + range(T)` (`range(T)` without a cache).
            Masks do not read it: a sliding window counts key indices (cache
            slots), so rows at different positions under a window must be
            left-padded. (With a rotary embedding the layer is a
            self-attention: `value` has the queries' positions.) Integers
            only: under mixed precision Keras casts floating call arguments
            to the compute dtype, which would round large positions.

    Returns:
        The attention output [B, T, D_out]; then the scores [B, N, T, S] if
        `return_attention_scores`; then the updated cache if `cache` is given.

    Example:
    >>> mha = MultiHeadAttention(num_heads=2, key_dim=4)
    >>> x = keras.random.normal([3, 5, 8])
    >>> tuple(mha(x, x, use_causal_mask=True).shape)
    (3, 5, 8)
    """

    def __init__(
        self,
        num_heads,
        key_dim,
        value_dim=None,
        dropout=0.0,
        use_bias=True,
        output_shape=None,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        fused_attention=None,
        num_key_value_heads=None,
        position_embedding=None,
        rotary_max_wavelength=10000,
        rotary_scaling_factor=1.0,
        sliding_window=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.supports_masking = True
        self.num_heads = validation.check_positive_int("num_heads", num_heads)
        self.num_key_value_heads = validation.check_positive_int(
            "num_key_value_heads", num_heads if num_key_value_heads is None else num_key_value_heads
        )
        if self.num_heads % self.num_key_value_heads:
            raise ValueError(
                "`num_key_value_heads` must divide `num_heads`. "
                f"Received: num_heads={num_heads}, num_key_value_heads={num_key_value_heads}"
            )
        validation.check_choice("position_embedding", position_embedding, POSITION_EMBEDDINGS)
        self.position_embedding = position_embedding
        rotary_max_wavelength, rotary_scaling_factor = validation.check_rotary_options(
            position_embedding == "rotary", rotary_max_wavelength, rotary_scaling_factor
        )
        self.sliding_window = (
            None if sliding_window is None else validation.check_positive_int("sliding_window", sliding_window)
        )
        self.key_dim = validation.check_positive_int("key_dim", key_dim)
        self.value_dim = validation.check_positive_int(
            "value_dim", key_dim if value_dim is None else value_dim
        )
        self.dropout = validation.check_rate("dropout", dropout)
        self.use_bias = bool(use_bias)
        self._output_dim = (
            None if output_shape is None else validation.check_positive_int("output_shape", output_shape)
        )
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        if fused_attention not in (None, True, False):
            raise ValueError(f"`fused_attention` must be None, True or False. Received: {fused_attention!r}")
        self.fused_attention = fused_attention
        self._dropout_layer = Dropout(self.dropout, dtype=self.dtype_policy)
        self._rotary = self._rotary_bthd = None
        if position_embedding == "rotary":
            if self.key_dim % 2:
                raise ValueError(
                    f"position_embedding='rotary' rotates pairs of features: `key_dim` must be even. "
                    f"Received: key_dim={key_dim}"
                )
            rotary = dict(max_wavelength=rotary_max_wavelength, scaling_factor=rotary_scaling_factor)
            self._rotary = RotaryEmbedding(**rotary, sequence_axis=2, dtype=self.dtype_policy)  # [B, N, T, H]
            self._rotary_bthd = RotaryEmbedding(**rotary, sequence_axis=1, dtype=self.dtype_policy)  # [B, T, N, H]

    def build(self, query_shape, value_shape, key_shape=None):
        validation.check_rank("query", query_shape, 3)
        validation.check_rank("value", value_shape, 3)
        if key_shape is not None:
            validation.check_rank("key", key_shape, 3)
        query_features = query_shape[-1]
        value_features = value_shape[-1]
        key_features = value_features if key_shape is None else key_shape[-1]
        output_dim = self._output_dim or query_features
        n, hk, hv = self.num_heads, self.key_dim, self.value_dim
        kv = self.num_key_value_heads

        def projection(name, kernel_shape, bias_shape):
            # Each weight its own initializer: one instance would give the
            # four projections the same values. Drawn as the [rows, cols]
            # matrix the kernel is, then given Keras's shape.
            rows = kernel_shape[0] if name != "output" else n * hv
            cols = int(np.prod(kernel_shape)) // rows
            kernel = self.add_weight(
                name=f"{name}_kernel", shape=kernel_shape,
                initializer=_as_matrix(clone_initializer(self.kernel_initializer), (rows, cols)),
            )
            bias = None
            if self.use_bias:
                bias = self.add_weight(
                    name=f"{name}_bias", shape=bias_shape, initializer=clone_initializer(self.bias_initializer)
                )
            return kernel, bias

        self.query_kernel, self.query_bias = projection("query", (query_features, n, hk), (n, hk))
        self.key_kernel, self.key_bias = projection("key", (key_features, kv, hk), (kv, hk))
        self.value_kernel, self.value_bias = projection("value", (value_features, kv, hv), (kv, hv))
        self.output_kernel, self.output_bias = projection("output", (n, hv, output_dim), (output_dim,))
        self._dropout_layer.build(None)
        self.built = True

    # -- projections ---------------------------------------------------------

    def _heads(self, x, kernels, biases, heads_first=True):
        """x [B, T, D] times kernels [D, N_i, H_i] -> list of per-head [B, N_i, T, H_i]
        ([B, T, N_i, H_i] without `heads_first`), one matmul for all of them. (As
        a 2-D matmul and a reshape: on TensorFlow's CPU kernels that is about
        30 % faster than the einsum.)"""
        dtype = self.compute_dtype
        kernels = [ops.cast(k, dtype) for k in kernels]
        heads = [k.shape[1] for k in kernels]
        widths = [k.shape[-1] for k in kernels]
        if len(set(heads)) == 1:
            # One head count: the heads' columns side by side, [D, N, sum H].
            kernel = kernels[0] if len(kernels) == 1 else ops.concatenate(kernels, axis=-1)
            bias = None
            if self.use_bias:
                bias = biases[0] if len(biases) == 1 else ops.concatenate(biases, axis=-1)  # [N, sum H]
            per_head, sizes = [(heads[0], sum(widths))], [sum(widths)]
        else:
            # Grouped-query: [D, N_i * H_i] matrices side by side.
            kernel = ops.concatenate([ops.reshape(k, (k.shape[0], -1)) for k in kernels], axis=-1)
            bias = None
            if self.use_bias:
                bias = ops.concatenate([ops.reshape(b, (-1,)) for b in biases], axis=-1)
            per_head, sizes = list(zip(heads, widths)), [n * h for n, h in zip(heads, widths)]
        y = ops.tensordot(ops.cast(x, dtype), ops.reshape(kernel, (kernel.shape[0], -1)), axes=[[-1], [0]])
        if bias is not None:
            y = y + ops.cast(ops.reshape(bias, (-1,)), dtype)
        shape = ops.shape(y)
        parts = [y] if len(sizes) == 1 else ops.split(y, [sum(sizes[: i + 1]) for i in range(len(sizes) - 1)], -1)
        parts = [ops.reshape(part, (shape[0], shape[1], n, h)) for part, (n, h) in zip(parts, per_head)]
        if heads_first:
            parts = [ops.transpose(part, (0, 2, 1, 3)) for part in parts]
        if len(kernels) == len(parts):
            return parts
        ends = [sum(widths[: i + 1]) for i in range(len(widths) - 1)]
        return ops.split(parts[0], ends, axis=-1)

    def _project(self, query, value, key, heads_first=True):
        """Project inputs to per-head q [B, N, T, H], k and v [B, N, S, H]
        (or [B, T, N, H] and [B, S, N, H] without `heads_first`)."""
        if key is value and query is value:
            return tuple(self._heads(
                query,
                [self.query_kernel, self.key_kernel, self.value_kernel],
                [self.query_bias, self.key_bias, self.value_bias],
                heads_first,
            ))
        (q,) = self._heads(query, [self.query_kernel], [self.query_bias], heads_first)
        return (q,) + self._project_key_value(value, key, heads_first)

    def _project_key_value(self, value, key, heads_first=True):
        """Per-head k [B, N, S, H] and v [B, N, S, H]; one matmul when key is value."""
        if key is value:
            k, v = self._heads(
                value, [self.key_kernel, self.value_kernel], [self.key_bias, self.value_bias], heads_first
            )
        else:
            (k,) = self._heads(key, [self.key_kernel], [self.key_bias], heads_first)
            (v,) = self._heads(value, [self.value_kernel], [self.value_bias], heads_first)
        return k, v

    def load_own_variables(self, store):
        """Loads Keras's layout, and files saved with the earlier 2-D kernels
        ([D, N * H], [N * H, D_out]) and [N * H] biases, reshaped. Any other
        shape is left to Keras, which refuses it."""
        variables = self._trainable_variables + self._non_trainable_variables
        super().load_own_variables(_reshape_earlier(store, variables, earlier_shape))

    # -- cache ---------------------------------------------------------------

    def _check_cacheable(self):
        if self.key_dim != self.value_dim:
            raise ValueError(
                "A key/value cache needs `key_dim == value_dim`. "
                f"Received: key_dim={self.key_dim}, value_dim={self.value_dim}"
            )

    def init_cache(self, batch_size, max_length):
        """Empty self-attention cache [B, 2, K, L, H] in the compute dtype (K
        key/value heads; L is `max_length`, or the sliding window if that is
        shorter: a rolling cache)."""
        self._check_cacheable()
        length = max_length
        if isinstance(max_length, int) or not hasattr(max_length, "shape"):
            length = validation.check_positive_int("max_length", max_length)
        if self.sliding_window is not None:
            length = min(length, self.sliding_window) if isinstance(length, int) else ops.minimum(
                length, self.sliding_window
            )
        return ops.zeros(
            (batch_size, 2, self.num_key_value_heads, length, self.key_dim), dtype=self.compute_dtype
        )

    def compute_cache(self, value, key=None):
        """Cross-attention cache [B, 2, K, S, H]: keys and values of `value`,
        computed once and reused at every decoding step."""
        self._check_cacheable()
        if self._rotary is not None or self.sliding_window is not None:
            raise ValueError(
                "A cross-attention cache cannot be used with position_embedding='rotary' or a "
                "`sliding_window`: a step attending to it does not know its queries' positions. "
                "Use them in self-attention only."
            )
        if not self.built:
            self.build(value.shape, value.shape, None if key is None else key.shape)
        return ops.stack(self._project_key_value(value, value if key is None else key), axis=1)

    @staticmethod
    def _update_cache(cache, update, index, rolling=False):
        """Write update [B, 2, K, T, H] into cache [B, 2, K, L, H] at index
        (at slots (index + t) mod L when `rolling`).

        A scatter rather than a strided-slice update: XLA compiles it with a
        loop-variable `index` inside `tf.while_loop`, and JAX under jit.
        """
        index = ops.cast(index, "int32")
        shape = ops.shape(update)
        b, kv, n, t = ops.meshgrid(
            ops.arange(shape[0], dtype="int32"), ops.arange(2, dtype="int32"),
            ops.arange(shape[2], dtype="int32"), ops.arange(shape[3], dtype="int32"), indexing="ij",
        )
        slots = t + index
        if rolling:
            slots = ops.mod(slots, ops.shape(cache)[3])
        positions = ops.stack([b, kv, n, slots], axis=-1)  # [B, 2, K, T, 4]: rows of H values
        return ops.scatter_update(cache, ops.reshape(positions, (-1, 4)),
                                  ops.reshape(ops.cast(update, cache.dtype), (-1, shape[4])))

    # -- attention -----------------------------------------------------------

    def call(
        self,
        query,
        value,
        key=None,
        query_mask=None,
        value_mask=None,
        key_mask=None,
        attention_mask=None,
        return_attention_scores=False,
        training=None,
        use_causal_mask=False,
        cache=None,
        cache_index=None,
        positions=None,
    ):
        if self._rotary is not None and cache is None and None not in (query.shape[1], value.shape[1]):
            if query.shape[1] != value.shape[1]:
                raise ValueError(
                    "position_embedding='rotary' is for self-attention: `value` takes the queries' "
                    f"positions. Received: query.shape={tuple(query.shape)}, value.shape={tuple(value.shape)}"
                )
        if key is None:
            key, key_mask = value, value_mask
        attention_mask = _per_head(attention_mask, self.num_heads)
        key_padding = value_mask
        if key_mask is not None:
            key_padding = key_mask if key_padding is None else ops.logical_and(key_padding, key_mask)

        causal = None
        if cache is not None and cache_index is not None:
            # Self-attention step: append this step's keys/values to the cache
            # and attend causally over the cache (unwritten slots lie after
            # every query, so the causal mask hides them too).
            q, k, v = self._project(query, value, key)
            q, k = self._rotate(q, k, positions, cache_index, self._rotary)
            slots = cache.shape[3]
            rolling = self.sliding_window is not None and (slots is None or slots >= self.sliding_window)
            _check_cache_index(cache_index, key.shape[1], None if rolling else slots)
            if not rolling:
                # (A cache shorter than the window holds every position: it is not rolled, so a step past
                # its end fails as it does without a window, instead of overwriting keys still in the window.)
                cache = self._update_cache(cache, ops.stack([k, v], axis=1), cache_index)
                k, v = cache[:, 0], cache[:, 1]
                causal = self._position_mask(ops.shape(q)[2], ops.shape(k)[2], True, offset=cache_index)
            else:
                k, v, causal, cache = self._roll(cache, k, v, cache_index)
                keys, given = k.shape[2], None if attention_mask is None else attention_mask.shape[-1]
                if None not in (keys, given) and given not in (1, keys):
                    raise ValueError(
                        "With a sliding-window (rolling) cache, a cached step's `attention_mask` covers the "
                        f"cache's {cache.shape[3]} slots and then the step's {keys - cache.shape[3]} tokens: "
                        f"its last axis must be {keys}. Received: attention_mask.shape={tuple(attention_mask.shape)}"
                    )
            key_padding = None
        elif cache is not None:
            # Cross-attention with precomputed keys/values.
            if self._rotary is not None or self.sliding_window is not None:
                self.compute_cache(None)  # (refuses, naming why)
            (q,) = self._heads(query, [self.query_kernel], [self.query_bias])
            k, v = cache[:, 0], cache[:, 1]
        elif self._fused(return_attention_scores, training):
            q, k, v = self._project(query, value, key, heads_first=False)
            q, k = self._rotate(q, k, positions, 0, self._rotary_bthd)
            causal = self._position_mask(ops.shape(q)[1], ops.shape(k)[1], use_causal_mask)
            groups = self.num_heads // self.num_key_value_heads
            if groups > 1:  # (one head size, one head count: the fused kernels' contract)
                k, v = ops.repeat(k, groups, axis=2), ops.repeat(v, groups, axis=2)
            mask = _merge(key_padding, attention_mask, causal)
            if mask is not None:
                # The whole [B, 1, T, S]: cuDNN's flash attention takes no mask broadcast along T.
                batch, t, s = ops.shape(q)[0], ops.shape(q)[1], ops.shape(k)[1]
                mask = ops.broadcast_to(mask, (batch, ops.shape(mask)[1], t, s))
            x = ops.dot_product_attention(q, k, v, mask=mask, scale=self.key_dim**-0.5)  # [B, T, N, H]
            return self._output(x)
        else:
            q, k, v = self._project(query, value, key)
            q, k = self._rotate(q, k, positions, 0, self._rotary)
            causal = self._position_mask(ops.shape(q)[2], ops.shape(k)[2], use_causal_mask)

        mask = _merge(key_padding, attention_mask, causal)
        output, scores = self._attend(q, k, v, mask, training)

        outputs = (output,)
        if return_attention_scores:
            outputs += (scores,)
        if cache is not None:
            outputs += (cache,)
        return outputs[0] if len(outputs) == 1 else outputs

    def _rotate(self, q, k, positions, start, rotary):
        """Queries and keys rotated by their positions (unchanged without a
        rotary embedding)."""
        if rotary is None:
            return q, k
        return rotary(q, positions=positions, start_index=start), rotary(k, positions=positions, start_index=start)

    def _position_mask(self, query_length, key_length, causal, offset=0):
        """The causal and sliding-window masks, [T, S] bool, or None; query t is at position offset + t."""
        if not causal and self.sliding_window is None:
            return None
        rows = ops.expand_dims(ops.arange(query_length, dtype="int32") + ops.cast(offset, "int32"), 1)
        cols = ops.expand_dims(ops.arange(key_length, dtype="int32"), 0)
        mask = ops.less_equal(cols, rows) if causal else None
        if self.sliding_window is not None:
            window = ops.less(rows - cols, self.sliding_window)
            if not causal:
                window = ops.logical_and(window, ops.less(cols - rows, self.sliding_window))
            mask = window if mask is None else ops.logical_and(mask, window)
        return mask

    def _roll(self, cache, k, v, index):
        """A step over a rolling (sliding-window) cache [B, 2, K, L, H].

        Slot j holds the latest position before `index` that is j mod L.
        The step's queries attend to the cached slots and then to its own
        T keys, those within the window and not after them (the [T, L + T]
        mask), so a step longer than the cache loses nothing; the last
        min(T, L) of its keys and values are then written.

        Returns:
            (keys [B, K, L + T, H], values, mask [T, L + T], the new cache).
        """
        length = ops.shape(cache)[3]
        index = ops.cast(index, "int32")
        steps = ops.shape(k)[2]
        last = index - 1
        slot_positions = last - ops.mod(last - ops.arange(length, dtype="int32"), length)  # < 0: never written
        query_positions = index + ops.arange(steps, dtype="int32")
        key_positions = ops.concatenate([slot_positions, query_positions], axis=0)
        written = ops.concatenate([slot_positions >= 0, ops.ones((steps,), dtype="bool")], axis=0)
        rows, cols = ops.expand_dims(query_positions, 1), ops.expand_dims(key_positions, 0)
        mask = ops.logical_and(
            ops.expand_dims(written, 0),
            ops.logical_and(ops.less_equal(cols, rows), ops.less(rows - cols, self.sliding_window)),
        )
        keys = ops.concatenate([cache[:, 0], ops.cast(k, cache.dtype)], axis=2)
        values = ops.concatenate([cache[:, 1], ops.cast(v, cache.dtype)], axis=2)
        update = ops.stack([k, v], axis=1)
        kept = ops.minimum(steps, length)
        update = update[:, :, :, -length:]  # (all of it when T <= L)
        cache = self._update_cache(cache, update, index + steps - kept, rolling=True)
        return keys, values, mask, cache

    def _attend(self, q, k, v, mask, training):
        """Scaled dot-product attention over per-head tensors; k and v may
        have fewer (key/value) heads, each shared by a group of query heads."""
        q = q * ops.cast(self.key_dim**-0.5, q.dtype)
        groups = self.num_heads // self.num_key_value_heads
        if groups > 1:
            # [B, K, G, T, H] queries against [B, K, 1, H, S] keys: no copy of the key heads.
            b, t, h = ops.shape(q)[0], ops.shape(q)[2], ops.shape(q)[3]
            grouped = ops.reshape(q, (b, self.num_key_value_heads, groups, t, h))
            logits = ops.matmul(grouped, ops.expand_dims(ops.swapaxes(k, -1, -2), 2))
            logits = ops.reshape(logits, (b, self.num_heads, t, ops.shape(k)[2]))
        else:
            logits = ops.matmul(q, ops.swapaxes(k, -1, -2))  # [B, N, T, S]
        # Softmax in float32: float16 logits overflow with the mask bias.
        logits = ops.cast(logits, "float32")
        if mask is not None:
            logits += masks.attention_bias(mask)
        if logits.shape[-1] == 1:  # one key (a first decoding step): softmax is exactly 1, and Keras warns
            scores = ops.ones_like(logits, dtype=v.dtype)
        else:
            scores = ops.cast(ops.softmax(logits, axis=-1), v.dtype)
        probs = self._dropout_layer(scores, training=training)
        if groups > 1:
            s = ops.shape(probs)[3]
            x = ops.matmul(ops.reshape(probs, (b, self.num_key_value_heads, groups, t, s)), ops.expand_dims(v, 2))
            x = ops.reshape(x, (b, self.num_heads, t, ops.shape(v)[3]))
        else:
            x = ops.matmul(probs, v)  # [B, N, T, H]
        return self._output(ops.transpose(x, (0, 2, 1, 3))), scores

    def _fused(self, return_attention_scores, training):
        """Whether this call takes the fused path (see the class docstring)."""
        if return_attention_scores or self.fused_attention is False or self.value_dim != self.key_dim:
            return False  # (JAX's dot_product_attention takes one head size for queries and values)
        if self.dropout > 0 and training:
            return False
        if self.compute_dtype == "float16" and keras.backend.backend() == "jax" and _platform() == "cpu":
            return False  # XLA's CPU dot has no float16 with float32 accumulation, which JAX's asks for
        # By default on GPUs only; not TPUs: Keras's splash-attention path there reads one mask for the batch.
        return self.fused_attention or _platform() in ("gpu", "cuda")

    def _output(self, x):
        """Per-head outputs [B, T, N, H] -> the output projection [B, T, D_out]."""
        shape = ops.shape(x)
        x = ops.reshape(x, (shape[0], shape[1], self.num_heads * self.value_dim))
        kernel = ops.reshape(ops.cast(self.output_kernel, x.dtype), (self.num_heads * self.value_dim, -1))
        output = ops.tensordot(x, kernel, axes=[[-1], [0]])
        if self.use_bias:
            output = output + ops.cast(self.output_bias, x.dtype)
        return output

    def compute_output_shape(self, query_shape, value_shape, key_shape=None):
        return tuple(query_shape[:-1]) + (self._output_dim or query_shape[-1],)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_heads": self.num_heads,
                "key_dim": self.key_dim,
                "value_dim": self.value_dim,
                "dropout": self.dropout,
                "use_bias": self.use_bias,
                "output_shape": self._output_dim,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
                "bias_initializer": keras.initializers.serialize(self.bias_initializer),
            }
        )
        # Each option only when set: a config without them loads in the versions before them.
        if self.fused_attention is not None:
            config["fused_attention"] = self.fused_attention
        if self.num_key_value_heads != self.num_heads:
            config["num_key_value_heads"] = self.num_key_value_heads
        if self._rotary is not None:
            config.update(
                position_embedding=self.position_embedding,
                rotary_max_wavelength=self._rotary.max_wavelength,
                rotary_scaling_factor=self._rotary.scaling_factor,
            )
        if self.sliding_window is not None:
            config["sliding_window"] = self.sliding_window
        return config


def _check_cache_index(cache_index, steps, slots):
    """Refuses a `cache_index` known before the step runs (a Python or NumPy
    int, an eager tensor) that is negative, or whose `steps` new keys run
    past a cache of `slots` (None: a rolling cache, no end). Neither is an
    error on every backend: TensorFlow's scatter fails deep inside, JAX's
    writes index -1 into the last slot and drops the slots past the end, and
    the causal mask then shows the queries the wrong keys. An index traced
    in a graph (a decoding loop's) cannot be checked here."""
    if isinstance(cache_index, bool):
        raise ValueError(f"`cache_index` must be an integer. Received: cache_index={cache_index!r}")
    if not isinstance(cache_index, numbers.Integral):
        try:  # (Keras's __call__ has made NumPy scalars tensors by now)
            value = np.asarray(ops.convert_to_numpy(cache_index))
        except Exception:  # traced (tf.function, jit): its value is not known yet
            return
        if value.shape != () or not np.issubdtype(value.dtype, np.integer):
            raise ValueError(
                "`cache_index` must be a scalar integer. "
                f"Received: cache_index with shape {value.shape} and dtype {value.dtype}"
            )
        cache_index = int(value)
    validation.check_int_at_least("cache_index", cache_index, 0)
    if slots is not None and steps is not None and cache_index + steps > slots:
        raise ValueError(
            f"The cached step's {steps} token(s) at `cache_index` {cache_index} run past the cache's "
            f"{slots} slots (init_cache's max_length). Received: cache_index={cache_index}"
        )
