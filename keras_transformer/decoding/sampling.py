"""Sampling: tokens drawn from the model's distribution, with temperature,
top-k and top-p (nucleus) filtering, reproducible from a seed.

`sample_tokens` picks one token per row of logits; it is all a decoding loop
needs, so the decoder-only language model of examples/language_model.py uses
it too. `sample` runs it over a `Transformer` on the shared decoding loop,
K samples per sentence.

The randomness is counter-based: the Gumbel noise of token v in sample k at
step i is a hash of (seed, k, i, v), not a draw from a random state; `sample`
also hashes in the sentence's own source ids, so sentences sharing a seed
draw independent noise. A sample depends only on its seed, its source and
the logits: not on the batch it ran in, its row there, the padding, the
backend (TensorFlow and JAX draw the same samples), or the rows a decoding
loop has dropped because they were done.
"""

import numbers

import keras
import numpy as np
from keras import ops

from keras_transformer.decoding.strategy import DecodingStrategy
from keras_transformer.decoding.strategy import decode
from keras_transformer.layers import validation
from keras_transformer.text.tokens import END_ID
from keras_transformer.text.tokens import PAD_ID
from keras_transformer.text.tokens import START_ID

NEG_INF = -1e9
# Above it every token is about equally likely (logits 20 apart differ by 0.2 %); far above, the
# noise times the temperature overflows float32.
MAX_TEMPERATURE = 1e4

_MASK32 = 0xFFFFFFFF


def _u32(value):
    return ops.convert_to_tensor(np.uint32(value), "uint32")


def _mix(x):
    """A bijective avalanche hash of uint32 values (xor-shift-multiply rounds)."""
    x = ops.bitwise_xor(x, ops.right_shift(x, _u32(16)))
    x = ops.multiply(x, _u32(0x7FEB352D))
    x = ops.bitwise_xor(x, ops.right_shift(x, _u32(15)))
    x = ops.multiply(x, _u32(0x846CA68B))
    return ops.bitwise_xor(x, ops.right_shift(x, _u32(16)))


def _seed_words(seed):
    """An integer seed -> (low, high) uint32 words of its 64-bit value. An
    int32 seed is sign-extended, so 5 and -5 read alike as int32 and int64;
    Python and NumPy integers are split in NumPy, so a seed past 32 bits keeps
    its high word on JAX too (whose tensors are 32-bit)."""
    if isinstance(seed, (numbers.Integral, np.integer)) or (
            isinstance(seed, np.ndarray) and seed.dtype.kind in "iu"):
        words = np.asarray(seed).astype(np.int64).astype(np.uint64)
        low = (words & np.uint64(_MASK32)).astype(np.uint32)
        high = (words >> np.uint64(32)).astype(np.uint32)
        return ops.convert_to_tensor(low, "uint32"), ops.convert_to_tensor(high, "uint32")
    seed = ops.convert_to_tensor(seed)
    if seed.dtype in ("int64", "uint64"):
        low = ops.cast(ops.bitwise_and(seed, _MASK32), "uint32")
        high = ops.cast(ops.bitwise_and(ops.right_shift(seed, 32), _MASK32), "uint32")
        return low, high
    seed = ops.cast(seed, "int32")
    return ops.cast(seed, "uint32"), ops.where(seed < 0, _u32(_MASK32), _u32(0))


def source_key(source):
    """uint32 [B]: a hash of each row's non-padding ids and their positions,
    so padding a row (or trimming it) leaves its key unchanged.

    The per-token hashes are added up in 16-bit halves (int32 sums that
    cannot overflow below 32,768 tokens), the same on every backend.
    """
    source = ops.convert_to_tensor(source, "int32")
    positions = ops.cast(ops.arange(ops.shape(source)[1], dtype="int32"), "uint32")[None, :]
    token = _mix(ops.bitwise_xor(_mix(ops.cast(source, "uint32")), _mix(ops.add(positions, _u32(0x85EBCA6B)))))
    token = ops.where(source != 0, token, _u32(0))  # [B, S]
    low = ops.sum(ops.cast(ops.bitwise_and(token, _u32(0xFFFF)), "int32"), axis=1)
    high = ops.sum(ops.cast(ops.right_shift(token, _u32(16)), "int32"), axis=1)
    return _mix(ops.bitwise_xor(_mix(ops.cast(low, "uint32")), ops.cast(high, "uint32")))


def uniform_noise(seed, sample, step, vocab_size, salt=None):
    """float32 [..., V] strictly inside (0, 1): the noise of every token of
    the vocabulary, a hash of (seed, salt, sample, step, token).

    Args:
        seed: integer, broadcastable with `sample` and `step` to [...].
        sample: int, the sample's index among those of one sentence.
        step: int, the position of the token drawn.
        vocab_size: V.
        salt: None, or uint32 broadcastable to [...] (`sample` uses each
            sentence's `source_key`).
    """
    low, high = _seed_words(seed)
    key = _mix(ops.add(low, _u32(0x9E3779B9)))
    key = _mix(ops.bitwise_xor(key, high))
    if salt is not None:
        key = _mix(ops.bitwise_xor(key, ops.convert_to_tensor(salt, "uint32")))
    key = _mix(ops.bitwise_xor(key, ops.cast(sample, "uint32")))
    key = _mix(ops.bitwise_xor(key, ops.cast(step, "uint32")))  # [...]
    tokens = _mix(ops.add(ops.cast(ops.arange(vocab_size, dtype="int32"), "uint32"), _u32(0x632BE5AB)))  # [V]
    bits = _mix(ops.bitwise_xor(ops.expand_dims(key, -1), tokens))  # [..., V]
    # The top 23 bits, centred in their interval: exact in float32, from 2**-24 to 1 - 2**-24,
    # never 0 or 1. (With 24 bits the largest value rounded to 1.0, and its Gumbel noise was inf.)
    return (ops.cast(ops.right_shift(bits, _u32(9)), "float32") + 0.5) * (2.0 ** -23)


def _is_python_number(value):
    return isinstance(value, (numbers.Number, np.generic))


def _is_static(value, neutral):
    return _is_python_number(value) and value == neutral


def filter_mask(log_probs, top_k=0, top_p=1.0, width=None):
    """bool [..., V]: the tokens that survive top-k, then top-p filtering.

    Top-k keeps the `top_k` most likely tokens (0: all). Top-p then keeps the
    fewest most likely of those whose probability, renormalized over them,
    adds up to at least `top_p` (1: all). Tokens tied with the last one kept
    are kept too. The most likely token always survives.

    Args:
        log_probs: float [..., V], the distribution to filter (with the
            temperature already applied).
        top_k: int, broadcastable to [...]; 0 turns it off.
        top_p: float in (0, 1], broadcastable to [...]; 1 turns it off.
        width: int (or a scalar int tensor on TensorFlow): how many of the
            most likely tokens the filters look at, at least every row's
            top_k (a row without one needs V). Default None: V, a full sort.
    """
    vocab = ops.shape(log_probs)[-1]
    top_k = ops.expand_dims(ops.convert_to_tensor(top_k, "int32"), -1)  # [..., 1]
    top_p = ops.expand_dims(ops.convert_to_tensor(top_p, "float32"), -1)
    if width is None:
        ordered = ops.flip(ops.sort(log_probs, axis=-1), axis=-1)  # [..., V], most likely first
        width = vocab
    else:
        ordered, _ = ops.top_k(log_probs, width)  # [..., width]: the rest is past every row's top_k
    rank = ops.arange(width, dtype="int32")
    in_top_k = (top_k <= 0) | (rank < top_k)
    ordered = ops.where(in_top_k, ordered, -np.inf)
    probs = ops.softmax(ordered, axis=-1)  # renormalized over the top k
    before = ops.cumsum(probs, axis=-1) - probs  # probability of the more likely tokens
    kept = in_top_k & ((top_p >= 1.0) | (before < top_p) | (rank == 0))
    # The least likely value kept, and every token at least as likely.
    threshold = ops.min(ops.where(kept, ordered, np.inf), axis=-1, keepdims=True)
    return log_probs >= threshold


def _filter_width(top_k, vocab):
    """How many of the most likely tokens the filters must see: every row's
    top_k when each has one, else None (all V, a full sort). A top_k known
    only in the graph narrows it on TensorFlow outside XLA, where `top_k`
    takes a size computed at run time."""
    if not isinstance(vocab, int):  # unknown until the graph runs: sort it all
        return None
    if _is_python_number(top_k):
        return min(int(top_k), vocab) if top_k > 0 else None
    if keras.backend.backend() != "tensorflow":
        return None
    from keras_transformer.decoding.loop import _tracing_for_xla

    if _tracing_for_xla():
        return None
    top_k = ops.convert_to_tensor(top_k, "int32")
    return ops.where(ops.all(top_k > 0), ops.minimum(ops.max(top_k), vocab), vocab)


def sample_tokens(logits, seed, step, temperature=1.0, top_k=0, top_p=1.0, sample=0, mask=None, salt=None):
    """One token per row of `logits`, drawn from softmax(logits / temperature)
    after top-k and top-p filtering; the arg-max where `temperature` is 0.

    The draw is the Gumbel-max trick with counter-based noise
    (`uniform_noise`): it depends only on (seed, salt, sample, step) and the
    row's logits, so equal inputs give equal tokens on every backend.

    Args:
        logits: float [..., V].
        seed: integer broadcastable to [...]: each row's seed.
        step: int, broadcastable to [...]: the position of the token drawn.
        temperature: float >= 0, broadcastable to [...]. Default 1.
        top_k: int >= 0, broadcastable to [...]; 0 (default) keeps all.
        top_p: float in (0, 1], broadcastable to [...]; 1 (default) keeps all.
        sample: int, broadcastable to [...]: which of a sentence's samples
            this is (each draws its own noise). Default 0.
        mask: bool [..., V], the tokens that may be drawn (default: all);
            the others are impossible and the rest renormalized.
        salt: None, or uint32 broadcastable to [...]: more of the noise's key
            (`sample` passes each sentence's `source_key`).

    Returns:
        int32 [...].

    Example:

    >>> import numpy as np
    >>> logits = np.log(np.array([[0.1, 0.6, 0.3]], "float32"))
    >>> int(sample_tokens(logits, seed=7, step=0, temperature=0.0)[0])
    1
    >>> int(sample_tokens(logits, seed=7, step=0, top_k=1)[0])
    1
    """
    logits = ops.cast(ops.convert_to_tensor(logits), "float32")
    if mask is not None:
        logits = ops.where(mask, logits, NEG_INF)
    if _is_static(temperature, 0):  # greedy: neither filters nor noise change the arg-max
        return ops.cast(ops.argmax(logits, axis=-1), "int32")
    temperature = ops.expand_dims(ops.convert_to_tensor(temperature, "float32"), -1)  # [..., 1]
    candidates = logits
    if not (_is_static(top_k, 0) and _is_static(top_p, 1.0)):
        # The filters read the tempered distribution (a 0 temperature keeps only the arg-max anyway).
        tempered = ops.log_softmax(logits, axis=-1) / ops.maximum(temperature, 1e-6)
        needed = ops.any(ops.convert_to_tensor(top_k) > 0) | ops.any(ops.convert_to_tensor(top_p) < 1.0)
        width = _filter_width(top_k, ops.shape(logits)[-1])
        kept = ops.cond(needed, lambda: filter_mask(tempered, top_k, top_p, width),
                        lambda: ops.ones_like(tempered, "bool"))
        candidates = ops.where(kept, candidates, -np.inf)
    if mask is not None:
        candidates = ops.where(mask, candidates, -np.inf)
    # [..., V], or [V] when every row shares seed, salt, sample and step (the noise is theirs).
    noise = uniform_noise(seed, sample, step, ops.shape(logits)[-1], salt)
    gumbel = -ops.log(-ops.log(noise))  # finite: the noise is strictly inside (0, 1)
    # argmax(logits / T + g) == argmax(logits + T g): no division, and T = 0 is the arg-max of the logits.
    perturbed = ops.where(candidates > -np.inf, candidates + temperature * gumbel, -np.inf)
    return ops.cast(ops.argmax(perturbed, axis=-1), "int32")


class Sampling(DecodingStrategy):
    """K samples per sentence, each drawn token by token (see `sample`).

    State, per sentence: ids int32 [B, K, L], log_probs float32 [B, K] (the
    model's log-probability of each sample so far), done bool [B, K], the
    noise key uint32 [B] (a hash of the sentence's seed and `salt`), and the
    settings given as tensors, [B] each (those given as Python numbers are
    the same for every sentence, and known when the loop is traced).

    Args:
        num_samples: K, an int (or a scalar int tensor on TensorFlow).
        temperature, top_k, top_p, seed: scalars, or [B] tensors (one per
            sentence).
        counts: None, or int [B]: sentence b draws counts[b] <= K samples,
            the others stay empty (log-probability NEG_INF, sorted last).
        salt: None, or uint32 [B] hashed into each sentence's noise
            (`sample` gives `source_key(source)`).
    """

    def __init__(self, num_samples, temperature=1.0, top_k=0, top_p=1.0, seed=0, counts=None,
                 start_id=START_ID, end_id=END_ID, salt=None):
        if isinstance(num_samples, numbers.Number):
            num_samples = validation.check_positive_int("num_samples", num_samples)
        self.width = num_samples
        self.temperature, self.top_k, self.top_p, self.seed = temperature, top_k, top_p, seed
        self.counts, self.salt = counts, salt
        self.start_id, self.end_id = start_id, end_id

    _SETTINGS = {"temperature": "float32", "top_k": "int32", "top_p": "float32"}

    def initial_state(self, batch, max_length, source_length):
        k = self.width

        def per_sentence(value, dtype=None):
            value = ops.convert_to_tensor(value, dtype)
            return ops.broadcast_to(value, [batch])

        counts = per_sentence(k if self.counts is None else self.counts, "int32")
        active = ops.arange(k, dtype="int32")[None, :] < counts[:, None]  # [B, K]
        # Settings given as tensors travel with their sentences; Python numbers stay static
        # (a temperature of 0 then draws no noise).
        settings = {
            name: per_sentence(getattr(self, name), dtype)
            for name, dtype in self._SETTINGS.items() if not _is_python_number(getattr(self, name))
        }
        low, high = _seed_words(self.seed)  # split before any 32-bit tensor could cut it
        key = _mix(ops.bitwise_xor(_mix(ops.add(low, _u32(0x9E3779B9))), high))
        if self.salt is not None:
            key = _mix(ops.bitwise_xor(key, ops.convert_to_tensor(self.salt, "uint32")))
        settings["key"] = per_sentence(key, "uint32")
        return {
            "ids": ops.zeros([batch, k, max_length], "int32"),
            "log_probs": ops.where(active, 0.0, ops.full([batch, k], NEG_INF, "float32")),
            "done": ~active,
            "settings": settings,
        }

    def prefix(self, rows, i):
        ids = rows["ids"]
        return ops.reshape(ids[:, :, :i], [ops.shape(ids)[0] * ops.shape(ids)[1], i])

    def step(self, i, logits, attention, rows, limits, at_limit):
        settings = rows["settings"]
        vocab = ops.shape(logits)[-1]
        ids = ops.arange(vocab, dtype="int32")
        allowed = (ids != PAD_ID) & (ids != self.start_id)  # [V]
        if at_limit is None:
            mask = ops.broadcast_to(allowed, ops.shape(logits))
        else:  # at a sentence's last allowed step only [END] may come
            mask = ops.where(at_limit[:, None, None], (ids == self.end_id)[None, None, :], allowed[None, None, :])
            mask = ops.broadcast_to(mask, ops.shape(logits))
        # [n, 1]: one value per sentence, or a Python number for all.
        value = {name: ops.expand_dims(settings[name], -1) if name in settings else getattr(self, name)
                 for name in self._SETTINGS}
        token = sample_tokens(
            logits, 0, i, value["temperature"], value["top_k"], value["top_p"],
            sample=ops.arange(ops.shape(logits)[1], dtype="int32")[None, :], mask=mask,
            salt=ops.expand_dims(settings["key"], -1),
        )  # [n, K]
        done = rows["done"]
        token = ops.where(done, 0, token)  # a finished or unused sample only pads
        log_probs = ops.log_softmax(ops.cast(logits, "float32"), axis=-1)
        gained = ops.take_along_axis(log_probs, ops.expand_dims(token, -1), axis=-1)[..., 0]
        new_rows = {
            "ids": ops.where((ops.arange(ops.shape(rows["ids"])[-1]) == i)[None, None, :], token[..., None],
                             rows["ids"]),
            "log_probs": rows["log_probs"] + ops.where(done, 0.0, gained),
            "done": done | (token == self.end_id),
            "settings": settings,
        }
        return token, None, new_rows, ops.all(new_rows["done"], axis=1)

    def finish(self, state, length):
        # Most likely first (unused samples, at NEG_INF, last).
        log_probs, order = ops.top_k(state["log_probs"], ops.shape(state["log_probs"])[1])
        ids = ops.take_along_axis(state["ids"], ops.expand_dims(ops.cast(order, "int32"), -1), axis=1)
        return {"ids": ids, "log_probs": log_probs}


def sample(
    model, source, max_length, num_samples=1, temperature=1.0, top_k=0, top_p=1.0, seed=0,
    start_id=START_ID, end_id=END_ID, use_cache=True, max_extra_length=None, cache_chunk=16,
):
    """Draws `num_samples` translations of each source sentence from a `Transformer`.

    Each sample is drawn token by token from the model's distribution at
    `temperature`, after top-k and top-p filtering (`sample_tokens`), until
    [END]. Samples are independent: sample k of a sentence draws its own
    noise, from (seed, the sentence's source ids, k, step, token), so
    sentences sharing a seed draw independently too. The same source, seed
    and settings give the same samples, whatever batch the sentence is in
    and on every backend; a `temperature` of 0 is greedy decoding.

    Args:
        model: a `Transformer`.
        source: int [B, S] source ids, 0-padded.
        max_length: the most tokens to generate (as in `greedy_decode`).
        num_samples: int, samples per sentence (K). Default 1.
        temperature: float >= 0, or float [B]. Default 1.
        top_k: int >= 0 (0: off), or int [B]. Default 0.
        top_p: float in (0, 1] (1: off), or float [B]. Default 1.
        seed: int, or int [B] (each sentence's own), 64 bits on every
            backend when given as Python or NumPy integers. Default 0.
        start_id, end_id: int, the [START] and [END] ids.
        use_cache, max_extra_length, cache_chunk: as in `greedy_decode`.

    Returns:
        A dict, the most likely sample first along axis 1:
        "ids": int32 [B, K, max_length], ending in `end_id`, 0-padded;
        "log_probs": float32 [B, K], each sample's log-probability under the
        model (temperature 1, unfiltered), as `beam_search` reports it.
    """
    _check_sampling_args(temperature, top_k, top_p)
    strategy = Sampling(num_samples, temperature, top_k, top_p, seed, start_id=start_id, end_id=end_id,
                        salt=source_key(source))
    return decode(model, source, max_length, strategy, use_cache=use_cache, max_extra_length=max_extra_length,
                  cache_chunk=cache_chunk)


def _check_sampling_args(temperature, top_k, top_p):
    """Refuses Python numbers out of range (tensors are the caller's to check)."""
    if isinstance(temperature, numbers.Real) and not 0 <= temperature <= MAX_TEMPERATURE:  # (NaN fails too)
        raise ValueError(f"`temperature` must be between 0 and {MAX_TEMPERATURE:g}. Received: "
                         f"temperature={temperature!r}")
    if isinstance(top_k, numbers.Number):
        validation.check_int_at_least("top_k", top_k, 0, " (0 keeps every token)")
    if isinstance(top_p, numbers.Real) and not 0 < top_p <= 1:
        raise ValueError(f"`top_p` must be in (0, 1] (1 keeps every token). Received: top_p={top_p!r}")

