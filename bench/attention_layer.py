"""Forward + backward time of `keras_transformer.MultiHeadAttention` against
`keras.layers.MultiHeadAttention`, same sizes, same run; and of ours on its
fused path (`fused_attention=True`: `keras.ops.dot_product_attention`).

    python bench/attention_layer.py --batch-size 64 --length 24 --d-model 128 --heads 4
"""

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

import keras_transformer as kt  # noqa: E402


def time_step(layer, x, causal, repeats):
    @tf.function
    def step(x):
        with tf.GradientTape() as tape:
            y = layer(x, x, use_causal_mask=causal)
            loss = tf.reduce_sum(y * y)
        return tape.gradient(loss, layer.trainable_weights)

    step(x)
    start = time.perf_counter()
    for _ in range(repeats):
        step(x)
    return (time.perf_counter() - start) / repeats * 1000


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--length", type=int, default=24)
    parser.add_argument("--d-model", type=int, default=128)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=200)
    args = parser.parse_args()

    x = tf.random.normal([args.batch_size, args.length, args.d_model])
    head = args.d_model // args.heads
    ours = kt.MultiHeadAttention(args.heads, head)
    theirs = keras.layers.MultiHeadAttention(args.heads, head)
    fused = kt.MultiHeadAttention(args.heads, head, fused_attention=True)
    for causal in (False, True):
        a = time_step(ours, x, causal, args.repeats)
        b = time_step(theirs, x, causal, args.repeats)
        c = time_step(fused, x, causal, args.repeats)
        label = "causal self-attention" if causal else "self-attention"
        print(f"{label:22s} ours {a:6.2f} ms  keras {b:6.2f} ms  ours fused {c:6.2f} ms  "
              f"keras / ours: {b / a:.2f}x  fused / ours: {c / a:.2f}x")


if __name__ == "__main__":
    main()
