"""Score an exported SavedModel as TensorFlow Serving would run it: raw text in, BLEU out.

    kt-evaluate-export models/transformer/1 \\
        --source ../shared/data/multi30k/test_2016_flickr.en.gz \\
        --reference ../shared/data/multi30k/test_2016_flickr.de.gz \\
        --tok-reference ../shared/data/multi30k/test_2016_flickr.lc.norm.tok.de

Sends the source sentences through the export's `serving_default` signature
in batches, as a client would, and scores the translations with sacrebleu:
`bleu` with its standard settings (13a tokenization, case-sensitive: what a
reader of the German sees), `bleu_uncased` the same without case, and with
`--tok-reference` the lowercased tokenized protocol of published Multi30k
figures (the translations lowercased and Moses-style tokenized by the
library's in-graph tokenizer, scored with no further tokenization).
Prints the figures as JSON, and writes the translations with `--output`.
"""

import argparse
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import sacrebleu  # noqa: E402
import tensorflow as tf  # noqa: E402

from keras_transformer.data import read_lines  # noqa: E402
from keras_transformer.text import moses_tokenize  # noqa: E402


def translate(export_dir, sources, batch_size=100):
    """The `serving_default` translations of `sources`, in order."""
    serve = tf.saved_model.load(export_dir).signatures["serving_default"]
    out = []
    for begin in range(0, len(sources), batch_size):
        batch = tf.constant(sources[begin : begin + batch_size], tf.string)
        out.extend(t.decode("utf-8") for t in serve(text=batch)["translation"].numpy())
    return out


def score(translations, references, tok_references=None, target_lang="de"):
    """sacrebleu figures of `translations` (see the module docstring)."""
    results = {
        "bleu": sacrebleu.corpus_bleu(translations, [references]).score,
        "bleu_uncased": sacrebleu.corpus_bleu(translations, [references], lowercase=True).score,
    }
    if tok_references is not None:
        tokenized = moses_tokenize(tf.constant(translations, tf.string), target_lang, lowercase=True)
        hyps = [t.decode("utf-8") for t in tokenized.numpy()]
        refs = [r.strip() for r in tok_references]
        results["bleu_tok"] = sacrebleu.corpus_bleu(hyps, [refs], tokenize="none", force=True).score
    return results


def evaluate(argv=None) -> dict:
    """Parses the command line, translates through the export and returns the figures it prints."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("export_dir", help="a version directory, e.g. models/transformer/1")
    p.add_argument("--source", required=True, help="raw source sentences, one a line (plain or gzip)")
    p.add_argument("--reference", required=True, help="raw reference translations, aligned with --source")
    p.add_argument("--tok-reference", help="lowercased, tokenized references (*.lc.norm.tok.*), for bleu_tok")
    p.add_argument("--target-lang", default="de", help="the Moses rules for bleu_tok")
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--output", help="write the translations here, one a line")
    args = p.parse_args(argv)
    sources, references = read_lines(args.source), read_lines(args.reference)
    tok_references = read_lines(args.tok_reference) if args.tok_reference else None
    for name, lines in (("--reference", references), ("--tok-reference", tok_references)):
        if lines is not None and len(lines) != len(sources):
            p.error(f"{name} has {len(lines)} lines but --source has {len(sources)}")
    start = time.time()
    translations = translate(args.export_dir, sources, args.batch_size)
    results = {"export": args.export_dir, "sentences": len(sources), "translate_seconds": round(time.time() - start, 1)}
    results.update(score(translations, references, tok_references, args.target_lang))
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            f.write("".join(t + "\n" for t in translations))
    print(json.dumps(results, indent=2))
    return results


def main(argv=None) -> int:
    """The command line (`kt-evaluate-export`): exit status 0 once the figures are printed."""
    evaluate(argv)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
