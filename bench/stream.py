"""Cost of the resumable training stream: `token_batches(shuffle=True,
repeat=True)`, whose passes are permuted by `data.shuffled_passes`, against
the tf.data `shuffle(reshuffle_each_iteration=True).repeat()` it replaced
(which does not resume exactly), on the Multi30k training pairs.

Each contender reads `--passes` passes of batches, alternating, `--repeats`
times; the table gives the median seconds per pass and the ratio. The pairs
are tokenized once and cached in memory first, as the Multi30k script does.

    python bench/stream.py --data-dir ../shared/data/multi30k
"""

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

from keras_transformer import data  # noqa: E402
from keras_transformer.data.pipeline import bucket_boundaries  # noqa: E402
from keras_transformer.data.pipeline import teacher_forcing  # noqa: E402


def reshuffled_stream(pairs, tokens_per_batch, max_length, seed):
    """The previous `token_batches(shuffle=True, repeat=True)`."""
    pairs = pairs.shuffle(100_000, seed=seed, reshuffle_each_iteration=True).repeat()
    boundaries = bucket_boundaries(max_length)
    sizes = [tokens_per_batch // (b - 1) for b in boundaries] + [tokens_per_batch // max_length]
    batches = pairs.bucket_by_sequence_length(
        lambda s, t: tf.maximum(tf.shape(s)[0], tf.shape(t)[0]), boundaries, sizes
    )
    return batches.map(teacher_forcing, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", default="../shared/data/multi30k")
    parser.add_argument("--tokens-per-batch", type=int, default=2048)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--passes", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    en, de = data.read_parallel(
        os.path.join(args.data_dir, "train.lc.norm.tok.en"), os.path.join(args.data_dir, "train.lc.norm.tok.de")
    )
    tokenizer = data.WordPieceTokenizer.learn(en[:5000] + de[:5000], vocab_size=4000)
    pairs = data.tokenized_pairs(tokenizer, en, de, max_length=args.max_length).cache()
    one_pass = sum(1 for _ in data.token_batches(pairs, args.tokens_per_batch, args.max_length, shuffle=False))
    contenders = {
        "shuffled_passes (resumable)": lambda: data.token_batches(
            pairs, args.tokens_per_batch, args.max_length, shuffle=True, repeat=True, seed=1
        ),
        "shuffle().repeat() (previous)": lambda: reshuffled_stream(pairs, args.tokens_per_batch, args.max_length, 1),
    }
    times = {name: [] for name in contenders}
    for _ in range(args.repeats):
        for name, make in contenders.items():
            start = time.perf_counter()
            for _ in make().take(args.passes * one_pass):
                pass
            times[name].append((time.perf_counter() - start) / args.passes)
    print(f"{len(en)} pairs, {one_pass} batches a pass of {args.tokens_per_batch} tokens")
    print("| stream | s per pass (median) | ratio |")
    print("| --- | --- | --- |")
    base = statistics.median(times["shuffle().repeat() (previous)"])
    for name, values in times.items():
        median = statistics.median(values)
        print(f"| {name} | {median:.2f} | {median / base:.2f} |")


if __name__ == "__main__":
    main()
