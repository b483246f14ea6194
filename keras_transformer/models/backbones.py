"""Encoder-only (BERT-style) and decoder-only (Llama-style) models built from
the library's blocks, and their named sizes."""

import keras
from keras import ops

from keras_transformer.layers import masks
from keras_transformer.layers import validation
from keras_transformer.layers.block import check_model_sizes
from keras_transformer.layers.block import model_config_options
from keras_transformer.layers.dropout import Dropout
from keras_transformer.layers.embedding import TokenEmbedding
from keras_transformer.layers.normalization import RMSNormalization
from keras_transformer.layers.positional_encoding import PositionalEncoding
from keras_transformer.layers.stacks import Encoder

POSITION_EMBEDDINGS = ("learned", "sinusoidal", "rotary")

# Sizes only (no weights). BERT: Devlin et al. 2019 and Turc et al. 2019 (the small ones).
ENCODER_PRESETS = {
    "bert_tiny": dict(num_layers=2, d_model=128, num_heads=2, d_ff=512),
    "bert_small": dict(num_layers=4, d_model=512, num_heads=8, d_ff=2048),
    "bert_base": dict(num_layers=12, d_model=768, num_heads=12, d_ff=3072),
    "bert_large": dict(num_layers=24, d_model=1024, num_heads=16, d_ff=4096),
}
# Llama 2 (Touvron et al. 2023), Llama 3 (Grattafiori et al. 2024) and Mistral 7B (Jiang et al. 2023) sizes.
CAUSAL_LM_PRESETS = {
    "llama_tiny": dict(num_layers=4, d_model=256, num_heads=8, num_key_value_heads=2, d_ff=688, max_length=1024),
    "llama2_7b": dict(
        num_layers=32, d_model=4096, num_heads=32, d_ff=11008, max_length=4096, layer_norm_epsilon=1e-5,
        tie_embeddings=False,
    ),
    "llama3_8b": dict(
        num_layers=32, d_model=4096, num_heads=32, num_key_value_heads=8, d_ff=14336, max_length=8192,
        rotary_max_wavelength=500000.0, layer_norm_epsilon=1e-5, tie_embeddings=False,
    ),
    "mistral_7b": dict(
        num_layers=32, d_model=4096, num_heads=32, num_key_value_heads=8, d_ff=14336, max_length=32768,
        sliding_window=4096, layer_norm_epsilon=1e-5, tie_embeddings=False,
    ),
}


class _Backbone(keras.Model):
    """Token embedding, positions and a stack of `EncoderLayer`s (an `Encoder`)."""

    presets = {}
    causal = False

    def __init__(
        self,
        vocab_size,
        num_layers,
        d_model,
        num_heads,
        d_ff,
        dropout,
        max_length,
        position_embedding,
        norm_first,
        layer_norm_epsilon,
        block_options,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.vocab_size = validation.check_positive_int("vocab_size", vocab_size)
        for name, value in check_model_sizes(num_layers, d_model, num_heads, d_ff, dropout, max_length).items():
            setattr(self, name, value)
        validation.check_choice("position_embedding", position_embedding, POSITION_EMBEDDINGS)
        self.position_embedding = position_embedding
        self.norm_first = bool(norm_first)
        self.layer_norm_epsilon = float(layer_norm_epsilon)
        policy = self.dtype_policy
        # Neither BERT nor Llama scales its embeddings by sqrt(d_model) (the paper's Transformer does);
        # both draw them, as their position embeddings, with standard deviation 0.02.
        self.token_embedding = TokenEmbedding(
            vocab_size, d_model, scale=False, embeddings_initializer=keras.initializers.TruncatedNormal(stddev=0.02),
            dtype=policy, name="token_embedding",
        )
        self.position_layer = None
        if position_embedding == "learned":
            self.position_layer = keras.layers.Embedding(
                max_length, d_model, embeddings_initializer=keras.initializers.TruncatedNormal(stddev=0.02),
                dtype=policy, name="position_embedding",
            )
        elif position_embedding == "sinusoidal":
            self.position_layer = PositionalEncoding(max_length, dtype=policy, name="positional_encoding")
        # Post-norm blocks (BERT) normalize the embeddings first; pre-norm ones end with the stack's own norm.
        self.embedding_norm = None
        if not self.norm_first:
            norm = RMSNormalization if block_options.get("norm") == "rms" else keras.layers.LayerNormalization
            self.embedding_norm = norm(epsilon=self.layer_norm_epsilon, dtype=policy, name="embedding_norm")
        self.embedding_dropout = Dropout(dropout, dtype=policy)
        self.encoder = Encoder(
            num_layers, num_heads, d_ff, dropout=dropout, norm_first=norm_first,
            layer_norm_epsilon=layer_norm_epsilon,
            position_embedding="rotary" if position_embedding == "rotary" else None,
            dtype=policy, name="encoder", **block_options,
        )
        self.block_options = {key: self.encoder.options[key] for key in block_options}  # (as the stack checked them)

    @classmethod
    def from_preset(cls, preset, vocab_size, **overrides):
        """A model of a named size (see `presets`); `overrides` replace any of its arguments."""
        validation.check_choice("preset", preset, cls.presets)
        return cls(vocab_size, **{**cls.presets[preset], **overrides})

    def build(self, input_shape=None):
        vectors = (None, None, self.d_model)
        self.token_embedding.build()
        if self.position_layer is not None:
            self.position_layer.build((None, None) if self.position_embedding == "learned" else vectors)
        if self.embedding_norm is not None:
            self.embedding_norm.build(vectors)
        self.encoder.build(vectors)
        self.built = True

    def _ensure_built(self):
        if not self.built:
            self.build()

    @staticmethod
    def _check_token_ids(token_ids):
        validation.check_rank("token_ids", getattr(token_ids, "shape", None), 2)

    def get_build_config(self):
        # The weights do not depend on input shapes: a model saved before its first call is built here,
        # before Keras writes its weights (else the file holds none and loads as a new random model).
        self._ensure_built()
        return super().get_build_config()

    def _embed(self, token_ids, positions, training, start_index=0):
        """Token ids [B, T] -> embedded [B, T, D]; `positions` [B, T] int, or None:
        `start_index`, `start_index` + 1, ... (rotary embeddings add nothing here)."""
        x = self.token_embedding(token_ids)
        if self.position_embedding == "learned":
            if positions is None:
                positions = ops.arange(ops.shape(token_ids)[1], dtype="int32")[None, :] + ops.cast(start_index, "int32")
            x = x + ops.cast(self.position_layer(positions), x.dtype)
        elif self.position_embedding == "sinusoidal":
            x = self.position_layer(x, start_index=start_index if positions is None else positions[:, 0])
        if self.embedding_norm is not None:
            x = self.embedding_norm(x)
        return self.embedding_dropout(x, training=training)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "vocab_size": self.vocab_size,
                "num_layers": self.num_layers,
                "d_model": self.d_model,
                "num_heads": self.num_heads,
                "d_ff": self.d_ff,
                "dropout": self.dropout,
                "max_length": self.max_length,
                "position_embedding": self.position_embedding,
                "norm_first": self.norm_first,
                "layer_norm_epsilon": self.layer_norm_epsilon,
            }
        )
        config.update(model_config_options(self, self.block_options))
        return config


@keras.saving.register_keras_serializable(package="keras_transformer")
class EncoderBackbone(_Backbone):
    """An encoder-only Transformer in the BERT line: token ids in, one vector
    per token out, for classifiers and taggers to build on.

    Defaults are BERT's choices: learned position embeddings, a LayerNorm
    on the embeddings, post-norm blocks with a GELU feed-forward network.
    Any block option of `EncoderLayer` can replace them (pre-norm, RMSNorm,
    SwiGLU, rotary embeddings, ...). Sizes: `EncoderBackbone.from_preset(
    "bert_base", vocab_size=...)` (`ENCODER_PRESETS`; sizes only, no
    weights).

    Args:
        vocab_size: int; token id 0 is padding.
        num_layers, d_model, num_heads, d_ff: sizes. Defaults: BERT-base's.
        dropout: float in [0, 1). Default 0.1.
        max_length: int, the longest sequence. Default 512.
        position_embedding: "learned" (default), "sinusoidal" or "rotary".
        norm_first: bool, pre-norm blocks (then a final norm, and none on
            the embeddings). Default False.
        layer_norm_epsilon: float. Default 1e-12 (BERT's).
        norm, feed_forward, use_bias, num_key_value_heads,
        rotary_max_wavelength, rotary_scaling_factor, sliding_window: as
            for `EncoderLayer`. Defaults: "layer", "gelu", True,
            `num_heads`, 10000, 1, None.

    Call arguments:
        token_ids: int [B, T]; 0 is padding (its Keras mask is passed on).
        training: bool.

    Returns:
        [B, T, d_model]; each real token's vector does not depend on the
        padding after it.

    Example:
    >>> backbone = EncoderBackbone.from_preset("bert_tiny", vocab_size=100)
    >>> tuple(backbone(ops.convert_to_tensor([[5, 6, 7, 0]])).shape)
    (1, 4, 128)
    """

    presets = ENCODER_PRESETS

    def __init__(
        self,
        vocab_size,
        num_layers=12,
        d_model=768,
        num_heads=12,
        d_ff=3072,
        dropout=0.1,
        max_length=512,
        position_embedding="learned",
        norm_first=False,
        layer_norm_epsilon=1e-12,
        norm="layer",
        feed_forward="gelu",
        use_bias=True,
        num_key_value_heads=None,
        rotary_max_wavelength=10000.0,
        rotary_scaling_factor=1.0,
        sliding_window=None,
        **kwargs,
    ):
        options = dict(
            norm=norm, feed_forward=feed_forward, use_bias=use_bias, num_key_value_heads=num_key_value_heads,
            rotary_max_wavelength=rotary_max_wavelength, rotary_scaling_factor=rotary_scaling_factor,
            sliding_window=sliding_window,
        )
        super().__init__(
            vocab_size, num_layers, d_model, num_heads, d_ff, dropout, max_length, position_embedding,
            norm_first, layer_norm_epsilon, options, **kwargs,
        )

    def call(self, token_ids, training=None):
        self._check_token_ids(token_ids)
        self._ensure_built()
        mask = masks.padding_mask(token_ids)
        x = self._embed(token_ids, None, training)
        return self.encoder(x, mask=mask, training=training)

    def compute_mask(self, token_ids, mask=None):
        return masks.padding_mask(token_ids)


@keras.saving.register_keras_serializable(package="keras_transformer")
class CausalLM(_Backbone):
    """A decoder-only Transformer language model in the GPT and Llama line:
    token ids in, next-token logits out, with a key/value cache for
    generation.

    Defaults are Llama's choices: rotary embeddings, pre-norm RMSNorm
    blocks, SwiGLU feed-forward networks, no biases, no dropout; grouped-query
    attention with `num_key_value_heads` and Mistral's sliding window with
    `sliding_window` (a rolling cache). Sizes: `CausalLM.from_preset(
    "llama3_8b", vocab_size=...)` (`CAUSAL_LM_PRESETS`; sizes only, no
    weights).

    Args:
        vocab_size: int; token id 0 is padding.
        num_layers, d_model, num_heads, d_ff: sizes.
        num_key_value_heads: int dividing num_heads. Default num_heads.
        dropout: float in [0, 1). Default 0.
        max_length: int, the longest sequence. Default 2048.
        position_embedding: "rotary" (default), "learned" or "sinusoidal".
        norm_first: bool. Default True.
        layer_norm_epsilon: float. Default 1e-6.
        norm, feed_forward, use_bias, rotary_max_wavelength,
        rotary_scaling_factor, sliding_window: as for `EncoderLayer`.
            Defaults: "rms", "swiglu", False, 10000, 1, None.
        tie_embeddings: bool, the output projection is the transposed token
            embedding. Default True (the Llama and Mistral presets: False,
            as theirs is separate).

    Call arguments:
        token_ids: int [B, T]; 0 is padding.
        training: bool.

    Returns:
        Next-token logits [B, T, vocab_size], float32.

    Example:
    >>> lm = CausalLM.from_preset("llama_tiny", vocab_size=100)
    >>> ids = ops.convert_to_tensor([[5, 6, 7]])
    >>> cache = lm.init_cache(1, 8)
    >>> logits, cache = lm.call_with_cache(ids, cache, 0)
    >>> tuple(logits.shape), tuple(cache[0].shape)
    ((1, 3, 100), (1, 2, 2, 8, 32))
    """

    presets = CAUSAL_LM_PRESETS

    def __init__(
        self,
        vocab_size,
        num_layers,
        d_model,
        num_heads,
        d_ff,
        num_key_value_heads=None,
        dropout=0.0,
        max_length=2048,
        position_embedding="rotary",
        norm_first=True,
        layer_norm_epsilon=1e-6,
        norm="rms",
        feed_forward="swiglu",
        use_bias=False,
        rotary_max_wavelength=10000.0,
        rotary_scaling_factor=1.0,
        sliding_window=None,
        tie_embeddings=True,
        **kwargs,
    ):
        options = dict(
            norm=norm, feed_forward=feed_forward, use_bias=use_bias, num_key_value_heads=num_key_value_heads,
            rotary_max_wavelength=rotary_max_wavelength, rotary_scaling_factor=rotary_scaling_factor,
            sliding_window=sliding_window,
        )
        super().__init__(
            vocab_size, num_layers, d_model, num_heads, d_ff, dropout, max_length, position_embedding,
            norm_first, layer_norm_epsilon, options, **kwargs,
        )
        self.tie_embeddings = bool(tie_embeddings)
        self.output_projection = None
        if not self.tie_embeddings:
            self.output_projection = keras.layers.Dense(
                vocab_size, use_bias=False, dtype=self.dtype_policy, name="output_projection"
            )

    def build(self, input_shape=None):
        super().build(input_shape)
        if self.output_projection is not None:
            self.output_projection.build((None, None, self.d_model))

    def _logits(self, x):
        if self.output_projection is None:
            return ops.cast(self.token_embedding(x, reverse=True), "float32")
        return ops.cast(self.output_projection(x), "float32")

    def call(self, token_ids, training=None):
        self._check_token_ids(token_ids)
        self._ensure_built()
        x = self._embed(token_ids, None, training)
        x = self.encoder(x, mask=masks.padding_mask(token_ids), use_causal_mask=True, training=training)
        return self._logits(x)

    def init_cache(self, batch_size, max_length):
        """Empty per-layer caches [B, 2, K, L, H] (L: `max_length`, or the
        sliding window when it is shorter)."""
        self._ensure_built()
        return self.encoder.init_cache(batch_size, max_length)

    def call_with_cache(self, token_ids, cache, cache_index, positions=None, attention_mask=None, training=None):
        """The tokens at positions `[cache_index, cache_index + T)` -> (their
        logits [B, T, V], the updated caches).

        Args:
            token_ids: int [B, T].
            cache: from `init_cache` or the previous call.
            cache_index: int or scalar int tensor, the cache slot of the first
                token.
            positions: optional int [B, T], each token's position, when rows
                are not at `cache_index` (prompts of unequal length,
                right-padded). Refused under a sliding window, which counts
                cache slots: there, left-pad rows of unequal length (each
                row's positions are then its slots, less a constant the
                rotary embedding does not see) and mask their padding.
            attention_mask: optional bool [B, 1, L] over the cache's slots
                (with a sliding window: its L slots, then the T new tokens),
                False on slots that hold padding.
        """
        self._check_token_ids(token_ids)
        self._ensure_built()
        if positions is not None and self.block_options.get("sliding_window") is not None:
            raise ValueError(
                "`positions` cannot be given under a sliding window: the window counts cache slots, and a "
                "right-padded row's padding would take its place in the window. Left-pad rows of unequal "
                "length instead and mask the padding with `attention_mask`."
            )
        x = self._embed(token_ids, positions, training, start_index=cache_index)
        x, cache = self.encoder(
            x, attention_mask=attention_mask, cache=cache, cache_index=cache_index, positions=positions,
            training=training,
        )
        return self._logits(x), cache

    def get_config(self):
        config = super().get_config()
        config["tie_embeddings"] = self.tie_embeddings
        return config
