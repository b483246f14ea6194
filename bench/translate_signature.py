"""What choosing the decoding per request costs: the exported `translate`
signature against `serving_default` at the same settings, and its other kinds
of decoding, in the same run.

    python bench/translate_signature.py                 # tiny preset, random weights
    python bench/translate_signature.py --batch-sizes 1 32 --repeats 5

One SavedModel is exported (text processing "none", a vocabulary of made-up
words) and loaded; every contender translates the same sentences, in turn,
`--repeats` times (bench/timing.median_ms). The random model's [END]
embedding is zeroed, so its [END] logit (0) is never the largest and seldom
drawn: every sentence runs to its limit (source length + `--max-extra-length`)
and each contender does the same number of steps.

Contenders (all through the loaded signatures, as a server calls them):
- serving_default: the export's fixed beam search (beam 4, alpha 0.6);
- translate beam4: the same settings through `translate`, one value per
  sentence: the per-sentence checks, the partition into beam and sampled
  rows, the per-sentence beam sizes and length penalties, the stitching;
- translate beam4 n-best 4: the same search, all four hypotheses detokenized;
- translate greedy, translate sampled (temperature 0.8, top-k 50, top-p 0.9),
  translate sampled x4 (four samples a sentence);
- translate mixed: half the sentences beam 4, half sampled (both loops run);
- translate beam2, and beam2 with one beam8: one sentence asking for a wider
  beam widens the whole batch's search.

Prints milliseconds per batch (median) and each contender's time over
serving_default's.
"""

import argparse
import os
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import keras_transformer as kt  # noqa: E402
from bench.timing import median_ms  # noqa: E402
from keras_transformer.decoding.per_sentence import CONTROLS  # noqa: E402
from keras_transformer.export.saved_model import export_saved_model  # noqa: E402
from keras_transformer.text.tokens import END_ID  # noqa: E402
from keras_transformer.text.tokens import RESERVED_TOKENS  # noqa: E402


def controls(batch, **values):
    out = {}
    for name, (dtype, default) in CONTROLS.items():
        value = values.get(name, default)
        out[name] = tf.constant(value if np.ndim(value) else [value] * batch, dtype)
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="tiny")
    p.add_argument("--vocab-size", type=int, default=6000)
    p.add_argument("--source-length", type=int, default=12, help="words per sentence")
    p.add_argument("--max-extra-length", type=int, default=12)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16])
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()

    words = [f"w{i}" for i in range(args.vocab_size - len(RESERVED_TOKENS))]
    vocab = list(RESERVED_TOKENS) + words
    model = kt.Transformer.from_preset(args.preset, len(vocab), len(vocab), max_length=128)
    model.build()
    for weight in model.weights:  # the (tied) embeddings: no [END], so every sentence runs to its limit
        if tuple(weight.shape) == (len(vocab), model.d_model):
            weight.assign(tf.tensor_scatter_nd_update(weight, [[END_ID]], tf.zeros([1, model.d_model])))
    base = tempfile.mkdtemp()
    path = export_saved_model(model, vocab, base, beam_size=4, alpha=0.6, max_extra_length=args.max_extra_length,
                              text_processing="none", warmup_sentences=())
    loaded = tf.saved_model.load(path)
    default, translate = loaded.signatures["serving_default"], loaded.signatures["translate"]
    rng = np.random.default_rng(0)
    print(f"{args.preset} preset, {len(vocab)} tokens, {args.source_length} words a sentence, "
          f"max_extra_length {args.max_extra_length}, medians of {args.repeats}")
    print("| batch | contender | ms per batch | / serving_default |")
    print("| --- | --- | --- | --- |")
    for batch in args.batch_sizes:
        text = tf.constant([" ".join(rng.choice(words, args.source_length)) for _ in range(batch)])
        beam = dict(beam_size=4, alpha=0.6, max_extra_length=args.max_extra_length)
        sampled = dict(beam_size=1, temperature=0.8, top_k=50, top_p=0.9, seed=list(range(batch)),
                       max_extra_length=args.max_extra_length)
        half = batch // 2
        mixed = {name: [beam.get(name, CONTROLS[name][1])] * half + [np.broadcast_to(sampled.get(
                 name, CONTROLS[name][1]), [batch])[i] for i in range(half, batch)] for name in CONTROLS}
        contenders = {
            "serving_default": lambda: default(text=text),
            "translate beam4": lambda: translate(text=text, **controls(batch, **beam)),
            "translate beam4 n-best 4": lambda: translate(text=text, **controls(batch, **beam, num_return=4)),
            "translate greedy": lambda: translate(text=text, **controls(batch, **{**beam, "beam_size": 1})),
            "translate sampled": lambda: translate(text=text, **controls(batch, **sampled)),
            "translate sampled x4": lambda: translate(text=text, **controls(batch, **sampled, num_return=4)),
        }
        if half:
            contenders["translate mixed"] = lambda: translate(text=text, **controls(batch, **mixed))
            contenders["translate beam2"] = lambda: translate(text=text, **controls(batch, **{**beam, "beam_size": 2}))
            one_wide = {**beam, "beam_size": [8] + [2] * (batch - 1)}
            contenders["translate beam2, one beam8"] = lambda: translate(text=text, **controls(batch, **one_wide))
        times = median_ms(contenders, args.repeats)
        for name, ms in times.items():
            print(f"| {batch} | {name} | {ms:.1f} | {ms / times['serving_default']:.2f}x |")


if __name__ == "__main__":
    main()
