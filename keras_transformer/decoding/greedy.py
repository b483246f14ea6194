"""Greedy decoding with a key/value cache, inside one `tf.while_loop`."""

import tensorflow as tf

from keras_transformer.data.tokenizer import WordPieceTokenizer

START_ID, END_ID = WordPieceTokenizer.start_id, WordPieceTokenizer.end_id


def greedy_decode(model, source, max_length, start_id=START_ID, end_id=END_ID):
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

    Returns:
        int32 [B, max_length]: the generated ids after [START], ending with
        `end_id` and 0-padded after it.
    """
    source = tf.convert_to_tensor(source)
    batch = tf.shape(source)[0]
    encoder_output, source_mask = model.encode(source)
    cache = model.init_cache(encoder_output, max_length)
    tokens = tf.zeros([max_length, batch], tf.int32)

    def step(i, token, cache, tokens, done):
        logits, cache = model.decode(
            token[:, None], encoder_output, source_mask, cache=cache, cache_index=i
        )
        token = tf.argmax(logits[:, -1], axis=-1, output_type=tf.int32)
        token = tf.where(done, 0, token)
        done = done | tf.equal(token, end_id)
        return i + 1, token, cache, tf.tensor_scatter_nd_update(tokens, [[i]], token[None]), done

    def not_finished(i, token, cache, tokens, done):
        return (i < max_length) & ~tf.reduce_all(done)

    start = tf.fill([batch], tf.constant(start_id, tf.int32))
    done = tf.zeros([batch], tf.bool)
    _, _, _, tokens, _ = tf.while_loop(
        not_finished, step, (tf.constant(0), start, cache, tokens, done)
    )
    return tf.transpose(tokens)  # [B, max_length]
