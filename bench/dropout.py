"""Cost of dropout on CPU: `keras_transformer.layers.Dropout` against
`keras.layers.Dropout`, in the same process.

1. The layer alone: forward and backward on a [batch, length, width] tensor.
2. A whole training step of the Transformer (`train_on_batch` on one fixed
   batch of `--tokens` target tokens), built with our dropout, with Keras's,
   and with no dropout at all (the floor).

Timings alternate between the contenders and report medians, so a machine
that slows down part-way hurts all of them alike.

    python bench/dropout.py --dtype-policy mixed_bfloat16
"""

import argparse
import contextlib
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from keras_transformer import Transformer  # noqa: E402
from keras_transformer import training  # noqa: E402
from keras_transformer.layers import Dropout  # noqa: E402
from keras_transformer.layers import attention  # noqa: E402
from keras_transformer.layers import block  # noqa: E402
from keras_transformer.layers import feed_forward  # noqa: E402
from keras_transformer.models import transformer  # noqa: E402
from timing import median_ms  # noqa: E402  (bench/timing.py)

_USERS = (attention, block, feed_forward, transformer)  # modules that build dropout layers


@contextlib.contextmanager
def _dropout_class(cls):
    """Builds the library's layers with `cls` as their dropout."""
    saved = [module.Dropout for module in _USERS]
    for module in _USERS:
        module.Dropout = cls
    try:
        yield
    finally:
        for module, old in zip(_USERS, saved):
            module.Dropout = old


def layer_alone(shape, rate, repeats):
    x = tf.random.normal(shape, dtype=keras.config.dtype_policy().compute_dtype)

    def fwd_bwd(layer):
        @tf.function
        def step():
            with tf.GradientTape() as tape:
                tape.watch(x)
                total = tf.reduce_sum(tf.cast(layer(x, training=True), tf.float32))
            return tape.gradient(total, x)

        return lambda: step().numpy()

    return median_ms({"ours": fwd_bwd(Dropout(rate)), "keras": fwd_bwd(keras.layers.Dropout(rate))}, repeats)


def training_step(tokens, length, vocab, rate, attention_rate, repeats):
    rng = np.random.default_rng(0)
    batch = tokens // length
    source = rng.integers(4, vocab, (batch, length)).astype("int32")
    target = rng.integers(4, vocab, (batch, length + 1)).astype("int32")
    x, y = {"source": source, "target": target[:, :-1]}, target[:, 1:]

    def step(dropout_class, rate, attention_rate):
        with _dropout_class(dropout_class):
            model = Transformer.from_preset(
                "tiny", vocab, vocab, dropout=rate, attention_dropout=attention_rate
            )
            model.build()
        training.compile_for_translation(model, warmup_steps=800)
        return lambda: model.train_on_batch(x, y)

    return median_ms(
        {
            "ours": step(Dropout, rate, attention_rate),
            "keras": step(keras.layers.Dropout, rate, attention_rate),
            "no dropout": step(Dropout, 0.0, 0.0),
        },
        repeats,
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtype-policy", default="mixed_bfloat16")
    parser.add_argument("--rate", type=float, default=0.1)
    parser.add_argument("--attention-rate", type=float, default=None, help="default: --rate")
    parser.add_argument("--shape", default="160,26,512", help="layer-alone tensor shape")
    parser.add_argument("--tokens", type=int, default=4096, help="target tokens per training batch")
    parser.add_argument("--length", type=int, default=26, help="source and target length")
    parser.add_argument("--vocab-size", type=int, default=6049)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    keras.config.set_dtype_policy(args.dtype_policy)
    keras.utils.set_random_seed(0)
    attention_rate = args.rate if args.attention_rate is None else args.attention_rate

    shape = [int(n) for n in args.shape.split(",")]
    alone = layer_alone(shape, args.rate, args.repeats)
    print(f"layer alone, forward + backward on {shape} ({args.dtype_policy}, rate {args.rate}):")
    print(
        f"  ours {alone['ours']:.1f} ms   keras {alone['keras']:.1f} ms   "
        f"keras / ours {alone['keras'] / alone['ours']:.2f}x"
    )

    step = training_step(args.tokens, args.length, args.vocab_size, args.rate, attention_rate, args.repeats)
    print(
        f"tiny Transformer training step, {args.tokens // args.length} x {args.length} tokens, "
        f"vocabulary {args.vocab_size}, dropout {args.rate}, attention dropout {attention_rate}:"
    )
    print(
        f"  ours {step['ours']:.0f} ms   keras {step['keras']:.0f} ms   no dropout {step['no dropout']:.0f} ms   "
        f"keras / ours {step['keras'] / step['ours']:.2f}x"
    )
    print(
        f"  dropout's share of the step: ours {1 - step['no dropout'] / step['ours']:.0%}, "
        f"keras {1 - step['no dropout'] / step['keras']:.0%}"
    )


if __name__ == "__main__":
    main()
