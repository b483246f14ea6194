"""Batched beam search with a key/value cache and the GNMT length penalty,
inside one `tf.while_loop` with fixed shapes."""

import tensorflow as tf

from keras_transformer.decoding.greedy import END_ID
from keras_transformer.decoding.greedy import START_ID
from keras_transformer.decoding.greedy import check_max_length
from keras_transformer.decoding.greedy import decoder_rows_shapes
from keras_transformer.decoding.greedy import grow_cache
from keras_transformer.decoding.greedy import init_decoder_cache
from keras_transformer.decoding.greedy import never_generated
from keras_transformer.decoding.greedy import relax
from keras_transformer.decoding.greedy import resolve_cache_chunk
from keras_transformer.decoding.greedy import sentence_limits

NEG_INF = -1e9


def length_penalty(length, alpha):
    """GNMT's ((5 + length) / 6) ** alpha (Wu et al., 2016, section 7)."""
    return tf.pow((5.0 + tf.cast(length, tf.float32)) / 6.0, alpha)


def _gather_beams(x, beam_index):
    """x [B, K, ...], beam_index [B, M] -> [B, M, ...]."""
    return tf.gather(x, beam_index, axis=1, batch_dims=1)


def beam_search(
    model,
    source,
    max_length,
    beam_size=4,
    alpha=0.6,
    start_id=START_ID,
    end_id=END_ID,
    return_attention=False,
    use_cache=True,
    max_extra_length=None,
    cache_chunk=16,
):
    """Beam search over a `Transformer`, all sentences of `source` at once.

    Hypotheses are ranked by log-probability / `length_penalty(len, alpha)`,
    where len counts the generated tokens with [END]. Each step expands the
    `beam_size` live hypotheses into their best `2 * beam_size` continuations:
    those ending in [END] join the sentence's finished list, the best others
    stay live. As in fairseq, an [END] counts only when it is among the best
    `beam_size` continuations, so `beam_size=1` with `alpha=0` is greedy
    decoding. A sentence is done when no live hypothesis can still beat its
    worst kept finished one; the loop stops when every sentence is done or
    at `max_length`.

    Args:
        model: a `Transformer`.
        source: int [B, S] source ids, 0-padded.
        max_length: int or scalar tensor, the most tokens to generate.
        beam_size: int, hypotheses kept per sentence. Default 4.
        alpha: float, the length-penalty exponent; 0 ranks by plain
            log-probability. Default 0.6.
        start_id, end_id: int, the [START] and [END] ids.
        return_attention: False (default); True or "mean": also return the
            cross-attention weights of every hypothesis (last decoder layer,
            averaged over heads); "heads": the same, one map per head.
        use_cache: bool; False re-runs the decoder over the whole prefix at
            every step (the benchmark baseline).
        max_extra_length: int; when given, a sentence whose source has n
            tokens generates at most n + max_extra_length, the last one
            forced to [END], so a translation does not depend on the other
            sentences in the batch.
        cache_chunk: int, the self-attention cache grows by this many
            positions when full, so each step reads and reorders only about
            as many positions as have been generated. None allocates all
            `max_length` positions up front: the fixed shapes XLA needs,
            which are also used whenever this is traced inside
            `tf.function(jit_compile=True)`.

    Returns:
        A dict, best hypothesis first along axis 1:
        "ids": int32 [B, K, max_length], ending in `end_id`, 0-padded;
        "scores": float32 [B, K], length-penalized scores;
        "log_probs": float32 [B, K], the sum of token log-probabilities;
        "attention" (with `return_attention`): float32 [B, K, max_length, S],
        or [B, K, max_length, num_heads, S] with "heads"; row t is the
        attention of the step that generated token t.
    """
    check_max_length(model, max_length)
    cache_chunk = resolve_cache_chunk(cache_chunk, use_cache)
    if beam_size < 1:
        raise ValueError(f"`beam_size` must be at least 1. Received: beam_size={beam_size}")
    if return_attention not in (False, True, "mean", "heads"):
        raise ValueError(
            f"`return_attention` must be False, True, 'mean' or 'heads'. Received: {return_attention!r}"
        )
    per_head = return_attention == "heads"
    source = tf.convert_to_tensor(source)
    batch, source_length = tf.shape(source)[0], tf.shape(source)[1]
    k = beam_size
    max_length = tf.convert_to_tensor(max_length, tf.int32)
    alpha = tf.constant(alpha, tf.float32)
    limits = sentence_limits(source, max_length, max_extra_length)

    encoder_output, source_mask = model.encode(source)
    encoder_output = tf.repeat(encoder_output, k, axis=0)  # [B * K, S, D]
    source_mask = tf.repeat(source_mask, k, axis=0)
    cache = init_decoder_cache(model, encoder_output, max_length, cache_chunk) if use_cache else []

    # Live hypotheses; only beam 0 is real at the start.
    live_ids = tf.zeros([batch, k, max_length], tf.int32)
    live_log_probs = tf.tile(tf.concat([[0.0], tf.fill([k - 1], NEG_INF)], 0)[None], [batch, 1])
    # Attention rows are collected only when asked for; else they are empty.
    if not return_attention:
        attention_shape = [0, 0]
    elif per_head:
        attention_shape = [max_length, model.num_heads, source_length]
    else:
        attention_shape = [max_length, source_length]
    live_attention = tf.zeros([batch, k, *attention_shape])
    # Finished hypotheses; NEG_INF scores mark empty slots.
    done_ids = tf.zeros([batch, k, max_length], tf.int32)
    done_scores = tf.fill([batch, k], NEG_INF)
    done_log_probs = tf.fill([batch, k], NEG_INF)
    done_attention = tf.zeros([batch, k, *attention_shape])
    last = tf.fill([batch * k], tf.constant(start_id, tf.int32))
    # With a growing cache shapes are dynamic anyway, so a sentence that is
    # done also leaves the decoder's batch: `active` lists the sentences still
    # decoded, and `last`, the caches and the encoder context hold their
    # K rows each. The per-sentence results stay full-sized [B, ...].
    compact = cache_chunk is not None

    def take(x, active):
        return tf.gather(x, active) if compact else x

    def put(full, part, active):
        return tf.tensor_scatter_nd_update(full, active[:, None], part) if compact else part

    def put_state(full, part, active):
        # Without return_attention the attention tensors are empty, [B, K, 0, 0],
        # and a scatter into an empty tensor fails: they are left as they are.
        merged = [put(f, p, active) for f, p in zip(full[:-1], part[:-1])]
        return (*merged, put(full[-1], part[-1], active) if return_attention else full[-1])

    def step(i, active, last, cache, context, live, done, sentence_done):
        encoder_output, source_mask = context
        n = tf.shape(active)[0]  # sentences decoded in this step
        live_ids, live_log_probs, live_attention = [take(x, active) for x in live]
        done_ids, done_scores, done_log_probs, done_attention = [take(x, active) for x in done]
        if use_cache:
            cache = grow_cache(cache, i, cache_chunk)
            logits, scores, cache = model.decode(
                last[:, None], encoder_output, source_mask, cache=cache, cache_index=i,
                return_attention_scores=True,
            )
        else:
            prefix = tf.concat([tf.fill([n * k, 1], start_id), tf.reshape(live_ids[:, :, :i], [n * k, -1])], 1)
            logits, scores = model.decode(prefix, encoder_output, source_mask, return_attention_scores=True)
            logits, scores = logits[:, -1:], [s[:, :, -1:] for s in scores]
        vocab = tf.shape(logits)[-1]
        log_probs = tf.nn.log_softmax(tf.reshape(logits, [n, k, vocab]))
        log_probs = never_generated(log_probs, start_id)
        own_limits = take(limits, active)
        if max_extra_length is not None:
            # At its last allowed step a sentence can only end.
            only_end = tf.one_hot(end_id, vocab, on_value=0.0, off_value=NEG_INF)
            log_probs = tf.where((i + 1 >= own_limits)[:, None, None], log_probs + only_end, log_probs)

        # Expand: the best 2K of all K x V continuations.
        candidates = tf.reshape(live_log_probs[:, :, None] + log_probs, [n, k * vocab])
        cand_log_probs, flat = tf.math.top_k(candidates, 2 * k)  # [n, 2K]
        beam, token = flat // vocab, flat % vocab
        place = tf.one_hot(i, max_length, dtype=tf.int32)  # [L], 1 at step i
        cand_ids = _gather_beams(live_ids, beam) + token[:, :, None] * place  # [n, 2K, L]
        cand_attention = _gather_beams(live_attention, beam)
        if return_attention:
            # Last decoder layer: [n * K, N, 1, S] -> [n, K, N, S] or, averaged
            # over heads, [n, K, S]; written into row i of [n, 2K, L, (N,) S].
            rows = tf.cast(scores[-1][:, :, 0, :], tf.float32)
            if not per_head:
                rows = tf.reduce_mean(rows, axis=1)
            rows = tf.reshape(rows, tf.concat([[n, k], tf.shape(rows)[1:]], 0))
            rows = _gather_beams(rows, beam)[:, :, None]
            row_place = tf.reshape(tf.cast(place, tf.float32), [1, 1, -1] + [1] * (len(attention_shape) - 1))
            cand_attention += rows * row_place
        ended = tf.equal(token, end_id)
        valid = cand_log_probs > NEG_INF / 2
        in_top_k = tf.range(2 * k) < k  # top_k sorts, so rank < K is the best K

        # Live: the best K candidates that did not end.
        live_key = tf.where(ended | ~valid, NEG_INF, cand_log_probs)
        live_log_probs, pick = tf.math.top_k(live_key, k)
        live_ids = _gather_beams(cand_ids, pick)
        live_attention = _gather_beams(cand_attention, pick)
        origin = _gather_beams(beam, pick)  # [n, K], each live beam's parent
        parents = origin + tf.range(n)[:, None] * k  # rows of the caches
        last = _gather_beams(token, pick)

        # Finished: merge the candidates that ended with the kept ones.
        finish = ended & valid & in_top_k[None]
        new_scores = tf.where(finish, cand_log_probs / length_penalty(i + 1, alpha), NEG_INF)
        all_scores = tf.concat([done_scores, new_scores], axis=1)
        done_scores, best = tf.math.top_k(all_scores, k)
        done_ids = _gather_beams(tf.concat([done_ids, cand_ids], axis=1), best)
        done_log_probs = _gather_beams(tf.concat([done_log_probs, tf.where(finish, cand_log_probs, NEG_INF)], 1), best)
        done_attention = _gather_beams(tf.concat([done_attention, cand_attention], axis=1), best)

        # A live hypothesis's score can rise to at most its log-probability
        # over the largest penalty its sentence can still reach (at its own
        # length limit); once that is below the worst kept finished score,
        # the sentence cannot improve: it is done.
        sentence_done = done_scores[:, -1] >= live_log_probs[:, 0] / length_penalty(own_limits, alpha)
        live = put_state(live, (live_ids, live_log_probs, live_attention), active)
        done = put_state(done, (done_ids, done_scores, done_log_probs, done_attention), active)
        if compact:
            keep = tf.where(~sentence_done)[:, 0]
            active, parents, last = tf.gather(active, keep), tf.gather(parents, keep), tf.gather(last, keep)
            sentence_done = tf.gather(sentence_done, keep)  # all False; empty once every sentence is done
            # Rows of per-sentence tensors change only when a sentence leaves.
            def drop_done_rows(tensors):
                kept_rows = tf.reshape(keep[:, None] * k + tf.range(k, dtype=keep.dtype), [-1])
                return tf.nest.map_structure(lambda x: tf.gather(x, kept_rows), tensors)

            per_sentence = (context, [c["cross_attention"] for c in cache])
            context, cross = tf.cond(tf.size(keep) < n, lambda: drop_done_rows(per_sentence), lambda: per_sentence)
            cache = [{**c, "cross_attention": x} for c, x in zip(cache, cross)]
        parents, last = tf.reshape(parents, [-1]), tf.reshape(last, [-1])
        cache = [{**c, "self_attention": tf.gather(c["self_attention"], parents)} for c in cache]
        return i + 1, active, last, cache, context, live, done, sentence_done

    def not_finished(i, active, last, cache, context, live, done, sentence_done):
        return (i < max_length) & ~tf.reduce_all(sentence_done)

    live = (live_ids, live_log_probs, live_attention)
    done = (done_ids, done_scores, done_log_probs, done_attention)
    context = (encoder_output, source_mask)
    state = (tf.constant(0), tf.range(batch), last, cache, context, live, done, tf.zeros([batch], tf.bool))
    shapes = tf.nest.map_structure(lambda t: t.shape, state)
    if compact:
        i, active, last, cache, context, live, done, sentence_done = shapes
        shapes = (i, relax(active, 0), relax(last, 0), *decoder_rows_shapes(cache, context), live, done, relax(sentence_done, 0))

    def same_shapes_step(*state):
        # Gathers by computed indices lose static batch sizes; keep them so
        # tf.while_loop sees loop variables of unchanged shape.
        return tf.nest.map_structure(tf.ensure_shape, step(*state), shapes)

    length, *_, live, done, _ = tf.while_loop(not_finished, same_shapes_step, state, shape_invariants=shapes)
    done_ids, done_scores, done_log_probs, done_attention = done
    live_ids, live_log_probs, live_attention = live
    # A sentence that finished nothing by max_length returns its live beams.
    none_done = (done_scores[:, 0] <= NEG_INF / 2)[:, None]
    outputs = {
        "ids": tf.where(none_done[:, :, None], live_ids, done_ids),
        "scores": tf.where(none_done, live_log_probs / length_penalty(length, alpha), done_scores),
        "log_probs": tf.where(none_done, live_log_probs, done_log_probs),
    }
    if return_attention:
        pick_live = tf.reshape(none_done, [batch, 1] + [1] * len(attention_shape))
        outputs["attention"] = tf.where(pick_live, live_attention, done_attention)
    return outputs
