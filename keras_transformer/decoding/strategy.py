"""The strategy interface of the decoding loops, and the loop that runs on every backend.

A `DecodingStrategy` says how to pick the next tokens from a step's logits and
what to keep of them (greedy: the arg-max; beam search: the best hypotheses);
it is written in `keras.ops`, so one strategy serves both loops:

- `keras_transformer.decoding.loop.decode`, TensorFlow's `tf.while_loop`, with
  a cache that grows in chunks and a batch that sheds finished sentences;
- `decode_fixed` here, `keras.ops.while_loop` with the fixed shapes that
  `jax.jit` (and XLA) need: the whole cache preallocated, every sentence kept
  in the batch until the last one ends. It is what `decode` runs on the JAX
  and PyTorch backends.

Shapes: B sentences, K hypotheses decoded per sentence (the strategy's
`width`), n <= B sentences still decoded in a step, L `max_length`, S the
source length, V the vocabulary, N heads.
"""

import numbers

import keras
import numpy as np
from keras import ops

from keras_transformer.layers import validation


class DecodingStrategy:
    """How a search picks the next tokens; a decoding loop runs around it.

    The strategy's state is a nest of tensors with the B sentences on axis 0.
    At each step the loop passes the rows of the sentences still decoded and
    writes the rows that `step` returns back into the full state.
    """

    width = 1  # K: hypotheses decoded per sentence
    start_id = 1  # [START], every hypothesis's first input
    attention = None  # "mean" or "heads": `step` receives the step's cross-attention rows

    def initial_state(self, batch, max_length, source_length):
        """The state of B sentences: a nest of tensors [B, ...]."""
        raise NotImplementedError

    def prefix(self, rows, i):
        """Without a cache: the n * K generated prefixes before step `i`, int32 [n * K, i]."""
        raise NotImplementedError

    def step(self, i, logits, attention, rows, limits, at_limit):
        """Picks the tokens of step `i`.

        Args:
            i: scalar int32, the step (the position of the tokens picked).
            logits: float [n, K, V], the decoder's scores for the next token.
            attention: with `attention` "mean", float32 [n, K, S], the last
                decoder layer's cross-attention of this step averaged over
                heads; with "heads", [n, K, N, S]; else None.
            rows: the state's rows of the n sentences.
            limits: int32 [n], each sentence's most generated tokens.
            at_limit: with `max_extra_length`, bool [n]: whether this is a
                sentence's last allowed step (its token must be [END]); else
                None (nothing is forced, not even at `max_length`).

        Returns:
            (tokens int32 [n, K]: the next inputs of the K hypotheses;
             parents int32 [n, K]: the hypothesis (0..K-1) each one continues,
             or None when hypotheses never move;
             new rows; done bool [n]: sentences that can stop).
        """
        raise NotImplementedError

    def finish(self, state, length):
        """The search's result from the full state after `length` steps."""
        raise NotImplementedError


def never_generated(logits, start_id, pad_id=0):
    """Logits [..., V] with [PAD] and [START] made impossible: neither may
    follow a token (a generated 0 would also read as padding)."""
    ids = ops.arange(ops.shape(logits)[-1])
    banned = ops.cast((ids == pad_id) | (ids == start_id), logits.dtype)
    return logits - 1e9 * banned


def sentence_limits(source, max_length, max_extra_length):
    """[B] int32: each sentence's most generated tokens, its own source
    length (non-padding tokens) + `max_extra_length`, at most `max_length`.
    Without `max_extra_length`, every sentence may use `max_length`."""
    max_length = ops.cast(max_length, "int32")
    if max_extra_length is None:
        return ops.zeros([ops.shape(source)[0]], "int32") + max_length
    lengths = ops.sum(ops.cast(ops.not_equal(source, 0), "int32"), axis=1)
    return ops.minimum(lengths + max_extra_length, max_length)


def attention_rows(scores, n, k, per_head):
    """One layer's scores of one position [n * K, N, 1, S] -> float32 [n, K, S],
    averaged over heads, or [n, K, N, S] with `per_head`."""
    rows = ops.cast(scores[:, :, 0, :], "float32")
    if not per_head:
        rows = ops.mean(rows, axis=1)
    return ops.reshape(rows, [n, k, *ops.shape(rows)[1:]])


def encode_for_search(model, source, width):
    """The encoder's output and source mask of `source`, each sentence's rows
    repeated `width` times (one per hypothesis): [B * K, S, D] and its mask."""
    encoder_output, source_mask = model.encode(source)
    if not isinstance(width, int) or width > 1:  # (a tensor width is repeated as it is)
        encoder_output = ops.repeat(encoder_output, width, axis=0)
        source_mask = ops.repeat(source_mask, width, axis=0)
    return encoder_output, source_mask


def decode(model, source, max_length, strategy, use_cache=True, max_extra_length=None, cache_chunk=16):
    """Runs `strategy` over a `Transformer`: TensorFlow's loop
    (`keras_transformer.decoding.loop.decode`) on the TensorFlow backend,
    `decode_fixed` on the others, where `cache_chunk` is not used (a cache
    that grows cannot be traced by `jax.jit`)."""
    if isinstance(max_extra_length, (numbers.Number, np.generic)) or (
            isinstance(max_extra_length, np.ndarray) and max_extra_length.ndim == 0):
        # A Python or NumPy number (a tensor is the graph's to check).
        value = max_extra_length.item() if isinstance(max_extra_length, (np.generic, np.ndarray)) else max_extra_length
        validation.check_int_at_least("max_extra_length", value, 0, " or None")
    if keras.backend.backend() == "tensorflow":
        from keras_transformer.decoding import loop

        return loop.decode(model, source, max_length, strategy, use_cache, max_extra_length, cache_chunk)
    if cache_chunk is not None:  # unused here, but refused as TensorFlow's loop refuses it
        validation.check_int_at_least("cache_chunk", cache_chunk, 1, " or None")
    return decode_fixed(model, source, max_length, strategy, use_cache, max_extra_length)


def check_static_max_length(model, max_length) -> int:
    """`max_length` as an int in [1, model.max_length]; it must be known when
    the loop is traced, since it sizes the preallocated cache."""
    limit = model.max_length
    if isinstance(max_length, bool) or not isinstance(max_length, numbers.Integral):
        raise ValueError(
            f"`max_length` must be a Python integer in [1, {limit}] (the model's max_length) on the "
            f"{keras.backend.backend()} backend, where it sizes the preallocated cache. "
            f"Received: max_length={max_length!r}"
        )
    if not 0 < int(max_length) <= limit:
        raise ValueError(f"`max_length` must be in [1, {limit}] (the model's max_length). Received: "
                         f"max_length={int(max_length)}")
    return int(max_length)


def decode_fixed(model, source, max_length, strategy, use_cache=True, max_extra_length=None):
    """Runs `strategy` over a `Transformer` in fixed shapes, on any backend.

    The encoder runs once; the decoder runs one token a step over a cache of
    all `max_length` positions (or, with `use_cache=False`, over the whole
    `max_length` prefix buffer, whose positions after the step are hidden by
    the causal mask). Every sentence stays in the batch until all are done,
    so each loop variable keeps its shape: the loop traces under `jax.jit`.
    It gives the same tokens as TensorFlow's loop for the same weights.

    Args:
        model: a `Transformer`.
        source: int [B, S] source ids, 0-padded.
        max_length: a Python int in [1, model.max_length].
        strategy: a `DecodingStrategy`.
        use_cache: bool; False re-runs the decoder over the prefix buffer.
        max_extra_length: int; when given, a sentence whose source has n
            tokens generates at most n + max_extra_length.

    Returns:
        `strategy.finish(state, steps)`.
    """
    max_length = check_static_max_length(model, max_length)
    source = ops.convert_to_tensor(source, "int32")
    batch, source_length = ops.shape(source)
    k = strategy.width
    limits = sentence_limits(source, max_length, max_extra_length)
    encoder_output, source_mask = encode_for_search(model, source, k)
    cache = model.init_cache(encoder_output, max_length) if use_cache else []
    with_scores = strategy.attention is not None
    hypothesis_rows = ops.arange(batch)[:, None] * k

    def step(i, last, cache, state, sentence_done):
        if use_cache:
            logits, *scores, cache = model.decode(
                last[:, None], encoder_output, source_mask, cache=cache, cache_index=i,
                return_attention_scores=with_scores,
            )
        else:
            start = ops.full([batch * k, 1], strategy.start_id, "int32")
            prefix = ops.concatenate([start, strategy.prefix(state, max_length - 1)], axis=1)  # [B * K, L]
            outputs = model.decode(prefix, encoder_output, source_mask, return_attention_scores=with_scores)
            logits, *scores = outputs if with_scores else (outputs,)
            position = ops.reshape(i, [1])
            logits = ops.take(logits, position, axis=1)
            scores = [[ops.take(layer, position, axis=2) for layer in scores[0]]] if with_scores else scores
        logits = ops.reshape(logits, [batch, k, ops.shape(logits)[-1]])  # [B, K, V] (no -1: B may be 0)
        attention = None
        if with_scores:
            attention = attention_rows(scores[0][-1][:, :, -1:], batch, k, strategy.attention == "heads")
        at_limit = None if max_extra_length is None else i + 1 >= limits
        tokens, parents, state, sentence_done = strategy.step(i, logits, attention, state, limits, at_limit)
        if parents is not None and use_cache:
            moved = ops.reshape(parents + hypothesis_rows, [-1])  # the caches' rows each hypothesis continues
            cache = [{**c, "self_attention": ops.take(c["self_attention"], moved, axis=0)} for c in cache]
        return i + 1, ops.reshape(tokens, [-1]), cache, state, sentence_done

    def not_finished(i, last, cache, state, sentence_done):
        return (i < max_length) & ~ops.all(sentence_done)

    loop_vars = (
        ops.convert_to_tensor(0, "int32"),
        ops.full([batch * k], strategy.start_id, "int32"),
        cache,
        strategy.initial_state(batch, max_length, source_length),
        ops.zeros([batch], "bool"),
    )
    length, _, _, state, _ = ops.while_loop(not_finished, step, loop_vars)
    return strategy.finish(state, length)
