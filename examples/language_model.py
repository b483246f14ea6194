"""A decoder-only Transformer language model in the Llama line, trained on
Multi30k English captions, that generates text with a key/value cache.

    python examples/language_model.py                 # about 1-2 minutes on 2 CPU cores

`keras_transformer.models.CausalLM`: rotary position embeddings,
grouped-query attention (4 query heads share 2 key/value heads, so the cache
is half the size), pre-norm RMSNorm blocks and SwiGLU feed-forward networks:

    ids [B, T] -> TokenEmbedding -> EncoderLayer(use_causal_mask=True, position_embedding="rotary",
        num_key_value_heads=2, norm="rms", feed_forward="swiglu") x N -> RMSNorm
        -> the embedding matrix again, transposed -> logits [B, T, V]

Generation runs one token per step inside a `tf.while_loop`: the prompt fills
pre-allocated per-layer caches [B, 2, K, L, H] in one pass, then each step
feeds only the newest token (`CausalLM.call_with_cache`). The script checks
that this gives, token for token, the same greedy output as re-running the
whole model over the whole prefix at every step, and prints the validation
perplexity.
"""

import argparse
import math
import os
import sys
import time
from typing import List, Sequence

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import keras_transformer as kt  # noqa: E402
from keras_transformer.data import WordPieceTokenizer  # noqa: E402
from keras_transformer.data import read_lines  # noqa: E402
from keras_transformer.decoding import sample_tokens  # noqa: E402
from keras_transformer.text import add_start_end  # noqa: E402

PAD_ID, START_ID, END_ID = WordPieceTokenizer.pad_id, WordPieceTokenizer.start_id, WordPieceTokenizer.end_id
DEFAULT_DATA_DIR = os.path.join(ROOT, "..", "shared", "data", "multi30k")
PROMPTS = ["a man", "two dogs", "a little girl in a pink", "people are"]


def make_dataset(
    tokenizer: WordPieceTokenizer, texts: Sequence[str], batch_size: int, max_length: int,
    shuffle: bool, seed: int = 0,
) -> tf.data.Dataset:
    """Batches of next-token pairs: inputs `[START] w1 .. wn` and targets
    `w1 .. wn [END]`, int32 [B, T] each, 0-padded, at most `max_length`."""
    ids = tokenizer.tokenize(list(texts))[:, : max_length - 1]
    batch = ids.nrows()
    inputs = tf.concat([tf.fill([batch, 1], START_ID), ids], axis=1)
    targets = tf.concat([ids, tf.fill([batch, 1], END_ID)], axis=1)
    dataset = tf.data.Dataset.from_tensor_slices((inputs, targets))
    if shuffle:
        dataset = dataset.shuffle(len(texts), seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.ragged_batch(batch_size).map(lambda x, y: (x.to_tensor(), y.to_tensor()))
    return dataset.prefetch(tf.data.AUTOTUNE)


def build_language_model(
    vocab_size: int,
    num_layers: int = 2,
    d_model: int = 128,
    num_heads: int = 4,
    d_ff: int = 256,
    dropout: float = 0.1,
    max_length: int = 64,
    num_key_value_heads: int = 2,
) -> kt.CausalLM:
    """Int ids [B, T] (0 = padding) -> next-token logits [B, T, vocab_size].

    A Llama-style `CausalLM` (rotary embeddings, grouped-query attention,
    RMSNorm, SwiGLU, no biases); the output projection is the transposed
    embedding matrix.
    """
    model = kt.CausalLM(
        vocab_size, num_layers=num_layers, d_model=d_model, num_heads=num_heads, d_ff=d_ff,
        num_key_value_heads=num_key_value_heads, dropout=dropout, max_length=max_length, name="language_model",
    )
    model.build()
    return model


def init_cache(model: kt.CausalLM, batch_size, max_length) -> List[tf.Tensor]:
    """Empty per-layer self-attention caches [B, 2, K, max_length, H]."""
    return model.init_cache(batch_size, max_length)


def decode_step(model: kt.CausalLM, ids, cache, cache_index, positions=None, slots=None):
    """Ids [B, T] written at cache slots `[cache_index, cache_index + T)` ->
    (logits [B, T, V], updated cache): the model's forward pass, one layer at
    a time, attending to the cached keys and values of every earlier slot.

    `positions` (int [B]) is each row's position of its first id when rows
    are at different positions (default: `cache_index` for every row);
    `slots` (bool [B, L]) marks the cache slots that hold real tokens, so
    padding in the cache is never attended to (default: every slot).
    """
    if positions is not None:
        steps = tf.range(tf.shape(ids)[1], dtype=tf.int32)
        positions = tf.cast(positions, tf.int32)[:, None] + steps[None, :]  # [B, T]
    attention_mask = None if slots is None else slots[:, None, :]  # [B, 1, L]
    return model.call_with_cache(ids, cache, cache_index, positions=positions, attention_mask=attention_mask)


def _next_token(logits, temperature=0.0, seed=0, step=0, top_k=0, top_p=1.0):
    """Logits [B, V] -> int32 [B]: the arg-max when `temperature` is 0, else a
    sample (`keras_transformer.decoding.sample_tokens`: top-k, then top-p,
    reproducible from each row's seed and the step); [PAD] and [START] are
    never chosen."""
    ids = tf.range(tf.shape(logits)[-1])
    allowed = tf.broadcast_to((ids != PAD_ID) & (ids != START_ID), tf.shape(logits))
    return sample_tokens(logits, seed, step, temperature, top_k, top_p, mask=allowed)


def generate(model: keras.Model, prompt, max_length: int, temperature: float = 0.0, seed=0, top_k=0, top_p=1.0):
    """Continues each prompt until [END] or `max_length` tokens, with the cache.

    Prompts of unequal length come right-padded with 0s. All prompts fill
    cache slots `[0, P)` in one pass, the padded slots masked out for good;
    then step s writes every row's next token to slot P + s at the row's own
    position (its prompt length + s), so each row is continued exactly as it
    would be alone.

    Args:
        model: a `CausalLM` (from `build_language_model`).
        prompt: int32 [B, P] ids, each row starting with [START], then
            0s (padding) only at the end.
        max_length: int, total length (prompt included); at most the
            model's positional-encoding length.
        temperature: float, 0 for greedy decoding, else the sampling
            temperature. Default 0.
        seed: int, or int [B] (each row's own): the sampling seed. The same
            prompt and seed give the same continuation, in any batch.
        top_k: int, sample from the k most likely tokens (0: all).
        top_p: float, sample from the most likely tokens whose probability
            adds up to this (1: all).

    Returns:
        int32 [B, max_length]: each prompt without its padding, the
        generated ids up to and with [END], then 0s. Wrap in `tf.function`
        for speed.
    """
    prompt = tf.convert_to_tensor(prompt, tf.int32)
    batch, prompt_length = tf.shape(prompt)[0], tf.shape(prompt)[1]
    real = tf.not_equal(prompt, PAD_ID)
    lengths = tf.reduce_sum(tf.cast(real, tf.int32), axis=1)  # [B]
    checks = [
        tf.debugging.assert_equal(
            real, tf.sequence_mask(lengths, prompt_length),
            message="`prompt` rows must be [START] and ids, then padding (0) only at the end",
        ),
        tf.debugging.assert_less(
            tf.reduce_max(lengths), max_length + 1, message="a prompt is longer than `max_length`"
        ),
        tf.debugging.assert_positive(lengths, message="a `prompt` row is empty (it needs [START])"),
    ]
    with tf.control_dependencies(checks):
        # Padding past the longest prompt is dropped. Slots past P hold
        # generated tokens; the shortest prompt needs the most.
        prompt_length = tf.reduce_max(lengths)
        prompt, real = prompt[:, :prompt_length], real[:, :prompt_length]
        cache_length = prompt_length + max_length - tf.reduce_min(lengths)
    # Only the prompts' padding is hidden: the causal mask hides the slots
    # not yet written, and a finished row's outputs are not used.
    slots = tf.pad(real, [[0, 0], [0, cache_length - prompt_length]], constant_values=True)
    cache = init_cache(model, batch, cache_length)
    logits, cache = decode_step(model, prompt, cache, 0, slots=slots)
    logits = tf.gather(logits, lengths - 1, axis=1, batch_dims=1)[:, None]  # each row's last real id
    tokens = tf.pad(prompt, [[0, 0], [0, max_length - prompt_length]])  # [B, max_length]

    def step(s, logits, cache, tokens, done):
        slot = prompt_length + s
        # Step by position, so a row's draws do not depend on the longest prompt of its batch.
        token = _next_token(logits[:, -1], temperature, seed, lengths + s, top_k, top_p)
        token = tf.where(done, PAD_ID, token)
        column = tf.one_hot(lengths + s, max_length, dtype=tf.int32)  # [B, max_length]; 0 past the end
        tokens += token[:, None] * column
        done = done | tf.equal(token, END_ID) | (lengths + s + 1 >= max_length)
        # A row that is done stays at its last position (its outputs are unused).
        positions = tf.minimum(lengths + s, max_length - 1)
        logits, cache = decode_step(model, token[:, None], cache, slot, positions=positions, slots=slots)
        return s + 1, logits, cache, tokens, done

    def not_finished(s, logits, cache, tokens, done):
        return ~tf.reduce_all(done)

    done = lengths >= max_length
    _, _, _, tokens, _ = tf.while_loop(not_finished, step, (tf.constant(0), logits, cache, tokens, done))
    return tokens


def generate_uncached(model: keras.Model, prompt, max_length: int) -> np.ndarray:
    """Greedy reference for `generate`: runs the whole model over each row's
    whole prefix (padding removed) at every step, no cache. Same arguments
    and output."""
    rows = []
    for row in np.asarray(prompt, np.int32):
        tokens, token = row[row != PAD_ID][None], None
        while tokens.shape[1] < max_length and token != END_ID:
            logits = model(tokens, training=False)[:, -1]
            token = int(_next_token(logits)[0])
            tokens = np.concatenate([tokens, [[token]]], axis=1)
        rows.append(np.pad(tokens[0], [0, max_length - tokens.shape[1]]))
    return np.stack(rows)


def perplexity(model: keras.Model, dataset: tf.data.Dataset) -> float:
    """exp(mean negative log-likelihood per target token), padding excluded."""
    total, count = 0.0, 0
    for inputs, targets in dataset:
        losses = keras.losses.sparse_categorical_crossentropy(
            targets, model(inputs, training=False), from_logits=True
        )
        real = tf.cast(targets != PAD_ID, tf.float32)
        total += float(tf.reduce_sum(losses * real))
        count += float(tf.reduce_sum(real))
    return math.exp(total / count)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", default=DEFAULT_DATA_DIR, help="Multi30k directory")
    parser.add_argument("--train-sentences", type=int, default=10000)
    parser.add_argument("--vocab-sentences", type=int, default=3000,
                        help="sentences the WordPiece vocabulary is learned from")
    parser.add_argument("--vocab-size", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-length", type=int, default=48, help="longest sequence, in tokens")
    parser.add_argument("--num-layers", type=int, default=2)
    parser.add_argument("--d-model", type=int, default=128)
    parser.add_argument("--num-key-value-heads", type=int, default=2, help="of the 4 attention heads")
    parser.add_argument("--dropout", type=float, default=0.0,
                        help="none by default: two short epochs underfit rather than overfit")
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    parser.add_argument("--temperature", type=float, default=0.8, help="for the sampled continuations")
    parser.add_argument("--top-k", type=int, default=0, help="sample from the k most likely tokens (0: all)")
    parser.add_argument("--top-p", type=float, default=0.95, help="sample from this much probability mass (1: all)")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    keras.utils.set_random_seed(args.seed)
    start = time.monotonic()

    train_texts = read_lines(os.path.join(args.data_dir, "train.lc.norm.tok.en"))[: args.train_sentences]
    val_texts = read_lines(os.path.join(args.data_dir, "val.lc.norm.tok.en"))
    tokenizer = WordPieceTokenizer.learn(train_texts[: args.vocab_sentences], args.vocab_size, min_count=2)
    print(f"{len(train_texts)} training and {len(val_texts)} validation sentences; "
          f"{tokenizer.vocab_size} WordPiece tokens ({time.monotonic() - start:.0f} s)")
    train_data = make_dataset(
        tokenizer, train_texts, args.batch_size, args.max_length, shuffle=True, seed=args.seed
    )
    val_data = make_dataset(tokenizer, val_texts, args.batch_size, args.max_length, shuffle=False)

    model = build_language_model(tokenizer.vocab_size, num_layers=args.num_layers, d_model=args.d_model,
                                 d_ff=2 * args.d_model, dropout=args.dropout, max_length=args.max_length,
                                 num_key_value_heads=args.num_key_value_heads)
    steps = args.epochs * math.ceil(len(train_texts) / args.batch_size)
    warmup = min(200, steps // 5)
    schedule = keras.optimizers.schedules.CosineDecay(
        0.0, steps - warmup, warmup_target=args.learning_rate, warmup_steps=warmup, alpha=0.05
    )
    model.compile(
        optimizer=keras.optimizers.Adam(schedule),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=PAD_ID),
    )
    print(f"model: {model.count_params():,} parameters")
    # The dataset shuffles itself; Keras warns when fit is asked to as well.
    model.fit(train_data, validation_data=val_data, epochs=args.epochs, shuffle=False, verbose=2)
    print(f"\nvalidation perplexity: {perplexity(model, val_data):.2f} per WordPiece token "
          f"([END] included) on {len(val_texts)} sentences ({time.monotonic() - start:.0f} s)")

    ids = tf.TensorSpec([None, None], tf.int32)
    greedy_fn = tf.function(lambda prompt: generate(model, prompt, args.max_length), input_signature=[ids])
    sample_fn = tf.function(
        lambda prompt, seed: generate(model, prompt, args.max_length, args.temperature, seed, args.top_k, args.top_p),
        input_signature=[ids, tf.TensorSpec([None], tf.int32)],
    )
    prompts = [add_start_end(tokenizer.tokenize([p]), START_ID, END_ID)[:, :-1].to_tensor() for p in PROMPTS]
    alone = []
    for prompt in prompts:
        cached = greedy_fn(prompt).numpy()
        uncached = generate_uncached(model, prompt, args.max_length)
        if not np.array_equal(cached, uncached):
            raise AssertionError(f"cached greedy output {cached} != uncached {uncached}")
        alone.append(cached)
    print(f"cached greedy generation equals uncached generation token for token on {len(prompts)} prompts")
    width = max(p.shape[1] for p in prompts)
    batch = tf.concat([tf.pad(p, [[0, 0], [0, width - p.shape[1]]]) for p in prompts], axis=0)
    if not np.array_equal(greedy_fn(batch).numpy(), np.concatenate(alone)):
        raise AssertionError("greedy output of the padded prompt batch differs from each prompt alone")
    print(f"the {len(prompts)} prompts right-padded into one batch give the same output as each alone")

    print(f"\ngreedy | two samples at temperature {args.temperature}, top-k {args.top_k}, top-p {args.top_p}")
    for i, prompt in enumerate(prompts):
        greedy = greedy_fn(prompt)
        # One seed a row: the same prompt twice, two different samples.
        sampled = sample_fn(tf.repeat(prompt, 2, axis=0), tf.constant([2 * (args.seed + i), 2 * (args.seed + i) + 1]))
        texts = tokenizer.detokenize(tf.concat([greedy, sampled], axis=0)).numpy()
        print("  " + " | ".join(t.decode("utf-8") for t in texts))
    return model, tokenizer


if __name__ == "__main__":
    main()
