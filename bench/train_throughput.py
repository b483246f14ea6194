"""Training throughput of `keras_transformer.Transformer` against peers.

Three encoder-decoder models of the same sizes train with `model.fit` on the
same random token batches, in the same process:

- ours: `keras_transformer.Transformer`;
- keras-hub: `keras_hub.layers.TransformerEncoder` / `TransformerDecoder`;
- keras-mha: post-norm blocks built on `keras.layers.MultiHeadAttention`.

Prints target tokens per second for each and the ratios against ours.

    python bench/train_throughput.py --preset tiny --batch-size 64 --length 24
"""

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_transformer import PRESETS  # noqa: E402
from keras_transformer import Transformer  # noqa: E402


def _peer_model(kind, vocab_size, num_layers, d_model, num_heads, d_ff, dropout, **_):
    """A functional encoder-decoder of the given sizes from a peer's layers."""
    import keras_hub

    source = keras.Input(shape=(None,), dtype="int32", name="source")
    target = keras.Input(shape=(None,), dtype="int32", name="target")

    def embed(ids, name):
        x = keras.layers.Embedding(vocab_size, d_model, mask_zero=True, name=name)(ids)
        return x + keras_hub.layers.SinePositionEncoding()(x)

    x, y = embed(source, "source_embedding"), embed(target, "target_embedding")
    if kind == "keras-hub":
        for _ in range(num_layers):
            x = keras_hub.layers.TransformerEncoder(d_ff, num_heads, dropout=dropout)(x)
        for _ in range(num_layers):
            y = keras_hub.layers.TransformerDecoder(d_ff, num_heads, dropout=dropout)(y, x)
    else:
        head = d_model // num_heads

        def block(z, sublayer):
            return keras.layers.LayerNormalization(epsilon=1e-6)(z + keras.layers.Dropout(dropout)(sublayer(z)))

        def ffn(z):
            return keras.layers.Dense(d_model)(keras.layers.Dense(d_ff, activation="relu")(z))

        for _ in range(num_layers):
            x = block(x, lambda z: keras.layers.MultiHeadAttention(num_heads, head, dropout=dropout)(z, z))
            x = block(x, ffn)
        for _ in range(num_layers):
            y = block(
                y,
                lambda z: keras.layers.MultiHeadAttention(num_heads, head, dropout=dropout)(z, z, use_causal_mask=True),
            )
            y = block(y, lambda z: keras.layers.MultiHeadAttention(num_heads, head, dropout=dropout)(z, x))
            y = block(y, ffn)
    logits = keras.layers.Dense(vocab_size)(y)
    return keras.Model({"source": source, "target": target}, logits)


class _StepTimer(keras.callbacks.Callback):
    def __init__(self, warmup):
        super().__init__()
        self.warmup, self.times = warmup, []

    def on_train_batch_end(self, batch, logs=None):
        self.times.append(time.perf_counter())


def measure(model, data, labels, steps, warmup, jit_compile):
    model.compile(
        optimizer=keras.optimizers.Adam(1e-4),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=jit_compile,
    )
    timer = _StepTimer(warmup)
    model.fit(data, labels, batch_size=len(labels) // (steps + warmup), epochs=1, verbose=0, callbacks=[timer])
    seconds = timer.times[-1] - timer.times[warmup - 1]
    tokens = labels.size * steps / (steps + warmup)
    return tokens / seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny", choices=sorted(PRESETS))
    parser.add_argument("--vocab-size", type=int, default=8000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--length", type=int, default=24, help="source and target length")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--jit-compile", action="store_true")
    parser.add_argument("--dtype-policy", default="float32", help="e.g. mixed_bfloat16")
    parser.add_argument("--models", default="ours,keras-hub,keras-mha")
    args = parser.parse_args()

    keras.config.set_dtype_policy(args.dtype_policy)
    sizes = dict(PRESETS[args.preset])
    rng = np.random.default_rng(0)
    n = args.batch_size * (args.steps + args.warmup)
    data = {
        "source": rng.integers(1, args.vocab_size, size=(n, args.length)).astype("int32"),
        "target": rng.integers(1, args.vocab_size, size=(n, args.length)).astype("int32"),
    }
    labels = rng.integers(1, args.vocab_size, size=(n, args.length)).astype("int32")

    results = {}
    for kind in args.models.split(","):
        keras.utils.set_random_seed(0)
        if kind == "ours":
            model = Transformer(args.vocab_size, args.vocab_size, share_embeddings="decoder", **sizes)
        else:
            model = _peer_model(kind, args.vocab_size, **sizes)
        results[kind] = measure(model, data, labels, args.steps, args.warmup, args.jit_compile)
        print(f"{kind:10s} {results[kind]:10.0f} target tokens/s", flush=True)
    if "ours" in results:
        for kind, value in results.items():
            if kind != "ours":
                print(f"ours / {kind}: {results['ours'] / value:.2f}x")


if __name__ == "__main__":
    main()
