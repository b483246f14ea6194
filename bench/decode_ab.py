"""Decoding speed of this checkout against another one (say, the commit before a change), in one run.

    git worktree add /tmp/before HEAD~1
    python bench/decode_ab.py --other /tmp/before

Each round times cached greedy and beam-4 decoding (tiny preset, random weights,
generation forced to the full length, as bench/decode.py) in a fresh process of
each checkout, alternating which goes first. Reports each checkout's median
milliseconds per generated token and this / other.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

WORKER = r"""
import json, os, sys, time
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import keras, numpy as np, tensorflow as tf
import keras_transformer as kt
from keras_transformer.decoding import beam_search, greedy_decode

cfg = json.loads(sys.argv[1])
keras.utils.set_random_seed(0)
model = kt.Transformer.from_preset("tiny", cfg["vocab"], cfg["vocab"], max_length=256)
model.build()
rng = np.random.default_rng(0)
out = {}
for method in cfg["methods"]:
    for batch in cfg["batches"]:
        source = tf.constant(rng.integers(4, cfg["vocab"], size=(batch, 16)), tf.int32)
        for length in cfg["lengths"]:
            if method == "greedy":
                fn = tf.function(lambda s: greedy_decode(model, s, length, end_id=-1))
            else:
                fn = tf.function(lambda s: beam_search(model, s, length, beam_size=4, end_id=-1)["ids"])
            fn(source)  # trace and warm up
            times = []
            for _ in range(cfg["repeats"]):
                start = time.perf_counter()
                fn(source)
                times.append(time.perf_counter() - start)
            out[f"{method}|{batch}|{length}"] = sorted(times)[len(times) // 2] / length * 1e3
print("RESULT " + json.dumps(out))
"""


def run(tree, cfg):
    env = {**os.environ, "PYTHONPATH": tree}
    result = subprocess.run([sys.executable, "-c", WORKER, json.dumps(cfg)], cwd=tree, env=env,
                            capture_output=True, text=True, check=True)
    line = next(row for row in result.stdout.splitlines() if row.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--other", required=True, help="the other checkout's root directory")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--lengths", type=int, nargs="+", default=[64])
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32])
    p.add_argument("--methods", nargs="+", default=["greedy", "beam4"])
    p.add_argument("--vocab-size", type=int, default=6049)
    args = p.parse_args()
    cfg = {"vocab": args.vocab_size, "methods": args.methods, "batches": args.batch_sizes,
           "lengths": args.lengths, "repeats": args.repeats}
    trees = {"this": ROOT, "other": os.path.abspath(args.other)}
    times = {"this": [], "other": []}
    for r in range(args.rounds):
        for name in (("this", "other") if r % 2 == 0 else ("other", "this")):
            times[name].append(run(trees[name], cfg))
    print(f"this = {trees['this']}, other = {trees['other']}; {args.rounds} rounds, medians")
    print("| method | batch | output length | this ms/token | other ms/token | this / other |")
    print("| --- | --- | --- | --- | --- | --- |")
    for key in times["this"][0]:
        this = statistics.median(t[key] for t in times["this"])
        other = statistics.median(t[key] for t in times["other"])
        method, batch, length = key.split("|")
        print(f"| {method} | {batch} | {length} | {this:.2f} | {other:.2f} | {this / other:.2f}x |")


if __name__ == "__main__":
    main()
