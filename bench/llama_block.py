"""Training throughput of a Llama-style block: this library's `EncoderLayer`
with the Llama options (pre-norm RMSNorm, grouped-query rotary causal
self-attention without biases, SwiGLU) against keras-hub's
`LlamaTransformerDecoder` at the same sizes, in one run.

    pip install keras-hub        # (make bench installs it)
    python bench/llama_block.py
    python bench/llama_block.py --d-model 512 --num-heads 8 --num-key-value-heads 2 --d-ff 1376 --length 256

Each contender is a Keras model of `--num-layers` blocks on random float
inputs [B, T, D], trained with Adam on a mean squared error by
`train_on_batch`, both compiled alike (`--jit-compile`). The steps are timed
in turns (bench/timing.py), so a machine that slows part-way slows both. The
two models first get the same weights and must give the same outputs (the
same computation, not two different ones timed), then the median
milliseconds per step and the tokens per second are printed with their ratio.
"""

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_transformer as kt  # noqa: E402
from timing import median_ms  # noqa: E402  (bench/timing.py)


def ours(args):
    inputs = keras.Input((None, args.d_model))
    x = inputs
    for i in range(args.num_layers):
        x = kt.EncoderLayer(
            args.num_heads, args.d_ff, dropout=0.0, norm_first=True, norm="rms", feed_forward="swiglu",
            use_bias=False, num_key_value_heads=args.num_key_value_heads, position_embedding="rotary",
            layer_norm_epsilon=1e-5, name=f"block_{i}",
        )(x, use_causal_mask=True)
    return keras.Model(inputs, x, name="keras_transformer")


def keras_hubs(args):
    from keras_hub.src.models.llama.llama_decoder import LlamaTransformerDecoder

    inputs = keras.Input((None, args.d_model))
    x = inputs
    for i in range(args.num_layers):
        x = LlamaTransformerDecoder(
            intermediate_dim=args.d_ff, num_query_heads=args.num_heads,
            num_key_value_heads=args.num_key_value_heads, layer_norm_epsilon=1e-5, dropout=0.0, name=f"block_{i}",
        )(x)
    return keras.Model(inputs, x, name="keras_hub")


def copy_weights(source, target, args):
    """keras-hub's block weights into ours: per block, its query/key/value/output
    kernels (Keras's [D, N, H] layout, as ours), its feed-forward gate and
    intermediate kernels into the halves of our one inner kernel, its output
    kernel, its two norm scales."""
    h = args.d_model // args.num_heads
    for i in range(args.num_layers):
        hub = {w.path.split("/", 1)[1]: keras.ops.convert_to_numpy(w) for w in source.get_layer(f"block_{i}").weights}
        block = target.get_layer(f"block_{i}")
        attention = block.self_attention
        names = sorted(hub)

        def pick(*parts):
            found = [n for n in names if all(p in n for p in parts)]
            if len(found) != 1:
                raise KeyError(f"keras-hub weight {parts} not found once in {names}")
            return hub[found[0]]

        attention.query_kernel.assign(pick("query", "kernel").reshape(args.d_model, args.num_heads, h))
        attention.key_kernel.assign(pick("key", "kernel").reshape(args.d_model, args.num_key_value_heads, h))
        attention.value_kernel.assign(pick("value", "kernel").reshape(args.d_model, args.num_key_value_heads, h))
        attention.output_kernel.assign(pick("attention_output", "kernel").reshape(args.num_heads, h, args.d_model))
        gate, up = pick("feedforward_gate_dense", "kernel"), pick("feedforward_intermediate_dense", "kernel")
        block.feed_forward.inner.kernel.assign(np.concatenate([gate, up], axis=1))
        block.feed_forward.outer.kernel.assign(pick("feedforward_output_dense", "kernel"))
        block.self_attention_norm.scale.assign(pick("self_attention_layernorm", "scale"))
        block.feed_forward_norm.scale.assign(pick("feedforward_layernorm", "scale"))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--num-layers", type=int, default=2)
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--num-heads", type=int, default=8)
    p.add_argument("--num-key-value-heads", type=int, default=2)
    p.add_argument("--d-ff", type=int, default=688)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--length", type=int, default=128)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--jit-compile", choices=["auto", "true", "false"], default="auto")
    args = p.parse_args()
    jit = {"auto": "auto", "true": True, "false": False}[args.jit_compile]
    keras.utils.set_random_seed(0)

    x = np.random.normal(size=(args.batch_size, args.length, args.d_model)).astype("float32")
    y = np.random.normal(size=x.shape).astype("float32")
    models = {"keras_transformer": ours(args), "keras-hub": keras_hubs(args)}
    copy_weights(models["keras-hub"], models["keras_transformer"], args)
    difference = np.abs(np.asarray(models["keras_transformer"](x)) - np.asarray(models["keras-hub"](x))).max()
    print(f"backend {keras.backend.backend()}, {args.num_layers} blocks, d_model {args.d_model}, "
          f"{args.num_heads} query / {args.num_key_value_heads} key-value heads, d_ff {args.d_ff}, "
          f"batch {args.batch_size} x {args.length} tokens, jit_compile={args.jit_compile}")
    print("parameters: " + ", ".join(f"{n} {m.count_params():,}" for n, m in models.items()))
    print(f"same weights, largest output difference: {difference:.2e}")
    if difference > 1e-3:
        raise SystemExit("the two blocks do not compute the same function: timing them would compare different work")
    for model in models.values():
        model.compile(optimizer=keras.optimizers.Adam(1e-4), loss="mse", jit_compile=jit)
    ms = median_ms({n: (lambda m=m: m.train_on_batch(x, y)) for n, m in models.items()}, args.repeats, warmup=2)
    tokens = args.batch_size * args.length
    for name, value in ms.items():
        print(f"{name:>18}: {value:8.1f} ms/step  {tokens / value * 1000:10,.0f} tokens/s")
    print(f"keras-hub / keras_transformer time: {ms['keras-hub'] / ms['keras_transformer']:.2f}x")


if __name__ == "__main__":
    main()
