"""Batched beam search with the GNMT length penalty, on the shared decoding loop."""

import numbers

from keras import ops

from keras_transformer.decoding.strategy import DecodingStrategy
from keras_transformer.decoding.strategy import decode
from keras_transformer.decoding.strategy import never_generated
from keras_transformer.layers import validation
from keras_transformer.text.tokens import END_ID
from keras_transformer.text.tokens import START_ID

NEG_INF = -1e9


def length_penalty(length, alpha):
    """GNMT's ((5 + length) / 6) ** alpha (Wu et al., 2016, section 7)."""
    return ops.power((5.0 + ops.cast(length, "float32")) / 6.0, alpha)


def _gather_beams(x, beam_index):
    """x [B, K, ...], beam_index [B, M] -> [B, M, ...]: one gather of the
    rows of x flattened to [B * K, ...]."""
    batch, k, *rest = ops.shape(x)
    rows = ops.reshape(beam_index + ops.arange(batch)[:, None] * k, [-1])
    picked = ops.take(ops.reshape(x, [batch * k, *rest]), rows, axis=0)  # (no -1: sizes may be 0)
    return ops.reshape(picked, [batch, ops.shape(beam_index)[1], *rest])


class BeamSearch(DecodingStrategy):
    """K live and K finished hypotheses per sentence (see `beam_search`).

    State, per sentence: `live`, a dict of ids [B, K, L] and log-probabilities
    [B, K]; `done`, the finished hypotheses: ids, scores and log-probabilities
    of the same shapes (NEG_INF scores mark empty slots). With `attention`
    ("mean" or "heads"), each also holds the hypotheses' cross-attention
    rows [B, K, L, S], or [B, K, L, num_heads, S].
    """

    def __init__(self, beam_size, alpha, start_id=START_ID, end_id=END_ID, attention=None, num_heads=None,
                 beam_sizes=None):
        if isinstance(beam_size, numbers.Number):
            beam_size = validation.check_positive_int("beam_size", beam_size)
        self.width = beam_size
        if attention not in (None, "mean", "heads"):
            raise ValueError(f"`attention` must be None, 'mean' or 'heads'. Received: attention={attention!r}")
        if attention == "heads":
            num_heads = validation.check_positive_int("num_heads", num_heads)
        self.alpha = alpha
        self.beam_sizes = beam_sizes
        self.start_id, self.end_id = start_id, end_id
        self.attention = attention
        self.num_heads = num_heads

    def initial_state(self, batch, max_length, source_length):
        k = self.width
        # Each sentence's own settings: its length-penalty exponent and, when they differ, its beam size (<= K).
        settings = {}
        if not isinstance(self.alpha, numbers.Number):  # a tensor: per sentence, or one for all
            settings["alpha"] = ops.broadcast_to(ops.convert_to_tensor(self.alpha, "float32"), [batch])
        if self.beam_sizes is not None:
            settings["beams"] = ops.broadcast_to(ops.convert_to_tensor(self.beam_sizes, "int32"), [batch])
        # Only beam 0 is live at the start.
        first = ops.arange(k) == 0
        live_log_probs = ops.where(first[None, :], 0.0, ops.full([batch, k], NEG_INF, "float32"))
        live = {"ids": ops.zeros([batch, k, max_length], "int32"), "log_probs": live_log_probs}
        done = {
            "ids": ops.zeros([batch, k, max_length], "int32"), "scores": ops.full([batch, k], NEG_INF, "float32"),
            "log_probs": ops.full([batch, k], NEG_INF, "float32"),
        }
        if self.attention is not None:
            heads = [self.num_heads] if self.attention == "heads" else []
            live["attention"] = ops.zeros([batch, k, max_length, *heads, source_length], "float32")
            done["attention"] = ops.zeros([batch, k, max_length, *heads, source_length], "float32")
        return live, done, settings

    def prefix(self, rows, i):
        live_ids = rows[0]["ids"]  # [n, K, L]
        return ops.reshape(live_ids[:, :, :i], [ops.shape(live_ids)[0] * self.width, i])

    def step(self, i, logits, attention, rows, limits, at_limit):
        live, done, settings = rows
        n, k = ops.shape(logits)[0], self.width
        # The length-penalty exponent: [n] and [n, 1] per sentence, or a number for all.
        sentence_alpha = settings.get("alpha", self.alpha)
        alpha = sentence_alpha[:, None] if "alpha" in settings else sentence_alpha
        # [n, 1]: each sentence's beam size, whose slots past it stay empty; or K for every sentence.
        beams = settings["beams"][:, None] if "beams" in settings else None
        vocab, max_length = ops.shape(logits)[-1], ops.shape(live["ids"])[-1]
        log_probs = never_generated(ops.log_softmax(logits, axis=-1), self.start_id)
        if at_limit is not None:
            # At its last allowed step a sentence can only end.
            only_end = ops.where(ops.arange(vocab) == self.end_id, 0.0, NEG_INF)
            log_probs = ops.where(at_limit[:, None, None], log_probs + only_end, log_probs)

        # Expand: the best 2K of all K x V continuations.
        candidates = ops.reshape(live["log_probs"][:, :, None] + log_probs, [n, k * vocab])
        cand_log_probs, flat = ops.top_k(candidates, 2 * k)  # [n, 2K]
        flat = ops.cast(flat, "int32")
        beam, token = flat // vocab, flat % vocab
        place = ops.cast(ops.arange(max_length) == i, "int32")  # [L], 1 at step i
        cand = {"ids": _gather_beams(live["ids"], beam) + token[:, :, None] * place}  # [n, 2K, L]
        if self.attention is not None:
            # This step's rows [n, K, (N,) S], written into row i of [n, 2K, L, (N,) S].
            step_rows = _gather_beams(attention, beam)[:, :, None]
            cand_attention = _gather_beams(live["attention"], beam)
            extra_dims = len(cand_attention.shape) - 3
            row_place = ops.reshape(ops.cast(place, "float32"), [1, 1, -1] + [1] * extra_dims)
            cand["attention"] = cand_attention + step_rows * row_place
        ended = ops.equal(token, self.end_id)
        valid = cand_log_probs > NEG_INF / 2
        in_top_k = ops.arange(2 * k)[None, :] < (k if beams is None else beams)  # top_k sorts: rank < K, the best K

        # Live: the best K candidates that did not end.
        live_key = ops.where(ended | ~valid, NEG_INF, cand_log_probs)
        live_log_probs, pick = ops.top_k(live_key, k)
        if beams is not None:
            live_log_probs = ops.where(ops.arange(k)[None, :] < beams, live_log_probs, NEG_INF)
        pick = ops.cast(pick, "int32")
        new_live = {key: _gather_beams(value, pick) for key, value in cand.items()}
        new_live["log_probs"] = live_log_probs
        parents = _gather_beams(beam, pick)  # [n, K], each live beam's parent
        last = _gather_beams(token, pick)

        # Finished: merge the candidates that ended with the kept ones.
        finish = ended & valid & in_top_k
        ended_cand = {
            **cand,
            "scores": ops.where(finish, cand_log_probs / length_penalty(i + 1, alpha), NEG_INF),
            "log_probs": ops.where(finish, cand_log_probs, NEG_INF),
        }
        _, best = ops.top_k(ops.concatenate([done["scores"], ended_cand["scores"]], axis=1), k)
        best = ops.cast(best, "int32")
        new_done = {key: _gather_beams(ops.concatenate([done[key], ended_cand[key]], axis=1), best) for key in done}
        if beams is not None:  # a sentence keeps its own beam size of finished hypotheses
            for key in ("scores", "log_probs"):
                new_done[key] = ops.where(ops.arange(k)[None, :] < beams, new_done[key], NEG_INF)

        # A live hypothesis's score can rise to at most its log-probability
        # over the largest penalty its sentence can still reach (at its own
        # length limit); once that is below the worst kept finished score,
        # the sentence cannot improve: it is done.
        if beams is None:
            worst_kept = new_done["scores"][:, -1]
        else:
            worst_kept = ops.take_along_axis(new_done["scores"], beams - 1, axis=1)[:, 0]
        sentence_done = worst_kept >= live_log_probs[:, 0] / length_penalty(limits, sentence_alpha)
        return last, parents, (new_live, new_done, settings), sentence_done

    def finish(self, state, length):
        live, done, settings = state
        alpha = settings["alpha"][:, None] if "alpha" in settings else self.alpha
        # A sentence that finished nothing by max_length returns its live beams.
        none_done = done["scores"][:, 0] <= NEG_INF / 2  # [B]

        def pick(live_value, done_value):
            where = ops.reshape(none_done, [-1] + [1] * (len(live_value.shape) - 1))
            return ops.where(where, live_value, done_value)

        outputs = {
            "ids": pick(live["ids"], done["ids"]),
            "scores": pick(live["log_probs"] / length_penalty(length, alpha), done["scores"]),
            "log_probs": pick(live["log_probs"], done["log_probs"]),
        }
        if self.attention is not None:
            outputs["attention"] = pick(live["attention"], done["attention"])
        return outputs


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
            `tf.function(jit_compile=True)`, and always on the JAX and
            PyTorch backends (where `max_length` must be a Python int, and
            the loop traces under `jax.jit`).

    Returns:
        A dict, best hypothesis first along axis 1:
        "ids": int32 [B, K, max_length], ending in `end_id`, 0-padded;
        "scores": float32 [B, K], length-penalized scores;
        "log_probs": float32 [B, K], the sum of token log-probabilities;
        "attention" (with `return_attention`): float32 [B, K, max_length, S],
        or [B, K, max_length, num_heads, S] with "heads"; row t is the
        attention of the step that generated token t.
    """
    if return_attention not in (False, True, "mean", "heads"):
        raise ValueError(
            f"`return_attention` must be False, True, 'mean' or 'heads'. Received: {return_attention!r}"
        )
    attention = None if not return_attention else ("heads" if return_attention == "heads" else "mean")
    num_heads = model.num_heads if attention == "heads" else None
    strategy = BeamSearch(beam_size, alpha, start_id, end_id, attention=attention, num_heads=num_heads)
    return decode(
        model, source, max_length, strategy, use_cache=use_cache, max_extra_length=max_extra_length,
        cache_chunk=cache_chunk,
    )
