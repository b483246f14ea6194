"""Training with `model.fit` on the JAX backend from pre-tokenized Multi30k arrays: throughput and
a short run whose weights come back for BLEU (issue 21's GPU run; it runs on a CPU too).

Needs no TensorFlow: the arrays and vocabulary come from bench/gpu/prepare.py, run once where
TensorFlow is installed. On the GPU machine, bench/gpu/run.sh installs the carried Keras and
keras-hub wheels and runs this; on a CPU:

    KERAS_BACKEND=jax python bench/gpu/train.py --arrays .gpu/train.npz --out /tmp/gpu-out \
        --presets tiny --measure-steps 5 --train-minutes 3

1. Throughput. For each preset and each model (ours: `keras_transformer.Transformer`; keras-hub:
   `TransformerEncoder`/`TransformerDecoder` at the same sizes, as in bench/train_throughput.py),
   `fit` runs on the token-budget batches of the most common length bucket (one shape, so one
   compilation), `--warmup-steps` first, then `--measure-steps` timed. Prints target tokens per
   second (padding included, as the chip computes them) and the model FLOP utilization: the
   matrix products of a training step (forward x 3) per second over `--peak-tflops`.
2. A run of `--train-minutes` (compilation included) over all the data in wide buckets
   (`--bleu-preset`, the recipe's loss and linear schedule), whose weights are written to OUT/model.weights.h5 with
   OUT/model.json; bench/gpu/evaluate.py exports them with TensorFlow and scores BLEU.
"""

import argparse
import json
import os
import sys
import time

import keras
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "bench"))

from keras_transformer import PRESETS  # noqa: E402
from keras_transformer import Transformer  # noqa: E402
from keras_transformer.data.arrays import TokenBatches  # noqa: E402
from keras_transformer.data.arrays import bucket_boundaries  # noqa: E402
from keras_transformer.training.callbacks import TimeBudget  # noqa: E402
from keras_transformer.training.losses import MaskedAccuracy  # noqa: E402
from keras_transformer.training.losses import MaskedCrossEntropy  # noqa: E402
from keras_transformer.training.schedules import fit_schedule_to_run  # noqa: E402
from keras_transformer.training.schedules import translation_optimizer  # noqa: E402

MAX_BACK_BYTES = 16 * 2**20  # the most one file may weigh to come back from the GPU machine


def train_step_flops(sizes, vocab_size, batch, source_width, target_width):
    """Matrix-product FLOPs of one training step (forward x 3) of an
    encoder-decoder of `sizes` on a [batch, source_width] / [batch, target_width] batch."""
    d, ff, layers = sizes["d_model"], sizes["d_ff"], sizes["num_layers"]
    s, t = batch * source_width, batch * target_width  # token positions
    encoder = layers * (2 * s * (4 * d * d + 2 * d * ff) + 4 * batch * source_width**2 * d)
    decoder = layers * (
        2 * t * (4 * d * d + 2 * d * d + 2 * d * ff) + 2 * s * 2 * d * d  # projections and feed-forward
        + 4 * batch * target_width**2 * d + 4 * batch * target_width * source_width * d  # scores, sums
    )
    return 3 * (encoder + decoder + 2 * t * d * vocab_size)


class _Fixed(keras.utils.PyDataset):
    """`batches[i]` for the given indices, cycled to `steps` batches."""

    def __init__(self, batches, indices, steps):
        super().__init__()
        self.batches, self.indices, self.steps = batches, indices, steps

    def __len__(self):
        return self.steps

    def __getitem__(self, i):
        return self.batches[self.indices[i % len(self.indices)]]


def one_shape(batches):
    """The indices of `batches`' full batches of its most common bucket (all its
    batches, when none is full)."""
    full = [i for i, (bucket, members) in enumerate(batches._plan) if len(members) == batches._sizes[bucket]]
    candidates = full or list(range(len(batches._plan)))
    buckets = [batches._plan[i][0] for i in candidates]
    common = max(set(buckets), key=buckets.count)
    return [i for i in candidates if batches._plan[i][0] == common]


def build(kind, sizes, vocab_size, max_length):
    keras.utils.set_random_seed(0)
    if sizes.get("attention_dropout") is not None and kind != "ours":
        sizes = {k: v for k, v in sizes.items() if k != "attention_dropout"}  # the peers have one dropout
    if kind == "ours":
        model = Transformer(vocab_size, vocab_size, max_length=max_length, **sizes)
        model.compile(optimizer=keras.optimizers.Adam(1e-4), loss=MaskedCrossEntropy(label_smoothing=0.1))
        return model
    from train_throughput import _peer_model

    model = _peer_model(kind, vocab_size, **sizes)
    model.compile(optimizer=keras.optimizers.Adam(1e-4),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def _sizes(args, preset):
    sizes = dict(PRESETS[preset])
    if args.attention_dropout is not None:
        sizes["attention_dropout"] = args.attention_dropout
    return sizes


def measure(args, batches, kind, preset):
    sizes = _sizes(args, preset)
    indices = one_shape(batches)
    (inputs, labels) = batches[indices[0]]
    batch, source_width = inputs["source"].shape
    target_width = inputs["target"].shape[1]
    model = build(kind, sizes, len(args.vocab), args.max_length + 2)
    start = time.perf_counter()
    model.fit(_Fixed(batches, indices, args.warmup_steps), epochs=1, shuffle=False, verbose=0)
    compiled = time.perf_counter() - start
    start = time.perf_counter()
    history = model.fit(_Fixed(batches, indices, args.measure_steps), epochs=1, shuffle=False, verbose=0)
    seconds = time.perf_counter() - start
    assert np.isfinite(history.history["loss"][-1]), history.history
    tokens = batch * target_width * args.measure_steps / seconds
    flops = train_step_flops(sizes, len(args.vocab), batch, source_width, target_width) * args.measure_steps / seconds
    row = dict(preset=preset, model=kind, attention_dropout=sizes.get("attention_dropout"),
               batch=[int(batch), int(source_width), int(target_width)],
               params=model.count_params(), tokens_per_s=tokens, tflops=flops / 1e12,
               mfu=flops / (args.peak_tflops * 1e12), warmup_s=compiled, steps_per_s=args.measure_steps / seconds)
    print(f"{preset:5s} {kind:9s} batch {batch}x{source_width}/{target_width}: {tokens:12,.0f} target tokens/s, "
          f"{flops / 1e12:8.2f} TFLOP/s = {row['mfu']:.2%} of {args.peak_tflops:.0f}; "
          f"{row['params']:,} parameters; first {args.warmup_steps} steps {compiled:.0f} s", flush=True)
    return row


def train_for_bleu(args, steps_per_second, compile_seconds):
    sizes = _sizes(args, args.bleu_preset)
    # Few shapes, since jit compiles a step for each: wide buckets, padded to their bound, with
    # each bucket's last batch filled with padding rows (masked out of the loss).
    batches = TokenBatches(args.arrays, args.tokens_per_batch, args.max_length, seed=1,
                           pad_to_bucket_boundary=True, fill_batches=True,
                           boundaries=bucket_boundaries(args.max_length, min_step=6, growth=1.3))
    keras.utils.set_random_seed(1)
    model = Transformer(len(args.vocab), len(args.vocab), max_length=args.max_length + 2, **sizes)
    if steps_per_second is None:
        # No measured speed to place the linear decay's end by: the paper's schedule needs none.
        print("no measured speed for this preset: training on the inverse square root schedule", flush=True)
        optimizer = translation_optimizer(sizes["d_model"], args.warmup, args.lr_scale)
        total = None
    else:
        optimizer = translation_optimizer(sizes["d_model"], args.warmup, args.lr_scale, schedule="linear")
        # JAX traces the step once, so the linear decay's end is fixed now: the steps that fit in
        # the time at the measured speed, after compiling one step per bucket.
        shapes = len({bucket for bucket, _ in batches._plan})
        total = max(args.warmup + 1, int((args.train_minutes * 60 - shapes * compile_seconds) * steps_per_second))
        fit_schedule_to_run(optimizer, total)
    model.compile(optimizer=optimizer, loss=MaskedCrossEntropy(label_smoothing=0.1), metrics=[MaskedAccuracy()])
    start = time.perf_counter()
    history = model.fit(batches, epochs=10_000, shuffle=False, verbose=0,
                        callbacks=[TimeBudget(args.train_minutes)])
    minutes = (time.perf_counter() - start) / 60
    steps = int(keras.ops.convert_to_numpy(model.optimizer.iterations))
    losses = history.history["loss"]
    print(f"{args.bleu_preset}: {steps} steps ({total or 'no end'} planned) in {minutes:.1f} min, {len(losses)} epochs "
          f"of {len(batches)} batches, last epoch's loss {losses[-1]:.3f}", flush=True)
    # The weights alone (save_weights would add the optimizer's slots, twice their size).
    weights_only = Transformer(len(args.vocab), len(args.vocab), max_length=args.max_length + 2, **sizes)
    weights_only.build()
    weights_only.set_weights(model.get_weights())
    path = os.path.join(args.out, "model.weights.h5")
    weights_only.save_weights(path)
    if os.path.getsize(path) > MAX_BACK_BYTES:
        raise SystemExit(f"{path} is {os.path.getsize(path) / 2**20:.1f} MiB, over the 16 MiB that comes back: "
                         "choose a smaller --bleu-preset")
    with open(os.path.join(args.out, "model.json"), "w") as f:
        json.dump(dict(preset=args.bleu_preset, vocab_size=len(args.vocab), max_length=args.max_length + 2,
                       attention_dropout=args.attention_dropout,
                       steps=steps, minutes=minutes, losses=losses, backend=keras.backend.backend(),
                       dtype_policy=keras.config.dtype_policy().name), f)
    return dict(steps=steps, minutes=minutes, loss=losses[-1])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arrays", default=os.path.join(ROOT, ".gpu", "train.npz"))
    p.add_argument("--vocab-file", default=None, help="default: vocab.txt beside --arrays")
    p.add_argument("--out", required=True)
    p.add_argument("--presets", nargs="+", default=["tiny", "base"], choices=sorted(PRESETS))
    p.add_argument("--models", nargs="+", default=["ours", "keras-hub"], choices=["ours", "keras-hub", "keras-mha"])
    p.add_argument("--dtype-policy", default="mixed_bfloat16")
    p.add_argument("--tokens-per-batch", type=int, default=8192)
    p.add_argument("--max-length", type=int, default=64, help="longest pair kept ([START] and [END] included)")
    p.add_argument("--warmup-steps", type=int, default=10, help="untimed steps (compilation) before the timed ones")
    p.add_argument("--measure-steps", type=int, default=50)
    p.add_argument("--peak-tflops", type=float, default=790.0, help="the chip's dense bf16 peak (H200: about 790)")
    p.add_argument("--train-minutes", type=float, default=5.0, help="0: no training run")
    p.add_argument("--bleu-preset", default="tiny", choices=sorted(PRESETS))
    p.add_argument("--warmup", type=int, default=800, help="the training run's warm-up steps")
    p.add_argument("--lr-scale", type=float, default=1.1)
    p.add_argument("--attention-dropout", type=float, default=None,
                   help="ours: attention dropout (default: the preset's dropout); 0 lets attention take "
                        "the fused path (flash attention) while training")
    p.add_argument("--deadline-minutes", type=float, default=9.0,
                   help="the whole run's wall-clock limit: measurements that would leave the training run "
                        "too little time are skipped, and the training run is shortened to fit")
    args = p.parse_args(argv)
    deadline = time.monotonic() + args.deadline_minutes * 60
    vocab_file = args.vocab_file or os.path.join(os.path.dirname(args.arrays), "vocab.txt")
    with open(vocab_file, encoding="utf-8") as f:
        args.vocab = f.read().split("\n")[:-1]
    os.makedirs(args.out, exist_ok=True)
    keras.config.set_dtype_policy(args.dtype_policy)
    print(f"backend {keras.backend.backend()}, policy {args.dtype_policy}, devices "
          f"{_devices()}, vocabulary {len(args.vocab)}", flush=True)
    batches = TokenBatches(args.arrays, args.tokens_per_batch, args.max_length, pad_to_bucket_boundary=True)
    rows, result = [], dict(throughput=[])
    for preset in args.presets:
        for kind in args.models:
            # The training run and saving its weights, and this measurement (as long as the longest so far).
            reserve = args.train_minutes * 60 + 60 + max([r["warmup_s"] + args.measure_steps / r["steps_per_s"]
                                                          for r in rows] or [30])
            if deadline - time.monotonic() < reserve:
                print(f"{preset} {kind}: skipped, to leave the training run its time", flush=True)
                continue
            try:
                rows.append(measure(args, batches, kind, preset))
            except Exception as error:  # one model failing (an import, memory) leaves the others their turn
                print(f"{preset} {kind}: FAILED: {type(error).__name__}: {error}"[:2000], flush=True)
            result["throughput"] = rows
            _write(args, result)
    for preset in args.presets:
        ours = [r for r in rows if r["preset"] == preset and r["model"] == "ours"]
        for row in rows:
            if ours and row["preset"] == preset and row["model"] != "ours":
                print(f"{preset}: ours / {row['model']}: {ours[0]['tokens_per_s'] / row['tokens_per_s']:.2f}x")
    _write(args, result)
    if args.train_minutes > 0:
        args.train_minutes = min(args.train_minutes, (deadline - time.monotonic() - 60) / 60)
        if args.train_minutes < 1:
            print(f"no training run: {args.train_minutes:.1f} min left before the deadline", flush=True)
            return
        ours = [r for r in rows if r["preset"] == args.bleu_preset and r["model"] == "ours"]
        speed, compile_seconds = (ours[0]["steps_per_s"], ours[0]["warmup_s"]) if ours else (None, 0.0)
        result["training"] = train_for_bleu(args, speed, compile_seconds)
    _write(args, result)


def _write(args, result):
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(result, f, indent=1)


def _devices():
    if keras.backend.backend() == "jax":
        import jax

        return ", ".join(str(d) for d in jax.devices())
    return "default"


if __name__ == "__main__":
    main()
