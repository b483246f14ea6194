"""Greedy decoding with a key/value cache, inside one `tf.while_loop`."""

import tensorflow as tf

from keras_transformer.data.tokenizer import WordPieceTokenizer

START_ID, END_ID = WordPieceTokenizer.start_id, WordPieceTokenizer.end_id


def never_generated(logits, start_id, pad_id=0):
    """Logits [..., V] with [PAD] and [START] made impossible: neither may
    follow a token (a generated 0 would also read as padding)."""
    vocab = tf.shape(logits)[-1]
    banned = tf.one_hot(pad_id, vocab) + tf.one_hot(start_id, vocab)
    return logits - 1e9 * banned


def check_max_length(model, max_length):
    """A Python-int `max_length` must fit the model's positional encoding."""
    if isinstance(max_length, int) and not 0 < max_length <= model.max_length:
        raise ValueError(
            f"`max_length` must be in [1, {model.max_length}] (the model's max_length). "
            f"Received: max_length={max_length}"
        )


def sentence_limits(source, max_length, max_extra_length):
    """[B] int32: each sentence's most generated tokens, its own source
    length (non-padding tokens) + `max_extra_length`, at most `max_length`.
    Without `max_extra_length`, every sentence may use `max_length`."""
    batch = tf.shape(source)[0]
    if max_extra_length is None:
        return tf.fill([batch], tf.cast(max_length, tf.int32))
    lengths = tf.reduce_sum(tf.cast(tf.not_equal(source, 0), tf.int32), axis=1)
    return tf.minimum(lengths + max_extra_length, tf.cast(max_length, tf.int32))


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
    if cache_chunk is not None and (not isinstance(cache_chunk, int) or cache_chunk < 1):
        raise ValueError(f"`cache_chunk` must be a positive int or None. Received: cache_chunk={cache_chunk!r}")
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


def greedy_decode(
    model, source, max_length, start_id=START_ID, end_id=END_ID, use_cache=True, max_extra_length=None,
    cache_chunk=16,
):
    """Arg-max decoding of a `Transformer`, one token per step.

    The encoder runs once, cross-attention keys/values are computed once and
    each step feeds only the newest token through the decoder's self-attention
    cache. The loop stops when every sentence has produced `end_id`.

    Args:
        model: a `Transformer`.
        source: int [B, S] source ids, 0-padded.
        max_length: int or scalar tensor, the most tokens to generate
            ([END] included).
        start_id, end_id: int, the [START] and [END] ids.
        use_cache: bool; False re-runs the decoder over the whole prefix at
            every step (the reference and benchmark baseline).
        max_extra_length: int; when given, a sentence whose source has n
            tokens generates at most n + max_extra_length, the last one
            forced to [END], so a translation does not depend on the other
            sentences in the batch.
        cache_chunk: int, the self-attention cache grows by this many
            positions when full, so each step reads only about as many
            positions as have been generated. None allocates all
            `max_length` positions up front: the fixed shapes XLA needs,
            which are also used whenever this is traced inside
            `tf.function(jit_compile=True)`.

    Returns:
        int32 [B, max_length]: the generated ids after [START], ending with
        `end_id` and 0-padded after it.
    """
    check_max_length(model, max_length)
    cache_chunk = resolve_cache_chunk(cache_chunk, use_cache)
    source = tf.convert_to_tensor(source)
    batch = tf.shape(source)[0]
    encoder_output, source_mask = model.encode(source)
    cache = init_decoder_cache(model, encoder_output, max_length, cache_chunk) if use_cache else []
    tokens = tf.zeros([max_length, batch], tf.int32)
    limits = sentence_limits(source, max_length, max_extra_length)
    start = tf.fill([batch], tf.constant(start_id, tf.int32))

    # With a growing cache shapes are dynamic anyway, so a sentence that has
    # ended also leaves the decoder's batch: `active` lists the sentences
    # still decoded; `token`, `done`, the caches and the encoder context hold
    # their rows.
    compact = cache_chunk is not None

    def step(i, active, token, cache, context, tokens, done):
        encoder_output, source_mask = context
        n = tf.shape(active)[0]  # sentences decoded in this step
        if use_cache:
            cache = grow_cache(cache, i, cache_chunk)
            logits, cache = model.decode(
                token[:, None], encoder_output, source_mask, cache=cache, cache_index=i
            )
        else:
            prefix = tf.concat([start[:, None], tf.transpose(tokens[:i])], axis=1)  # [B, i + 1]
            logits = model.decode(prefix, encoder_output, source_mask)
        logits = never_generated(logits[:, -1], start_id)
        token = tf.argmax(logits, axis=-1, output_type=tf.int32)
        if max_extra_length is not None:
            token = tf.where(i + 1 >= tf.gather(limits, active), end_id, token)
        token = tf.where(done, 0, token)
        done = done | tf.equal(token, end_id)
        tokens = tf.tensor_scatter_nd_update(tokens, tf.stack([tf.fill(tf.shape(active), i), active], 1), token)
        if compact:
            keep = tf.where(~done)[:, 0]
            active, token, done = tf.gather(active, keep), tf.gather(token, keep), tf.gather(done, keep)
            cache, context = tf.cond(
                tf.size(keep) < n,
                lambda: tf.nest.map_structure(lambda x: tf.gather(x, keep), (cache, context)),
                lambda: (cache, context),
            )
        return i + 1, active, token, cache, context, tokens, done

    def not_finished(i, active, token, cache, context, tokens, done):
        return (i < max_length) & ~tf.reduce_all(done)

    state = (tf.constant(0), tf.range(batch), start, cache, (encoder_output, source_mask), tokens, tf.zeros([batch], tf.bool))
    shapes = tf.nest.map_structure(lambda t: t.shape, state)
    if compact:
        i, active, token, cache, context, tokens, done = shapes
        shapes = (i, relax(active, 0), relax(token, 0), *decoder_rows_shapes(cache, context), tokens, relax(done, 0))
    tokens = tf.while_loop(not_finished, step, state, shape_invariants=shapes)[5]
    return tf.transpose(tokens)  # [B, max_length]
