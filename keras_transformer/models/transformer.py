"""The encoder-decoder Transformer model."""

import keras
from keras import ops

from keras_transformer.layers import masks
from keras_transformer.layers.attention import accept_earlier_optimizer_state
from keras_transformer.layers import validation
from keras_transformer.layers.block import changed_options
from keras_transformer.layers.block import model_config_options
from keras_transformer.layers.block import check_model_sizes
from keras_transformer.layers.dropout import Dropout
from keras_transformer.layers.embedding import TokenEmbedding
from keras_transformer.layers.positional_encoding import PositionalEncoding
from keras_transformer.layers.stacks import Decoder
from keras_transformer.layers.stacks import Encoder
from keras_transformer.models.presets import PRESETS

SHARE_CHOICES = ("auto", "all", "decoder", "none")
POSITION_EMBEDDINGS = ("sinusoidal", "rotary")


@keras.saving.register_keras_serializable(package="keras_transformer")
class Transformer(keras.Model):
    """Encoder-decoder Transformer, "Attention Is All You Need".

    Args:
        source_vocab_size: int, source token ids are in [0, source_vocab_size).
        target_vocab_size: int, target token ids are in [0, target_vocab_size).
        num_layers: int, layers in the encoder and in the decoder. Default 6.
        d_model: int, model size. Default 512.
        num_heads: int, attention heads; must divide d_model. Default 8.
        d_ff: int, feed-forward inner size. Default 2048.
        dropout: float in [0, 1), residual, embedding and attention dropout.
            Default 0.1.
        max_length: int, the longest source or target sequence. Default 1024.
        share_embeddings: "all" (source embedding, target embedding and
            pre-softmax projection share one matrix, as in the paper; needs
            equal vocabulary sizes), "decoder" (target embedding and
            projection only), "none", or "auto" ("all" when the vocabulary
            sizes are equal, else "decoder"). Default "auto".
        norm_first: bool, pre-norm layers. Default False (the paper's post-norm).
        activation: feed-forward activation. Default "relu".
        attention_dropout: dropout on attention probabilities; defaults to
            `dropout`.
        position_embedding: "sinusoidal" (the paper's, added to the
            embeddings; default) or "rotary" (rotary embeddings in every
            self-attention, nothing added to the embeddings).
        norm, feed_forward, use_bias, num_key_value_heads,
        rotary_max_wavelength, rotary_scaling_factor: the block options of `EncoderLayer`
            (RMSNorm, SwiGLU or GeGLU, no biases, grouped-query attention).

    Call arguments:
        inputs: dict with "source" int ids [B, S] and "target" int ids
            [B, T]; 0 is padding.
        training: bool, whether dropout is active.

    Returns:
        Logits [B, T, target_vocab_size], float32 under any dtype policy.

    Example:
    >>> model = Transformer.from_preset("tiny", source_vocab_size=100, target_vocab_size=100)
    >>> ids = ops.convert_to_tensor([[5, 6, 7, 0]])
    >>> tuple(model({"source": ids, "target": ids}).shape)
    (1, 4, 100)
    """

    def __init__(
        self,
        source_vocab_size,
        target_vocab_size,
        num_layers=6,
        d_model=512,
        num_heads=8,
        d_ff=2048,
        dropout=0.1,
        max_length=1024,
        share_embeddings="auto",
        norm_first=False,
        activation="relu",
        attention_dropout=None,
        position_embedding="sinusoidal",
        norm="layer",
        feed_forward=None,
        use_bias=True,
        num_key_value_heads=None,
        rotary_max_wavelength=10000.0,
        rotary_scaling_factor=1.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        validation.check_choice("position_embedding", position_embedding, POSITION_EMBEDDINGS)
        self.source_vocab_size = validation.check_positive_int("source_vocab_size", source_vocab_size)
        self.target_vocab_size = validation.check_positive_int("target_vocab_size", target_vocab_size)
        for name, value in check_model_sizes(num_layers, d_model, num_heads, d_ff, dropout, max_length).items():
            setattr(self, name, value)
        validation.check_choice("share_embeddings", share_embeddings, SHARE_CHOICES)
        if share_embeddings == "auto":
            share_embeddings = "all" if source_vocab_size == target_vocab_size else "decoder"
        if share_embeddings == "all" and source_vocab_size != target_vocab_size:
            raise ValueError(
                "share_embeddings='all' needs source_vocab_size == target_vocab_size. "
                f"Received: source_vocab_size={source_vocab_size}, "
                f"target_vocab_size={target_vocab_size}"
            )
        self.share_embeddings = share_embeddings
        self.norm_first = bool(norm_first)
        self.activation = activation
        self.attention_dropout = (None if attention_dropout is None
                                  else validation.check_rate("attention_dropout", attention_dropout))
        self.position_embedding = position_embedding
        # (Checked here once, for both stacks: without rotary embeddings a changed value warns once, not twice.)
        rotary_max_wavelength, rotary_scaling_factor = validation.check_rotary_options(
            position_embedding == "rotary", rotary_max_wavelength, rotary_scaling_factor)
        block_options = dict(
            norm=norm, feed_forward=feed_forward, use_bias=use_bias, num_key_value_heads=num_key_value_heads,
            rotary_max_wavelength=rotary_max_wavelength, rotary_scaling_factor=rotary_scaling_factor,
        )

        policy = self.dtype_policy
        self.source_embedding = TokenEmbedding(
            source_vocab_size, d_model, dtype=policy, name="source_embedding"
        )
        self.target_embedding = None
        if share_embeddings != "all":
            self.target_embedding = TokenEmbedding(
                target_vocab_size, d_model, dtype=policy, name="target_embedding"
            )
        self.output_projection = None
        if share_embeddings == "none":
            self.output_projection = keras.layers.Dense(
                target_vocab_size, dtype=policy, name="output_projection"
            )
        self.positional_encoding = PositionalEncoding(max_length, dtype=policy, name="positional_encoding")
        self.source_dropout = Dropout(dropout, dtype=policy)
        self.target_dropout = Dropout(dropout, dtype=policy)
        stack_args = dict(
            num_layers=num_layers, num_heads=num_heads, d_ff=d_ff, dropout=dropout,
            norm_first=norm_first, activation=activation, attention_dropout=attention_dropout,
            position_embedding="rotary" if position_embedding == "rotary" else None,
            dtype=policy, **changed_options(block_options),
        )
        self.encoder = Encoder(**stack_args, name="encoder")
        self.decoder = Decoder(**stack_args, name="decoder")
        self.block_options = {key: self.encoder.options[key] for key in block_options}  # (as the stacks checked them)

    @classmethod
    def from_preset(cls, preset, source_vocab_size, target_vocab_size, **overrides):
        """A model of a named size ("tiny", "base", "big"); `overrides`
        replace any preset argument."""
        validation.check_choice("preset", preset, PRESETS)
        return cls(source_vocab_size, target_vocab_size, **{**PRESETS[preset], **overrides})

    def build(self, input_shape=None):
        vectors = (None, None, self.d_model)
        self.source_embedding.build()
        if self.target_embedding is not None:
            self.target_embedding.build()
        self.positional_encoding.build(vectors)
        self.encoder.build(vectors)
        self.decoder.build(vectors, vectors)
        if self.output_projection is not None:
            self.output_projection.build(vectors)
        self.built = True

    @property
    def _target_embedding(self):
        return self.target_embedding or self.source_embedding

    def _ensure_built(self):
        # encode/init_cache/decode may come before any full call (step-by-step decoding of a new model).
        if not self.built:
            self.build()

    def get_build_config(self):
        # A model saved before its first call is built before Keras writes its weights (else the file
        # holds none, and loads as a new random model without a word).
        self._ensure_built()
        return super().get_build_config()

    def encode(self, source, training=None):
        """Source ids [B, S] -> (encoder output [B, S, D], source mask [B, S])."""
        validation.check_rank("source", getattr(source, "shape", None), 2)
        self._ensure_built()
        source_mask = masks.padding_mask(source)
        x = self.source_embedding(source)
        if self.position_embedding == "sinusoidal":
            x = self.positional_encoding(x)
        x = self.source_dropout(x, training=training)
        return self.encoder(x, mask=source_mask, training=training), source_mask

    def init_cache(self, encoder_output, max_length):
        """Decoder cache for incremental decoding of up to `max_length` tokens."""
        self._ensure_built()
        return self.decoder.init_cache(encoder_output, max_length)

    def decode(
        self, target, encoder_output, source_mask, cache=None, cache_index=None,
        return_attention_scores=False, training=None,
    ):
        """Target ids [B, T] -> logits [B, T, V] (float32).

        With `cache` (from `init_cache`) `target` holds the tokens at
        positions `[cache_index, cache_index + T)` and the updated cache is
        returned last; with `return_attention_scores` the list of every
        decoder layer's cross-attention scores [B, N, T, S] comes next to the
        logits.
        """
        validation.check_rank("target", getattr(target, "shape", None), 2)
        self._ensure_built()
        x = self._target_embedding(target)
        if self.position_embedding == "sinusoidal":
            x = self.positional_encoding(x, start_index=0 if cache_index is None else cache_index)
        x = self.target_dropout(x, training=training)
        out = self.decoder(
            x, encoder_output, inputs_mask=masks.padding_mask(target),
            encoder_output_mask=source_mask, return_attention_scores=return_attention_scores,
            cache=cache, cache_index=cache_index, training=training,
        )
        x, *rest = out if isinstance(out, (tuple, list)) else (out,)
        scores = rest.pop(0) if return_attention_scores else None
        new_cache = rest
        if self.output_projection is None:
            logits = self._target_embedding(x, reverse=True)
        else:
            logits = self.output_projection(x)
        outputs = (ops.cast(logits, "float32"),)
        if return_attention_scores:
            outputs += (scores,)
        if cache is not None:
            outputs += (new_cache[0],)
        return outputs[0] if len(outputs) == 1 else outputs

    def call(self, inputs, training=None):
        if not isinstance(inputs, dict) or set(inputs) != {"source", "target"}:
            raise ValueError(
                "Transformer expects a dict with keys 'source' and 'target' (int ids [B, S] "
                f"and [B, T]). Received: {inputs!r:.200}"
            )
        encoder_output, source_mask = self.encode(inputs["source"], training=training)
        return self.decode(inputs["target"], encoder_output, source_mask, training=training)

    # A compiled `.keras` file and a `.weights.h5` backup saved before
    # MultiHeadAttention took Keras's weight layout hold optimizer slots of
    # the earlier shapes: the optimizer is told to reshape them. (Not in
    # `compile`: Keras skips compiling at load a model whose `compile` is its own.)
    def compile_from_config(self, config):
        super().compile_from_config(config)
        if getattr(self, "optimizer", None) is not None:
            accept_earlier_optimizer_state(self.optimizer, self)

    def load_weights(self, filepath, *args, **kwargs):
        if getattr(self, "optimizer", None) is not None:
            accept_earlier_optimizer_state(self.optimizer, self)
        return super().load_weights(filepath, *args, **kwargs)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "source_vocab_size": self.source_vocab_size,
                "target_vocab_size": self.target_vocab_size,
                "num_layers": self.num_layers,
                "d_model": self.d_model,
                "num_heads": self.num_heads,
                "d_ff": self.d_ff,
                "dropout": self.dropout,
                "max_length": self.max_length,
                "share_embeddings": self.share_embeddings,
                "norm_first": self.norm_first,
                "activation": self.activation,
                "attention_dropout": self.attention_dropout,
            }
        )
        # (The options after the paper's only when changed: older versions load the rest.)
        config.update(model_config_options(self, {"position_embedding": self.position_embedding, **self.block_options}))
        return config
