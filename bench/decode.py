"""Decoding speed: key/value-cached decoding against re-running the decoder
over the whole prefix at every step, in the same run.

    python bench/decode.py                       # tiny preset, random weights
    python bench/decode.py --lengths 16 64 --batch-sizes 32

Generation is forced to the full output length (no [END] can stop it), so
every configuration does the same number of steps. Reports sentences per
second and milliseconds per generated token (per sentence) of:

- cached: the default, a self-attention cache that grows in chunks;
- cached XLA: the same in `tf.function(jit_compile=True)`, where the cache is
  preallocated to the full length (XLA needs fixed shapes);
- uncached: the decoder re-run over the whole prefix at every step;

and the uncached / cached time ratios.

Grouped-query attention against multi-head attention at the same model size:

    python bench/decode.py --key-value-heads 8 2 1

generates with a `CausalLM` (the `llama_tiny` preset's sizes, 8 query heads;
`--d-model`, `--num-layers` to change them) once per number of key/value heads,
in XLA-compiled `tf.while_loop`s over a preallocated cache, timed in turns,
and prints each cache's size in bytes and milliseconds per generated token.
"""

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import keras_transformer as kt  # noqa: E402
from keras_transformer.decoding import beam_search  # noqa: E402
from keras_transformer.decoding import greedy_decode  # noqa: E402

NEVER = -1  # an end id no step can produce


def decoder_fn(model, method, use_cache, length, jit_compile=False):
    if method == "greedy":
        fn = lambda s: greedy_decode(model, s, length, end_id=NEVER, use_cache=use_cache)  # noqa: E731
    else:
        fn = lambda s: beam_search(model, s, length, beam_size=4, end_id=NEVER, use_cache=use_cache)["ids"]  # noqa: E731
    return tf.function(fn, jit_compile=jit_compile)


def time_call(fn, source, repeats):
    fn(source)  # trace and warm up
    start = time.perf_counter()
    for _ in range(repeats):
        fn(source)
    return (time.perf_counter() - start) / repeats


def grouped_query(args):
    """Cache bytes and ms per token of `CausalLM` generation for each number of key/value heads."""
    from timing import median_ms  # (bench/timing.py)

    sizes = dict(kt.models.CAUSAL_LM_PRESETS["llama_tiny"])
    sizes.update(num_layers=args.num_layers or sizes["num_layers"], d_model=args.d_model or sizes["d_model"])
    length, batch = max(args.lengths), max(args.batch_sizes)
    contenders, caches, params = {}, {}, {}
    for heads in args.key_value_heads:
        keras.utils.set_random_seed(0)
        lm = kt.CausalLM(args.vocab_size, **{**sizes, "num_key_value_heads": heads})
        lm.build()
        caches[heads] = sum(int(np.prod(c.shape)) * c.dtype.size for c in lm.init_cache(batch, length))
        params[heads] = lm.count_params()

        def generate(lm=lm):
            cache = lm.init_cache(batch, length)
            token = tf.ones([batch, 1], tf.int32)

            def step(i, token, cache):
                logits, cache = lm.call_with_cache(token, cache, i)
                return i + 1, tf.argmax(logits[:, -1:], -1, output_type=tf.int32), cache

            return tf.while_loop(lambda i, *_: i < length, step, (tf.constant(0), token, cache))[1]

        fn = tf.function(generate, jit_compile=not args.no_xla)
        contenders[heads] = fn
    ms = median_ms(contenders, args.repeats, warmup=1)
    full = args.key_value_heads[0]
    print(f"CausalLM {sizes['num_layers']} layers, d_model {sizes['d_model']}, {sizes['num_heads']} query heads; "
          f"batch {batch}, {length} tokens generated, XLA {not args.no_xla}")
    print("| key/value heads | parameters | cache bytes | cache / first | ms per token | time / first |")
    print("| --- | --- | --- | --- | --- | --- |")
    for heads in args.key_value_heads:
        print(f"| {heads} | {params[heads]:,} | {caches[heads]:,} | {caches[heads] / caches[full]:.3f} "
              f"| {ms[heads] / length:.3f} | {ms[heads] / ms[full]:.2f}x |", flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="tiny")
    p.add_argument("--vocab-size", type=int, default=6049)
    p.add_argument("--source-length", type=int, default=16)
    p.add_argument("--lengths", type=int, nargs="+", default=[16, 32, 64, 128])
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32])
    p.add_argument("--methods", nargs="+", default=["greedy", "beam4"])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--no-xla", action="store_true", help="skip the XLA-compiled cached decoding")
    p.add_argument("--key-value-heads", type=int, nargs="+",
                   help="compare grouped-query attention: CausalLM generation with each number of key/value heads")
    p.add_argument("--num-layers", type=int, help="with --key-value-heads (default: llama_tiny's)")
    p.add_argument("--d-model", type=int, help="with --key-value-heads (default: llama_tiny's)")
    args = p.parse_args()
    if args.key_value_heads:
        return grouped_query(args)

    keras.utils.set_random_seed(0)
    model = kt.Transformer.from_preset(args.preset, args.vocab_size, args.vocab_size, max_length=256)
    model.build()
    rng = np.random.default_rng(0)
    print(
        "| method | batch | output length | cached sent/s | cached ms/token | cached XLA ms/token "
        "| uncached sent/s | uncached ms/token | uncached / cached | uncached / cached XLA |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for method in args.methods:
        for batch in args.batch_sizes:
            source = tf.constant(rng.integers(4, args.vocab_size, size=(batch, args.source_length)), tf.int32)
            for length in args.lengths:
                cached = time_call(decoder_fn(model, method, True, length), source, args.repeats)
                xla = None if args.no_xla else time_call(
                    decoder_fn(model, method, True, length, jit_compile=True), source, args.repeats
                )
                uncached = time_call(decoder_fn(model, method, False, length), source, args.repeats)
                cells = [
                    method, batch, length, f"{batch / cached:,.1f}", f"{cached / length * 1e3:.2f}",
                    "-" if xla is None else f"{xla / length * 1e3:.2f}",
                    f"{batch / uncached:,.1f}", f"{uncached / length * 1e3:.2f}", f"{uncached / cached:.2f}x",
                    "-" if xla is None else f"{uncached / xla:.2f}x",
                ]
                print("| " + " | ".join(map(str, cells)) + " |", flush=True)


if __name__ == "__main__":
    main()
