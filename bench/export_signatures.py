"""What choosing an export's signatures saves: the size of `saved_model.pb`,
the export's time and a fresh process's load time, each choice against the
export of all five signatures, in the same run.

    python bench/export_signatures.py                 # tiny preset, random weights
    python bench/export_signatures.py --repeats 3 --preset base

Every round exports each choice in turn (text processing "moses", as a
deployment serves raw text) and loads it in a new Python process, timing
`tf.saved_model.load` alone, so no choice finds another's functions already
traced or cached. Prints medians over `--repeats` rounds and each choice over
all five.
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras_transformer as kt  # noqa: E402
from keras_transformer.export.saved_model import SIGNATURES  # noqa: E402
from keras_transformer.export.saved_model import export_saved_model  # noqa: E402
from keras_transformer.text.tokens import RESERVED_TOKENS  # noqa: E402

CHOICES = {
    "all five": SIGNATURES,
    "serving_default": ("serving_default",),
    "serving_default, score": ("serving_default", "score"),
    "serving_default, translate": ("serving_default", "translate"),
}
LOAD = (
    "import os, sys, time\n"
    "os.environ['TF_CPP_MIN_LOG_LEVEL'] = '2'\n"
    "import tensorflow as tf\n"
    "start = time.perf_counter()\n"
    "tf.saved_model.load(sys.argv[1])\n"
    "print(time.perf_counter() - start)\n"
)


def load_seconds(path):
    out = subprocess.run([sys.executable, "-c", LOAD, path], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="tiny")
    p.add_argument("--vocab-size", type=int, default=6000)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()

    vocab = list(RESERVED_TOKENS) + [f"w{i}" for i in range(args.vocab_size - len(RESERVED_TOKENS))]
    model = kt.Transformer.from_preset(args.preset, len(vocab), len(vocab), max_length=128)
    model.build()
    base = tempfile.mkdtemp()
    export_saved_model(model, vocab, base, warmup_sentences=())  # (traces what every export shares once)
    results = {name: {"bytes": [], "export": [], "load": []} for name in CHOICES}
    for _ in range(args.repeats):
        for name, signatures in CHOICES.items():
            start = time.perf_counter()
            path = export_saved_model(model, vocab, base, signatures=signatures)
            results[name]["export"].append(time.perf_counter() - start)
            results[name]["bytes"].append(os.path.getsize(os.path.join(path, "saved_model.pb")))
            results[name]["load"].append(load_seconds(path))
    print(f"{args.preset} preset, {len(vocab)} tokens, medians of {args.repeats}")
    print("| signatures | saved_model.pb | / all | export s | / all | load s | / all |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    median = {name: {k: statistics.median(v) for k, v in r.items()} for name, r in results.items()}
    every = median["all five"]
    for name, m in median.items():
        print(f"| {name} | {m['bytes'] / 1e6:.2f} MB | {m['bytes'] / every['bytes']:.2f}x | {m['export']:.1f} | "
              f"{m['export'] / every['export']:.2f}x | {m['load']:.1f} | {m['load'] / every['load']:.2f}x |")


if __name__ == "__main__":
    main()
