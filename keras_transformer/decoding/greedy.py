"""Greedy decoding: the arg-max token at every step, on the shared decoding loop."""

from keras import ops

from keras_transformer.decoding.strategy import DecodingStrategy
from keras_transformer.decoding.strategy import decode
from keras_transformer.decoding.strategy import never_generated
from keras_transformer.text.tokens import END_ID
from keras_transformer.text.tokens import START_ID


class Greedy(DecodingStrategy):
    """One hypothesis per sentence, extended by its arg-max token.

    State: ids int32 [B, L] (0-padded after [END]) and done bool [B].
    """

    def __init__(self, start_id=START_ID, end_id=END_ID):
        self.start_id, self.end_id = start_id, end_id

    def initial_state(self, batch, max_length, source_length):
        return ops.zeros([batch, max_length], "int32"), ops.zeros([batch], "bool")

    def prefix(self, rows, i):
        return rows[0][:, :i]

    def step(self, i, logits, attention, rows, limits, at_limit):
        ids, done = rows
        token = ops.cast(ops.argmax(never_generated(logits[:, 0], self.start_id), axis=-1), "int32")  # [n]
        if at_limit is not None:
            token = ops.where(at_limit, self.end_id, token)
        token = ops.where(done, 0, token)  # a sentence that ended (kept in a fixed-shape batch) only pads
        done = done | ops.equal(token, self.end_id)
        column = ops.arange(ops.shape(ids)[1]) == i  # [L], True at step i
        ids = ops.where(column[None, :], token[:, None], ids)
        return token[:, None], None, (ids, done), done

    def finish(self, state, length):
        return state[0]


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
            `tf.function(jit_compile=True)`, and always on the JAX and
            PyTorch backends (where `max_length` must be a Python int, and
            the loop traces under `jax.jit`).

    Returns:
        int32 [B, max_length]: the generated ids after [START], ending with
        `end_id` and 0-padded after it.
    """
    return decode(
        model, source, max_length, Greedy(start_id, end_id), use_cache=use_cache,
        max_extra_length=max_extra_length, cache_chunk=cache_chunk,
    )
