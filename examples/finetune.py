"""Fine-tune a trained translation model on new parallel data with model.fit.

Multi30k English->German model, fine-tuned to English->French:

    python examples/finetune.py --model runs/multi30k-en-de/model.keras --vocab runs/multi30k-en-de/vocab.txt \\
        --target-lang fr --extend-vocab --minutes 15 --run-dir runs/finetune-en-fr

Any parallel files:

    python examples/finetune.py --model run/model.keras --vocab run/vocab.txt \\
        --train-source new.en --train-target new.de --test-source test.en --test-target test.de

Steps: load the model (a `.keras` file, or `--preset` with a `--weights`
checkpoint) and its vocabulary; report how the new data tokenizes with it
and refuse where too much of it is [UNK] (or, with `--extend-vocab`, learn
the new data's word pieces, append them to the vocabulary and carry the
model over); BLEU on the test set before; freeze what is asked; train with
a restarted, lower warm-up schedule (checkpoints, resumable, a time budget);
BLEU after. The result (`model.keras` and `vocab.txt` in `--run-dir`)
exports and serves like a model trained from scratch.
"""

import argparse
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import sacrebleu  # noqa: E402

from keras_transformer import data  # noqa: E402
from keras_transformer import models  # noqa: E402
from keras_transformer import training  # noqa: E402
from keras_transformer.decoding import Translator  # noqa: E402
from keras_transformer.training import finetune  # noqa: E402

DEFAULT_DATA_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared",
                                "data", "multi30k")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="the trained model, a .keras file")
    p.add_argument("--preset", help="instead of --model: build this preset and load --weights")
    p.add_argument("--weights", help="a .weights.h5 checkpoint to load")
    p.add_argument("--vocab", required=True, help="the model's vocab.txt")
    p.add_argument("--data-dir", default=DEFAULT_DATA_DIR, help="Multi30k task-1 directory")
    p.add_argument("--source-lang", default="en")
    p.add_argument("--target-lang", default="fr")
    p.add_argument("--train-source"), p.add_argument("--train-target")
    p.add_argument("--val-source"), p.add_argument("--val-target")
    p.add_argument("--test-source"), p.add_argument("--test-target")
    p.add_argument("--run-dir", default="runs/finetune")
    p.add_argument("--max-unknown-rate", type=float, default=0.02, help="refuse data with more [UNK] tokens")
    p.add_argument("--extend-vocab", action="store_true",
                   help="learn the new data's word pieces and append them to the vocabulary")
    p.add_argument("--extra-vocab-size", type=int, default=4000, help="with --extend-vocab: the new vocabulary's size")
    p.add_argument("--freeze-embeddings", action="store_true")
    p.add_argument("--freeze-encoder", action="store_true")
    p.add_argument("--freeze-encoder-layers", type=int, default=0, help="freeze the first k encoder layers")
    p.add_argument("--freeze-decoder-layers", type=int, default=0, help="freeze the first k decoder layers")
    p.add_argument("--warmup-steps", type=int, default=500, help="the restarted warm-up")
    p.add_argument("--lr-scale", type=float, default=0.5, help="multiplies the paper's schedule")
    p.add_argument("--label-smoothing", type=float, default=0.1)
    p.add_argument("--minutes", type=float, default=15.0)
    p.add_argument("--epochs", type=int, default=1000)
    p.add_argument("--tokens-per-batch", type=int, default=4096)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--average-last", type=int, default=3)
    p.add_argument("--mixed-precision", action="store_true")
    p.add_argument("--beam-size", type=int, default=4)
    p.add_argument("--from-scratch", action="store_true",
                   help="baseline: same architecture and data, random initial weights")
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args(argv)
    if not (args.model or (args.preset and args.weights)):
        p.error("give --model, or --preset with --weights")
    for split, default in (("train", "train"), ("val", "val"), ("test", "test_2016_flickr")):
        for side, lang in (("source", args.source_lang), ("target", args.target_lang)):
            name = f"{split}_{side}"
            if getattr(args, name) is None:
                setattr(args, name, os.path.join(args.data_dir, f"{default}.lc.norm.tok.{lang}"))
    return args


def bleu(translator, sources, references):
    start = time.time()
    hyps = translator.translate(sources, batch_size=100)
    return sacrebleu.corpus_bleu(hyps, [references], tokenize="none", force=True).score, time.time() - start, hyps


def main(argv=None):
    args = parse_args(argv)
    os.makedirs(args.run_dir, exist_ok=True)
    keras.utils.set_random_seed(args.seed)
    training.set_mixed_precision(args.mixed_precision)
    tokenizer = data.WordPieceTokenizer.load(args.vocab)
    model = models.load_model(args.model, args.weights, args.preset, tokenizer.vocab_size)
    finetune.check_model_vocabulary(model, tokenizer)
    train = data.read_parallel(args.train_source, args.train_target)
    val = data.read_parallel(args.val_source, args.val_target)
    test = data.read_parallel(args.test_source, args.test_target)
    results = {"train_pairs": len(train[0])}

    report = finetune.vocabulary_report(tokenizer, train[0] + train[1])
    print(f"new data with the model's vocabulary: {report['unknown_rate']:.2%} [UNK] tokens, "
          f"{report['tokens_per_word']:.2f} tokens per word; unknown words e.g. {report['unknown_words'][:5]}")
    results["unknown_rate_before"] = report["unknown_rate"]
    if args.extend_vocab:
        learned = data.WordPieceTokenizer.learn(train[0] + train[1], vocab_size=args.extra_vocab_size)
        known = set(tokenizer.vocab)
        vocab = list(tokenizer.vocab) + [t for t in learned.vocab if t not in known]
        model, carried = finetune.remap_embeddings(model, tokenizer.vocab, vocab)
        tokenizer = data.WordPieceTokenizer(vocab)
        report = finetune.vocabulary_report(tokenizer, train[0] + train[1])
        print(f"extended the vocabulary to {len(vocab)} tokens ({carried} carried over): "
              f"{report['unknown_rate']:.2%} [UNK], {report['tokens_per_word']:.2f} tokens per word")
        results.update(vocab_size=len(vocab), unknown_rate_after=report["unknown_rate"])
    finetune.check_vocabulary(tokenizer, train[0] + train[1], args.max_unknown_rate, name=args.train_target)
    tokenizer.save(os.path.join(args.run_dir, "vocab.txt"))

    if args.from_scratch:
        config = model.get_config()
        model = type(model).from_config(config)
        model.build()
    else:
        before, seconds, hyps = bleu(Translator(model, tokenizer, args.beam_size), *test)
        print(f"test BLEU before fine-tuning: {before:.1f} ({seconds:.0f} s); e.g. {hyps[0]!r}")
        results["bleu_before"] = before
    frozen = finetune.freeze(
        model, embeddings=args.freeze_embeddings, encoder=args.freeze_encoder,
        encoder_layers=args.freeze_encoder_layers, decoder_layers=args.freeze_decoder_layers,
    )
    if frozen:
        print(f"frozen: {', '.join(frozen)}")
    training.compile_for_translation(
        model, warmup_steps=args.warmup_steps, learning_rate_scale=args.lr_scale, label_smoothing=args.label_smoothing
    )
    pairs = data.tokenized_pairs(tokenizer, *train, max_length=args.max_length)
    steps = sum(1 for _ in data.token_batches(pairs, args.tokens_per_batch, args.max_length, shuffle=False))
    stream = data.token_batches(pairs, args.tokens_per_batch, args.max_length, shuffle=True, repeat=True,
                                seed=args.seed)
    val_batches = data.token_batches(data.tokenized_pairs(tokenizer, *val, max_length=args.max_length),
                                     args.tokens_per_batch, args.max_length, shuffle=False)
    start = time.time()
    training.train(model, stream, steps, args.epochs, args.run_dir, validation_data=val_batches,
                   minutes=args.minutes, keep_checkpoints=args.average_last)
    results["train_minutes"] = round((time.time() - start) / 60, 1)
    results["steps"] = int(model.optimizer.iterations.numpy())
    used = training.average_last_checkpoints(model, args.run_dir, args.average_last)
    results["averaged_checkpoints"] = len(used)
    model.save(os.path.join(args.run_dir, "model.keras"))

    after, seconds, hyps = bleu(Translator(model, tokenizer, args.beam_size), *test)
    results["bleu_after"] = after
    for i in range(3):
        print(f"  src: {test[0][i]}\n  hyp: {hyps[i]}\n  ref: {test[1][i]}")
    print(json.dumps(results, indent=2))
    with open(os.path.join(args.run_dir, "results.json"), "w") as f:
        json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
