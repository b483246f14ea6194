"""TensorFlow's decoding loop, shared by greedy and beam search.

`decode(model, source, max_length, strategy)` runs a `Transformer`'s encoder
once and its decoder one token a step inside one `tf.while_loop`. The loop
owns what every search needs: the key/value cache (grown in chunks, or
preallocated for XLA), each sentence's length limit, the cross-attention rows
of each step, and compaction (a sentence that is done leaves the decoder's
batch). A `DecodingStrategy` (`keras_transformer.decoding.strategy`) only says
how to pick the next tokens from the step's logits and what to keep of them.
The other backends run the same strategies in `strategy.decode_fixed`.

Shapes: B sentences, K hypotheses decoded per sentence (the strategy's
`width`), n <= B sentences still decoded in a step, L `max_length`, S the
source length, V the vocabulary, N heads.
"""

import numbers

import tensorflow as tf

from keras_transformer.decoding.strategy import DecodingStrategy  # noqa: F401 - its home before strategy.py
from keras_transformer.decoding.strategy import attention_rows
from keras_transformer.decoding.strategy import encode_for_search
from keras_transformer.decoding.strategy import never_generated  # noqa: F401 - likewise
from keras_transformer.decoding.strategy import sentence_limits
from keras_transformer.layers import validation


def check_max_length(model, max_length):
    """`max_length` (an int, a NumPy integer or an int scalar tensor or
    variable) must be in [1, model.max_length], the positions of the model's
    positional encoding.

    A value known now is checked now (ValueError). A tensor known only when
    the graph runs is asserted there (InvalidArgumentError) to be in
    [0, model.max_length] (0: nothing to generate, as for an empty batch),
    except under XLA, which compiles assertions away. Returns `max_length`
    as an int32 tensor.
    """
    limit = model.max_length
    message = f"`max_length` must be in [1, {limit}] (the model's max_length)"
    if isinstance(max_length, bool):
        raise ValueError(f"{message}, an integer. Received: max_length={max_length!r}")
    if isinstance(max_length, numbers.Integral):
        value = tensor = int(max_length)
    else:
        try:
            tensor = tf.convert_to_tensor(max_length)
        except (TypeError, ValueError):
            raise ValueError(f"{message}, an integer. Received: max_length={max_length!r}") from None
        if not tensor.dtype.is_integer:
            raise ValueError(f"{message}, an integer. Received: max_length of dtype {tensor.dtype.name}")
        if tensor.shape.rank not in (None, 0):
            raise ValueError(f"{message}, a scalar. Received: max_length with shape {tensor.shape}")
        value = tf.get_static_value(tensor)
        if value is None and tf.executing_eagerly():
            value = tensor.numpy()
    if value is not None:
        if not 0 < int(value) <= limit:
            raise ValueError(f"{message}. Received: max_length={int(value)}")
        return tf.constant(int(value), tf.int32)
    if not _tracing_for_xla():
        # Compared in the tensor's own dtype: an int64 past 2**31 must not wrap first.
        valid = (tensor >= 0) & (tensor <= tf.cast(limit, tensor.dtype))
        assertion = tf.debugging.Assert(valid, [f"`max_length` must be in [0, {limit}] (the model's max_length) "
                                                "when the graph runs. Received: max_length=", tensor])
        with tf.control_dependencies([assertion]):
            tensor = tf.identity(tensor)
    return tf.cast(tensor, tf.int32)


def _tracing_for_xla():
    """True while tracing a `tf.function(jit_compile=True)`."""
    try:  # TensorFlow marks the graph it traces for XLA with a control-flow context.
        from tensorflow.python.ops import control_flow_util
    except ImportError:  # pragma: no cover - a TensorFlow without the module
        return False
    return control_flow_util.GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph())


def resolve_cache_chunk(cache_chunk, use_cache):
    """Checks `cache_chunk`; None where the cache must not grow: without a
    cache, or under XLA, which needs the fixed shapes of a preallocated one."""
    if cache_chunk is not None:
        cache_chunk = validation.check_int_at_least("cache_chunk", cache_chunk, 1, " or None")
    if not use_cache or _tracing_for_xla():
        return None
    return cache_chunk


def init_decoder_cache(model, encoder_output, max_length, cache_chunk):
    """The decoder cache, with self-attention room for `cache_chunk`
    positions (at most `max_length`), or for all `max_length` when None."""
    capacity = max_length if cache_chunk is None else tf.minimum(cache_chunk, max_length)
    return model.init_cache(encoder_output, capacity)


def grow_cache(cache, index, cache_chunk):
    """`cache` with room at position `index`: self-attention caches
    [B, 2, N, L, H] that are full get `cache_chunk` more positions.

    Only the filled part of a cache is then read (and, in beam search,
    reordered) at each step, instead of all `max_length` positions.
    """
    if cache_chunk is None or not cache:
        return cache

    def grown():
        pad = [[0, 0], [0, 0], [0, 0], [0, cache_chunk], [0, 0]]
        return [{**c, "self_attention": tf.pad(c["self_attention"], pad)} for c in cache]

    capacity = tf.shape(cache[0]["self_attention"])[3]
    return tf.cond(index < capacity, lambda: cache, grown)


def relax(shape, *dims):
    """`shape` with the sizes at `dims` unknown (a `tf.while_loop` shape
    invariant for a loop variable that changes size there)."""
    return tf.TensorShape([None if d in dims else size for d, size in enumerate(shape.as_list())])


def decoder_rows_shapes(cache, context):
    """Shape invariants of the decoder's caches and context (encoder output
    and mask) when sentences leave the batch (axis 0) and the self-attention
    caches grow (axis 3)."""
    cache = [
        {"self_attention": relax(c["self_attention"], 0, 3), "cross_attention": relax(c["cross_attention"], 0)}
        for c in cache
    ]
    return cache, tuple(relax(x, 0) for x in context)


def decode(model, source, max_length, strategy, use_cache=True, max_extra_length=None, cache_chunk=16):
    """Runs `strategy` over a `Transformer`: the encoder once, then one token a step.

    Args:
        model: a `Transformer`.
        source: int [B, S] source ids, 0-padded.
        max_length: int or scalar tensor, the most tokens to generate.
        strategy: a `DecodingStrategy`; its `start_id` is every hypothesis's first input.
        use_cache: bool; False re-runs the decoder over the whole prefix at
            every step (the reference and benchmark baseline).
        max_extra_length: int; when given, a sentence whose source has n
            tokens generates at most n + max_extra_length, so a translation
            does not depend on the other sentences in its batch.
        cache_chunk: int, the self-attention cache grows by this many
            positions when full, and a sentence that is done leaves the
            decoder's batch. None preallocates all `max_length` positions and
            keeps every sentence: the fixed shapes XLA needs, also used
            whenever this is traced inside `tf.function(jit_compile=True)`.

    Returns:
        `strategy.finish(state, steps)`.
    """
    cache_chunk = resolve_cache_chunk(cache_chunk, use_cache)
    max_length = check_max_length(model, max_length)
    source = tf.convert_to_tensor(source)
    batch = tf.shape(source)[0]
    k = strategy.width  # a Python int, or a scalar int32 tensor chosen in the graph
    limits = sentence_limits(source, max_length, max_extra_length)

    encoder_output, source_mask = encode_for_search(model, source, k)  # [B * K, S, D]
    cache = init_decoder_cache(model, encoder_output, max_length, cache_chunk) if use_cache else []
    start = tf.constant(strategy.start_id, tf.int32)
    last = tf.fill([batch * k], start)  # each hypothesis's newest token
    # With a growing cache shapes are dynamic anyway, so a sentence that is
    # done also leaves the decoder's batch: `active` lists the sentences still
    # decoded, and `last`, the caches and the encoder context hold their K
    # rows each. The strategy's state stays full-sized, [B, ...].
    compact = cache_chunk is not None

    def take(state, active):
        return tf.nest.map_structure(lambda x: tf.gather(x, active), state) if compact else state

    def put(full, rows, active):
        if not compact:
            return rows
        # While every sentence is decoded, `rows` is the whole state (`active`
        # keeps the batch's order). After that, row b of the new state is row b
        # of `full`, or row j of `rows` where active[j] == b: one index into
        # [full; rows] a step, one gather a tensor (a scatter would refuse the
        # empty attention maps of a source of width 0).
        def merged():
            index = tf.tensor_scatter_nd_update(tf.range(batch), active[:, None], batch + tf.range(tf.size(active)))
            return tf.nest.map_structure(lambda f, r: tf.gather(tf.concat([f, r], 0), index), full, rows)

        return tf.cond(tf.size(active) < batch, merged, lambda: rows)

    def step(i, active, last, cache, context, state, sentence_done):
        encoder_output, source_mask = context
        n = tf.shape(active)[0]  # sentences decoded in this step
        rows = take(state, active)
        # Only the last layer's cross-attention of the newest position is used, and only by a strategy that asks.
        with_scores = strategy.attention is not None
        if use_cache:
            cache = grow_cache(cache, i, cache_chunk)
            logits, *scores, cache = model.decode(
                last[:, None], encoder_output, source_mask, cache=cache, cache_index=i,
                return_attention_scores=with_scores,
            )
        else:
            prefix = tf.concat([tf.fill([n * k, 1], start), strategy.prefix(rows, i)], 1)  # [n * K, i + 1]
            outputs = model.decode(prefix, encoder_output, source_mask, return_attention_scores=with_scores)
            logits, *scores = outputs if with_scores else (outputs,)
            logits = logits[:, -1:]
        logits = tf.reshape(logits, [n, k, logits.shape[-1] or -1])  # [n, K, V], V kept static
        attention = None
        if with_scores:
            last_layer = scores[0][-1][:, :, -1:]  # [n * K, N, 1, S]
            attention = attention_rows(last_layer, n, k, strategy.attention == "heads")
        own_limits = tf.gather(limits, active) if compact else limits
        at_limit = None if max_extra_length is None else i + 1 >= own_limits
        tokens, parents, rows, sentence_done = strategy.step(i, logits, attention, rows, own_limits, at_limit)
        state = put(state, rows, active)
        last = tf.reshape(tokens, [-1])
        if parents is not None:
            parents = tf.reshape(parents + tf.range(n)[:, None] * k, [-1])  # rows of the caches
        if compact:
            keep = tf.where(~sentence_done)[:, 0]
            kept_rows = tf.reshape(keep[:, None] * tf.cast(k, keep.dtype) + tf.range(k, dtype=keep.dtype), [-1])
            active, sentence_done = tf.gather(active, keep), tf.gather(sentence_done, keep)
            last = tf.gather(last, kept_rows)
            # Rows of per-sentence tensors change only when a sentence leaves;
            # a strategy that reorders moves the self-attention caches below.
            if parents is not None:
                parents = tf.gather(parents, kept_rows)
                per_sentence = (context, [c["cross_attention"] for c in cache])
                context, cross = tf.cond(
                    tf.size(keep) < n,
                    lambda: tf.nest.map_structure(lambda x: tf.gather(x, kept_rows), per_sentence),
                    lambda: per_sentence,
                )
                cache = [{**c, "cross_attention": x} for c, x in zip(cache, cross)]
            else:
                cache, context = tf.cond(
                    tf.size(keep) < n,
                    lambda: tf.nest.map_structure(lambda x: tf.gather(x, kept_rows), (cache, context)),
                    lambda: (cache, context),
                )
        if parents is not None:
            cache = [{**c, "self_attention": tf.gather(c["self_attention"], parents)} for c in cache]
        return i + 1, active, last, cache, context, state, sentence_done

    def not_finished(i, active, last, cache, context, state, sentence_done):
        return (i < max_length) & ~tf.reduce_all(sentence_done)

    context = (encoder_output, source_mask)
    strategy_state = strategy.initial_state(batch, max_length, tf.shape(source)[1])
    state = (tf.constant(0), tf.range(batch), last, cache, context, strategy_state, tf.zeros([batch], tf.bool))
    shapes = tf.nest.map_structure(lambda t: t.shape, state)
    if compact:
        i, active, last, cache, context, strategy_state, sentence_done = shapes
        shapes = (
            i, relax(active, 0), relax(last, 0), *decoder_rows_shapes(cache, context), strategy_state,
            relax(sentence_done, 0),
        )

    def same_shapes_step(*state):
        # Gathers by computed indices lose static batch sizes; keep them so
        # tf.while_loop sees loop variables of unchanged shape.
        return tf.nest.map_structure(tf.ensure_shape, step(*state), shapes)

    length, *_, state, _ = tf.while_loop(not_finished, same_shapes_step, state, shape_invariants=shapes)
    return strategy.finish(state, length)
