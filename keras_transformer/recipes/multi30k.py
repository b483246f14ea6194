"""Train a Transformer on Multi30k (task 1) English->German and report BLEU.

    make multi30k                                  # the recipe (multi30k_en_de.json), 60 minutes
    kt-train-multi30k --run-dir RUN                # = python -m keras_transformer.recipes.multi30k
    kt-train-multi30k --run-dir RUN --lr-scale 1.3 # the recipe with one change
    kt-train-multi30k --run-dir RUN --recipe other.json
    kt-train-multi30k --run-dir RUN --evaluate-only

Trains within a wall-clock budget, averages the last checkpoints, saves
`model.keras` and `vocab.txt` in the run directory, translates
test_2016_flickr and prints BLEU (sacrebleu). Two kinds of text:

- default: the lowercased, tokenized files (`*.lc.norm.tok.*`), the text of
  published Multi30k results;
- `--cased`: the raw, true-cased files (`*.gz`), tokenized by the library's
  in-graph Moses-style tokenizer with case kept (the same function an
  export runs on requests), so the model writes German with its capitals.

BLEU, three ways: "tok" against the lowercased tokenized references with no
further tokenization (the protocol of published Multi30k results; a cased
model's output is detokenized, lowercased and tokenized again, as those
references were made); "raw", the output detokenized as the export does,
against the raw references with sacrebleu's standard settings (13a,
case-sensitive: what a reader sees), and case-insensitively; and
"raw_sacremoses", detokenized by sacremoses instead (earlier runs' figure).

Run the same command again after an interruption: it resumes at the step it
reached. Evaluation decodes with beam search (`--beam-size 1`: greedy).
"""

import argparse
import json
import math
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import sacrebleu  # noqa: E402
import tensorflow as tf  # noqa: E402
from sacremoses import MosesDetokenizer  # noqa: E402

import keras_transformer as kt  # noqa: E402
from keras_transformer import data  # noqa: E402
from keras_transformer import training  # noqa: E402
from keras_transformer.text import is_lowercase_vocabulary  # noqa: E402
from keras_transformer.text import moses_detokenize  # noqa: E402
from keras_transformer.text import moses_tokenize  # noqa: E402
from keras_transformer.decoding import Translator  # noqa: E402
from keras_transformer.recipes.evaluate_export import score  # noqa: E402

RECIPE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "multi30k_en_de.json")
# Beside the project (relative to the working directory), as the tests expect it, unless $MULTI30K_DIR says otherwise.
DEFAULT_DATA_DIR = os.environ.get("MULTI30K_DIR", os.path.join("..", "shared", "data", "multi30k"))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--recipe", default=RECIPE,
        help="a JSON file of settings (default: the recipe, multi30k_en_de.json beside this module); "
             "flags given beside it override it",
    )
    p.add_argument("--data-dir", default=DEFAULT_DATA_DIR,
                   help="Multi30k task-1 directory (default: $MULTI30K_DIR, else ../shared/data/multi30k)")
    p.add_argument("--run-dir", default="runs/multi30k-en-de", help="model, vocabulary, logs, checkpoints")
    p.add_argument("--source-lang", default="en")
    p.add_argument("--target-lang", default="de")
    p.add_argument(
        "--cased", action=argparse.BooleanOptionalAction, default=False,
        help="train on the raw, true-cased text (Moses-style tokenized in the graph, case kept)",
    )
    p.add_argument("--preset", default="tiny", choices=sorted(kt.PRESETS))
    p.add_argument("--dropout", type=float, default=None, help="override the preset's dropout")
    p.add_argument(
        "--attention-dropout", type=float, default=None,
        help="dropout on attention probabilities (default: the same as --dropout)",
    )
    # The variants since the paper (docs/variants.md); unset: the preset's (the paper's) choice.
    p.add_argument("--d-ff", type=int, default=None, help="override the preset's feed-forward size")
    p.add_argument("--norm-first", action=argparse.BooleanOptionalAction, default=None,
                   help="pre-norm blocks (default: the paper's post-norm)")
    p.add_argument("--norm", choices=["layer", "rms"], default=None, help="LayerNorm (default) or RMSNorm")
    p.add_argument("--feed-forward", choices=["relu", "gelu", "swiglu", "geglu"], default=None,
                   help="the feed-forward network (default: the paper's ReLU)")
    p.add_argument("--position-embedding", choices=["sinusoidal", "rotary"], default=None,
                   help="the paper's sinusoids added to the embeddings (default), or rotary embeddings")
    p.add_argument("--num-key-value-heads", type=int, default=None, help="grouped-query attention")
    p.add_argument("--minutes", type=float, default=60.0, help="wall-clock training budget")
    p.add_argument("--epochs", type=int, default=1000, help="upper bound on epochs")
    p.add_argument("--tokens-per-batch", type=int, default=4096)
    p.add_argument("--max-length", type=int, default=128, help="longest pair kept, in tokens")
    p.add_argument("--vocab-size", type=int, default=10000, help="joint WordPiece vocabulary size")
    p.add_argument("--warmup-steps", type=int, default=1000)
    p.add_argument(
        "--schedule", default="inverse_sqrt", choices=["inverse_sqrt", "linear"],
        help="after warm-up: the paper's inverse square root, or linear decay to zero at the end of --minutes",
    )
    p.add_argument("--lr-scale", type=float, default=1.0, help="multiplies the paper's schedule")
    p.add_argument("--label-smoothing", type=float, default=0.1)
    p.add_argument("--average-last", type=int, default=10, help="epoch checkpoints to average")
    p.add_argument("--early-stopping-patience", type=int, default=None)
    p.add_argument("--strategy", default="default", choices=training.STRATEGY_CHOICES)
    p.add_argument("--mixed-precision", action=argparse.BooleanOptionalAction, default=False,
                   help="mixed_float16 on GPU; mixed_bfloat16 on a CPU with bfloat16 instructions, else float32")
    p.add_argument("--jit-compile", action=argparse.BooleanOptionalAction, default=False,
                   help="XLA-compile the training step")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--evaluate-only", action=argparse.BooleanOptionalAction, default=False,
                   help="skip training; evaluate run-dir/model.keras")
    p.add_argument(
        "--eval-split", default="test_2016_flickr", choices=["test_2016_flickr", "val"],
        help="the split to translate and score (val for choosing settings)",
    )
    p.add_argument(
        "--eval-checkpoints", type=int, default=None,
        help="with --evaluate-only: score the average of the run's last N epoch checkpoints",
    )
    p.add_argument("--eval-batch-size", type=int, default=100)
    p.add_argument("--beam-size", type=int, default=4, help="1 for greedy decoding")
    p.add_argument("--alpha", type=float, default=0.6, help="beam search length penalty")
    recipe_path = p.parse_known_args(argv)[0].recipe
    if recipe_path:
        p.set_defaults(**read_recipe(p, recipe_path))
    return p.parse_args(argv)


def read_recipe(parser, path):
    """The settings of a recipe file: keys are the flags' names with `_` for `-` (`"lr_scale": 1.1`)."""
    with open(path, encoding="utf-8") as f:
        recipe = json.load(f)
    if not isinstance(recipe, dict):
        parser.error(f"recipe {path}: expected a JSON object of settings, got {type(recipe).__name__}")
    known = {action.dest: action for action in parser._actions if action.dest not in ("help", "recipe")}
    unknown = sorted(set(recipe) - set(known))
    if unknown:
        parser.error(f"recipe {path}: unknown settings {unknown}; known: {sorted(known)}")
    settings = {}
    for key, value in recipe.items():
        action = known[key]
        try:
            settings[key] = _setting(action, value)
        except ValueError:
            kind = "true or false" if action.nargs == 0 else getattr(action.type, "__name__", "str")
            parser.error(f"recipe {path}: {key!r} must be {kind}, got {value!r}")
        if action.choices is not None and value not in action.choices:
            parser.error(f"recipe {path}: {key!r} must be one of {sorted(action.choices)}, got {value!r}")
    return settings


def _setting(action, value):
    """A recipe value as its flag would give it; ValueError when JSON's type is not the flag's."""
    if action.nargs == 0:  # an on/off flag
        if not isinstance(value, bool):
            raise ValueError(value)
        return value
    if value is None and action.default is None:
        return None
    kind = action.type or str
    if isinstance(value, bool) or value is None:
        raise ValueError(value)
    if kind is float and isinstance(value, (int, float)) and math.isfinite(value):
        return float(value)  # an int where a float is wanted reads as that float; NaN and infinities do not
    if kind in (int, str) and isinstance(value, kind):
        return value
    raise ValueError(value)


def split_paths(data_dir, split, lang):
    return os.path.join(data_dir, f"{split}.lc.norm.tok.{lang}"), os.path.join(data_dir, f"{split}.{lang}.gz")


def read_split(args, split):
    """(source, target) sentence lists of a split, as the model reads them."""
    if not args.cased:
        return data.read_parallel(
            *(split_paths(args.data_dir, split, lang)[0] for lang in (args.source_lang, args.target_lang))
        )
    raw = data.read_parallel(
        *(split_paths(args.data_dir, split, lang)[1] for lang in (args.source_lang, args.target_lang))
    )
    return tuple(cased_tokens(lines, lang) for lines, lang in zip(raw, (args.source_lang, args.target_lang)))


def cased_tokens(lines, lang):
    return _strings(moses_tokenize(tf.constant(lines, tf.string), lang, lowercase=False))


def _strings(tensor):
    return [t.decode("utf-8") for t in tensor.numpy()]


def load_tokenizer(args, train_source, train_target):
    path = os.path.join(args.run_dir, "vocab.txt")
    if os.path.exists(path):
        tokenizer = data.WordPieceTokenizer.load(path)
        if is_lowercase_vocabulary(tokenizer.vocab) == args.cased:
            raise SystemExit(
                f"{path} was learned from {'lowercased' if args.cased else 'cased'} text, but this run is "
                f"{'cased' if args.cased else 'lowercased'}: use another --run-dir"
            )
        return tokenizer
    start = time.time()
    tokenizer = data.WordPieceTokenizer.learn(train_source + train_target, vocab_size=args.vocab_size)
    tokenizer.save(path)
    print(f"learned a {tokenizer.vocab_size}-token joint vocabulary in {time.time() - start:.0f} s -> {path}")
    return tokenizer


def train_model(args, tokenizer, train, val):
    strategy = training.make_strategy(args.strategy)
    # Tokenize once: the cache keeps later passes from re-tokenizing 29,000 pairs
    # on the cores that train (2.6 of 5.3 CPU-seconds a pass).
    pairs = data.tokenized_pairs(tokenizer, *train, max_length=args.max_length).cache()
    one_pass = data.token_batches(pairs, args.tokens_per_batch, args.max_length, shuffle=False)
    stats = data.padding_stats(one_pass)
    print(
        f"one pass: {stats['batches']} batches of <= {args.tokens_per_batch} tokens, "
        f"{stats['target_tokens']} target tokens; padding: source {stats['source_padding']:.1%}, "
        f"target {stats['target_padding']:.1%}"
    )
    replicas = strategy.num_replicas_in_sync
    stream = data.token_batches(
        pairs, args.tokens_per_batch, args.max_length, shuffle=True, repeat=True, seed=args.seed,
        pad_to_bucket_boundary=args.jit_compile, batch_multiple=replicas,
    )
    val_batches = data.token_batches(
        data.tokenized_pairs(tokenizer, *val, max_length=args.max_length),
        args.tokens_per_batch, args.max_length, shuffle=False, batch_multiple=replicas,
    ).cache()
    # Bucketing leaves the count unknown, and Keras warns "Your input ran out
    # of data" at the end of the first validation unless it is given.
    val_count = data.padding_stats(val_batches)["batches"]
    val_batches = val_batches.apply(tf.data.experimental.assert_cardinality(val_count))
    overrides = {}
    if args.dropout is not None:
        overrides["dropout"] = args.dropout
    if args.attention_dropout is not None:
        overrides["attention_dropout"] = args.attention_dropout
    for name in ("d_ff", "norm_first", "norm", "feed_forward", "position_embedding", "num_key_value_heads"):
        if getattr(args, name) is not None:
            overrides[name] = getattr(args, name)
    with strategy.scope():
        model = kt.Transformer.from_preset(
            args.preset, tokenizer.vocab_size, tokenizer.vocab_size, max_length=args.max_length + 64, **overrides
        )
        model.build()
        training.compile_for_translation(
            model, warmup_steps=args.warmup_steps, learning_rate_scale=args.lr_scale,
            label_smoothing=args.label_smoothing, jit_compile=args.jit_compile, schedule=args.schedule,
        )
    print(f"{args.preset}: {model.count_params():,} parameters, dtype policy {model.dtype_policy.name}")
    start = time.time()
    if args.strategy == "multi-worker":
        training.train_custom_loop(model, strategy, stream, stats["batches"], args.epochs, args.run_dir)
    else:
        training.train(
            model, stream, stats["batches"], args.epochs, args.run_dir, validation_data=val_batches,
            minutes=args.minutes, early_stopping_patience=args.early_stopping_patience,
            keep_checkpoints=args.average_last,
        )
    minutes = (time.time() - start) / 60
    used = training.average_last_checkpoints(model, args.run_dir, args.average_last)
    print(
        f"trained {int(model.optimizer.iterations.numpy())} steps in {minutes:.1f} min; "
        f"averaged {len(used)} checkpoints"
    )
    if strategy.extended.should_checkpoint:
        path = os.path.join(args.run_dir, "model.keras")
        model.save(path + ".tmp.keras")
        os.replace(path + ".tmp.keras", path)
        print(f"saved {path}")
    return model, minutes


def evaluate(args, model, tokenizer):
    tok_path, raw_path = split_paths(args.data_dir, args.eval_split, args.target_lang)
    sources, _ = read_split(args, args.eval_split)
    tok_refs = data.read_lines(tok_path)
    raw_refs = data.read_lines(raw_path)
    start = time.time()
    translator = Translator(model, tokenizer, beam_size=args.beam_size, alpha=args.alpha)
    hyps = translator.translate(sources, batch_size=args.eval_batch_size)
    seconds = time.time() - start
    # As the export does: the in-graph detokenizer on the model's output
    # (a lowercased model's first letter capitalized).
    raw_hyps = _strings(moses_detokenize(tf.constant(hyps, tf.string), capitalize=not args.cased))
    detok = MosesDetokenizer(lang=args.target_lang)
    sacremoses_hyps = [detok.detokenize(h.split()) for h in hyps]
    # Scored as an export is (evaluate_export.score). A cased model's tok
    # figure re-tokenizes its lowercased detokenized output, as the lowercased
    # references were made (lowercased first, then tokenized: "auf. beide",
    # where Moses on the cased text writes "auf . Beide").
    scores = score(raw_hyps, raw_refs, tok_refs if args.cased else None, args.target_lang)
    if not args.cased:
        scores["bleu_tok"] = sacrebleu.corpus_bleu(hyps, [tok_refs], tokenize="none", force=True).score
    results = {
        "decoding": "greedy" if args.beam_size == 1 else f"beam {args.beam_size}, alpha {args.alpha}",
        "split": args.eval_split,
        "text": "cased" if args.cased else "lowercased",
        "sentences": len(sources),
        "translate_seconds": round(seconds, 1),
        "bleu_tok": scores["bleu_tok"],
        "bleu_raw": scores["bleu"],
        "bleu_raw_uncased": scores["bleu_uncased"],
        # The output detokenized by sacremoses instead (the figure of earlier runs' logs).
        "bleu_raw_sacremoses": sacrebleu.corpus_bleu(sacremoses_hyps, [raw_refs]).score,
    }
    for i in range(3):
        print(f"  src: {sources[i]}\n  hyp: {raw_hyps[i]}\n  ref: {raw_refs[i]}")
    return results


def main(argv=None):
    args = parse_args(argv)
    os.makedirs(args.run_dir, exist_ok=True)
    keras.utils.set_random_seed(args.seed)
    policy = training.set_mixed_precision(args.mixed_precision)
    train = read_split(args, "train")
    tokenizer = load_tokenizer(args, *train)
    results = {"preset": args.preset, "policy": policy}
    if args.evaluate_only:
        model = keras.saving.load_model(os.path.join(args.run_dir, "model.keras"))
        if args.eval_checkpoints:
            used = training.average_last_checkpoints(model, args.run_dir, args.eval_checkpoints)
            results["checkpoints_averaged"] = len(used)
    else:
        model, minutes = train_model(args, tokenizer, train, read_split(args, "val"))
        results.update(train_minutes=round(minutes, 1), steps=int(model.optimizer.iterations.numpy()))
    results.update(evaluate(args, model, tokenizer))
    print(json.dumps(results, indent=2))
    name = "greedy" if args.beam_size == 1 else f"beam{args.beam_size}"
    if args.eval_split != "test_2016_flickr":
        name += f"-{args.eval_split}"
    if args.evaluate_only and args.eval_checkpoints:
        name += f"-avg{args.eval_checkpoints}"
    with open(os.path.join(args.run_dir, f"results-{name}.json"), "w") as f:
        json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
