"""Multi-head scaled dot-product attention with a key/value cache.

Shape legend: B batch, T query length, S key/value length, L cache length,
D model (feature) size, N heads, H size per head.
"""

import keras
import tensorflow as tf

from keras_transformer.layers import masks
from keras_transformer.layers.initializers import clone_initializer
from keras_transformer.layers import validation
from keras_transformer.layers.dropout import Dropout


@keras.saving.register_keras_serializable(package="keras_transformer")
class MultiHeadAttention(keras.layers.Layer):
    """Multi-head attention, "Attention Is All You Need" section 3.2.

    A drop-in replacement for `keras.layers.MultiHeadAttention` for the common
    arguments (same call signature, same weight layout up to a reshape), plus
    a key/value cache for incremental decoding.

    When `query`, `value` and `key` are one tensor (self-attention) the three
    projections run as one matmul; when `key` is `value` the key and value
    projections run as one.

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

    Call arguments:
        query: [B, T, Dq] tensor.
        value: [B, S, Dv] tensor.
        key: optional [B, S, Dk] tensor; defaults to `value`.
        attention_mask: optional [B, T, S] (or [B, 1, S]) bool or 0/1
            tensor, `True` where query t may attend to key s. In a cached
            self-attention step S is the cache length L, and the mask is
            how to hide cache slots that hold padding: the Keras masks of
            `value` and `key` cover only this step's tokens and are not
            applied there.
        return_attention_scores: bool, also return the scores [B, N, T, S].
        training: bool, whether dropout is active.
        use_causal_mask: bool, mask keys after each query position.
        cache: optional key/value cache [B, 2, N, L, H]. With `cache_index`
            it is a self-attention cache (from `init_cache`): the keys and
            values of `value` are written at positions
            `[cache_index, cache_index + T)` and the queries attend causally
            to every cached position up to their own. Without `cache_index` it
            is a precomputed cross-attention cache (from `compute_cache`) and
            `value`/`key` are used only for their masks.
        cache_index: int or scalar int tensor, position of the first query.

    Returns:
        The attention output [B, T, D_out]; then the scores [B, N, T, S] if
        `return_attention_scores`; then the updated cache if `cache` is given.

    Example:
    >>> mha = MultiHeadAttention(num_heads=2, key_dim=4)
    >>> x = tf.random.normal([3, 5, 8])
    >>> mha(x, x, use_causal_mask=True).shape
    TensorShape([3, 5, 8])
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
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.supports_masking = True
        self.num_heads = validation.check_positive_int("num_heads", num_heads)
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
        self._dropout_layer = Dropout(self.dropout, dtype=self.dtype_policy)

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

        def projection(name, rows, cols):
            # Each weight its own initializer: one instance would give the
            # four projections the same values.
            kernel = self.add_weight(
                name=f"{name}_kernel", shape=(rows, cols),
                initializer=clone_initializer(self.kernel_initializer),
            )
            bias = None
            if self.use_bias:
                bias = self.add_weight(
                    name=f"{name}_bias", shape=(cols,), initializer=clone_initializer(self.bias_initializer)
                )
            return kernel, bias

        self.query_kernel, self.query_bias = projection("query", query_features, n * hk)
        self.key_kernel, self.key_bias = projection("key", key_features, n * hk)
        self.value_kernel, self.value_bias = projection("value", value_features, n * hv)
        self.output_kernel, self.output_bias = projection("output", n * hv, output_dim)
        self._dropout_layer.build(None)
        self.built = True

    # -- projections ---------------------------------------------------------

    def _dense(self, x, kernels, biases):
        """x [B, T, D] times the concatenated kernels -> list of [B, T, E_i]."""
        dtype = self.compute_dtype
        kernels = [tf.cast(k, dtype) for k in kernels]
        widths = [k.shape[-1] for k in kernels]
        kernel = kernels[0] if len(kernels) == 1 else tf.concat(kernels, axis=-1)
        y = tf.tensordot(tf.cast(x, dtype), kernel, axes=[[-1], [0]])  # [B, T, sum E]
        if self.use_bias:
            bias = biases[0] if len(biases) == 1 else tf.concat(biases, axis=-1)
            y = y + tf.cast(bias, dtype)
        return [y] if len(kernels) == 1 else tf.split(y, widths, axis=-1)

    def _split_heads(self, x, head_size):
        """[B, T, N * H] -> [B, N, T, H]."""
        shape = tf.shape(x)
        x = tf.reshape(x, [shape[0], shape[1], self.num_heads, head_size])  # [B, T, N, H]
        return tf.transpose(x, [0, 2, 1, 3])

    def _project(self, query, value, key):
        """Project inputs to per-head q [B, N, T, H], k and v [B, N, S, H]."""
        if key is value and query is value:
            q, k, v = self._dense(
                query,
                [self.query_kernel, self.key_kernel, self.value_kernel],
                [self.query_bias, self.key_bias, self.value_bias],
            )
            return (
                self._split_heads(q, self.key_dim),
                self._split_heads(k, self.key_dim),
                self._split_heads(v, self.value_dim),
            )
        (q,) = self._dense(query, [self.query_kernel], [self.query_bias])
        return (self._split_heads(q, self.key_dim),) + self._project_key_value(value, key)

    def _project_key_value(self, value, key):
        """Per-head k [B, N, S, H] and v [B, N, S, H]; one matmul when key is value."""
        if key is value:
            k, v = self._dense(value, [self.key_kernel, self.value_kernel], [self.key_bias, self.value_bias])
        else:
            (k,) = self._dense(key, [self.key_kernel], [self.key_bias])
            (v,) = self._dense(value, [self.value_kernel], [self.value_bias])
        return self._split_heads(k, self.key_dim), self._split_heads(v, self.value_dim)

    # -- cache ---------------------------------------------------------------

    def _check_cacheable(self):
        if self.key_dim != self.value_dim:
            raise ValueError(
                "A key/value cache needs `key_dim == value_dim`. "
                f"Received: key_dim={self.key_dim}, value_dim={self.value_dim}"
            )

    def init_cache(self, batch_size, max_length):
        """Empty self-attention cache [B, 2, N, L, H] in the compute dtype."""
        self._check_cacheable()
        return tf.zeros(
            [batch_size, 2, self.num_heads, max_length, self.key_dim], dtype=self.compute_dtype
        )

    def compute_cache(self, value, key=None):
        """Cross-attention cache [B, 2, N, S, H]: keys and values of `value`,
        computed once and reused at every decoding step."""
        self._check_cacheable()
        if not self.built:
            self.build(value.shape, value.shape, None if key is None else key.shape)
        return tf.stack(self._project_key_value(value, value if key is None else key), axis=1)

    @staticmethod
    def _update_cache(cache, update, index):
        """Write update [B, 2, N, T, H] into cache [B, 2, N, L, H] at index.

        A scatter rather than a strided-slice update: XLA compiles it with a
        loop-variable `index` inside `tf.while_loop`.
        """
        index = tf.cast(index, tf.int32)
        shape = tf.shape(update)
        b, kv, n, t = tf.meshgrid(
            tf.range(shape[0]), tf.range(2), tf.range(shape[2]), tf.range(shape[3]), indexing="ij"
        )
        positions = tf.stack([b, kv, n, t + index], axis=-1)  # [B, 2, N, T, 4]
        return tf.tensor_scatter_nd_update(cache, positions, tf.cast(update, cache.dtype))

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
    ):
        if key is None:
            key, key_mask = value, value_mask
        key_padding = value_mask
        if key_mask is not None:
            key_padding = key_mask if key_padding is None else tf.logical_and(key_padding, key_mask)

        causal = None
        if cache is not None and cache_index is not None:
            # Self-attention step: append this step's keys/values to the cache
            # and attend causally over the cache (unwritten slots lie after
            # every query, so the causal mask hides them too).
            q, k, v = self._project(query, value, key)
            cache = self._update_cache(cache, tf.stack([k, v], axis=1), cache_index)
            k, v = cache[:, 0], cache[:, 1]
            causal = masks.causal_mask(tf.shape(q)[2], tf.shape(k)[2], offset=cache_index)
            key_padding = None
        elif cache is not None:
            # Cross-attention with precomputed keys/values.
            (q,) = self._dense(query, [self.query_kernel], [self.query_bias])
            q = self._split_heads(q, self.key_dim)
            k, v = cache[:, 0], cache[:, 1]
        else:
            q, k, v = self._project(query, value, key)
            if use_causal_mask:
                causal = masks.causal_mask(tf.shape(q)[2], tf.shape(k)[2])

        mask = masks.merge_masks(key_padding, attention_mask, causal)
        output, scores = self._attend(q, k, v, mask, training)

        outputs = (output,)
        if return_attention_scores:
            outputs += (scores,)
        if cache is not None:
            outputs += (cache,)
        return outputs[0] if len(outputs) == 1 else outputs

    def _attend(self, q, k, v, mask, training):
        """Scaled dot-product attention over per-head tensors."""
        q = q * tf.cast(self.key_dim**-0.5, q.dtype)
        logits = tf.matmul(q, k, transpose_b=True)  # [B, N, T, S]
        # Softmax in float32: float16 logits overflow with the mask bias.
        logits = tf.cast(logits, tf.float32)
        if mask is not None:
            logits += masks.attention_bias(mask)[:, None, :, :]
        scores = tf.cast(tf.nn.softmax(logits, axis=-1), v.dtype)
        probs = self._dropout_layer(scores, training=training)
        x = tf.matmul(probs, v)  # [B, N, T, H]
        x = tf.transpose(x, [0, 2, 1, 3])  # [B, T, N, H]
        shape = tf.shape(x)
        x = tf.reshape(x, [shape[0], shape[1], self.num_heads * self.value_dim])
        (output,) = self._dense(x, [self.output_kernel], [self.output_bias])
        return output, scores

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
        return config
