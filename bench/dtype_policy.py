"""A training step in float32 against mixed_bfloat16 on this CPU, in one process.

`training.set_mixed_precision(True)` picks mixed_bfloat16 on a CPU only
where the CPU has bfloat16 instructions (`cpu_has_native_bfloat16`), because
elsewhere TensorFlow emulates them. This measures the choice: the tiny
Transformer's `train_on_batch` on one fixed batch of `--tokens` target
tokens, one model per policy, timed in turn (medians), so a machine that
slows part-way slows both alike.

    python bench/dtype_policy.py
"""

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_transformer import Transformer  # noqa: E402
from keras_transformer import training  # noqa: E402
from keras_transformer.training.distribute import cpu_has_native_bfloat16  # noqa: E402
from timing import median_ms  # noqa: E402  (bench/timing.py)

POLICIES = ("float32", "mixed_bfloat16")


def step_times(tokens, length, vocab, repeats):
    rng = np.random.default_rng(0)
    batch = tokens // length
    source = rng.integers(4, vocab, (batch, length)).astype("int32")
    target = rng.integers(4, vocab, (batch, length + 1)).astype("int32")
    x, y = {"source": source, "target": target[:, :-1]}, target[:, 1:]
    steps = {}
    for policy in POLICIES:
        keras.config.set_dtype_policy(policy)
        model = Transformer.from_preset("tiny", vocab, vocab, dropout=0.1)
        model.build()
        training.compile_for_translation(model, warmup_steps=800)
        steps[policy] = (lambda m: lambda: m.train_on_batch(x, y))(model)
    keras.config.set_dtype_policy("float32")
    return median_ms(steps, repeats, warmup=2)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=2048, help="target tokens per batch (the recipe's)")
    parser.add_argument("--length", type=int, default=16, help="source and target length (Multi30k's median)")
    parser.add_argument("--vocab-size", type=int, default=6049)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    keras.utils.set_random_seed(0)
    times = step_times(args.tokens, args.length, args.vocab_size, args.repeats)
    print(f"native bfloat16 on this CPU: {cpu_has_native_bfloat16()}")
    print(
        f"tiny Transformer training step, {args.tokens // args.length} x {args.length} tokens, "
        f"vocabulary {args.vocab_size}:"
    )
    print(
        f"  float32 {times['float32']:.0f} ms   mixed_bfloat16 {times['mixed_bfloat16']:.0f} ms   "
        f"mixed_bfloat16 / float32 {times['mixed_bfloat16'] / times['float32']:.2f}x"
    )
    return times


if __name__ == "__main__":
    main()
