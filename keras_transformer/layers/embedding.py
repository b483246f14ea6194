"""Token embedding scaled by sqrt(d_model), reusable as the output projection."""

import keras
from keras import ops

from keras_transformer.layers import validation
from keras_transformer.layers.initializers import clone_initializer


@keras.saving.register_keras_serializable(package="keras_transformer")
class TokenEmbedding(keras.layers.Layer):
    """Token embedding, "Attention Is All You Need" section 3.4.

    Looks up ids and multiplies by sqrt(d_model); called with `reverse=True`
    it multiplies vectors by the transposed matrix to give logits, so one
    matrix can serve as source embedding, target embedding and pre-softmax
    projection.

    Args:
        vocab_size: int, number of token ids.
        d_model: int, size of each embedding vector.
        scale: bool, multiply looked-up vectors by sqrt(d_model). Default True.
        mask_zero: bool, id 0 is padding and produces a Keras mask. Default True.
        embeddings_initializer: initializer; default normal with stddev
            d_model ** -0.5, so scaled embeddings have unit variance.

    Call arguments:
        inputs: [B, T] int ids, or [B, T, d_model] vectors with `reverse=True`.
        reverse: bool, project vectors to logits instead of looking up ids.

    Returns:
        [B, T, d_model] vectors, or [B, T, vocab_size] logits with `reverse`.

    Example:
    >>> embedding = TokenEmbedding(vocab_size=10, d_model=4)
    >>> tuple(embedding(ops.convert_to_tensor([[3, 5, 0]])).shape)
    (1, 3, 4)
    """

    def __init__(
        self, vocab_size, d_model, scale=True, mask_zero=True, embeddings_initializer=None, **kwargs
    ):
        super().__init__(**kwargs)
        self.vocab_size = validation.check_positive_int("vocab_size", vocab_size)
        self.d_model = validation.check_positive_int("d_model", d_model)
        self.scale = bool(scale)
        self.mask_zero = bool(mask_zero)
        self.embeddings_initializer = keras.initializers.get(
            embeddings_initializer or keras.initializers.RandomNormal(stddev=d_model**-0.5)
        )

    def build(self, inputs_shape=None):
        self.embeddings = self.add_weight(
            name="embeddings",
            shape=(self.vocab_size, self.d_model),
            initializer=clone_initializer(self.embeddings_initializer),
        )
        self.built = True

    def call(self, inputs, reverse=False):
        if reverse:
            kernel = ops.cast(self.embeddings, self.compute_dtype)
            return ops.tensordot(inputs, kernel, axes=[[-1], [1]])  # [B, T, V]
        outputs = ops.take(self.embeddings, ops.cast(inputs, "int32"), axis=0)  # [B, T, D]
        outputs = ops.cast(outputs, self.compute_dtype)
        if self.scale:
            outputs = outputs * ops.cast(self.d_model**0.5, self.compute_dtype)
        return outputs

    def compute_mask(self, inputs, mask=None):
        if not self.mask_zero or "float" in keras.backend.standardize_dtype(inputs.dtype):
            return None
        return ops.not_equal(inputs, 0)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "vocab_size": self.vocab_size,
                "d_model": self.d_model,
                "scale": self.scale,
                "mask_zero": self.mask_zero,
                "embeddings_initializer": keras.initializers.serialize(self.embeddings_initializer),
            }
        )
        return config
