"""Command line: export a trained model, or check an export's ops (also installed as `kt-export`).

    python -m keras_transformer.export export --model RUN/model.keras --vocab RUN/vocab.txt --base-dir models/t
    python -m keras_transformer.export export --model RUN/model.keras --weights RUN/best.weights.h5 ...
    python -m keras_transformer.export export --preset tiny --weights RUN/best.weights.h5 --vocab RUN/vocab.txt ...
    python -m keras_transformer.export check models/t/1
"""

import argparse
import sys


def _check(args) -> int:
    # Imports only core TensorFlow: the check must not see tensorflow_text's ops.
    from keras_transformer.export.op_check import saved_model_ops
    from keras_transformer.export.op_check import unregistered_ops

    ops = saved_model_ops(args.export_dir)
    every = sorted(set().union(*ops.values()))
    print(f"{args.export_dir}: {len(ops)} graphs/functions, {len(every)} distinct op types")
    if args.verbose:
        for name in sorted(ops):
            print(f"  {name}: {', '.join(sorted(ops[name]))}")
    missing = unregistered_ops(args.export_dir)
    if missing:
        for name, bad in sorted(missing.items()):
            print(f"NOT IN CORE TENSORFLOW: {', '.join(sorted(bad))} (in {name})")
        return 1
    print("every op is registered in core TensorFlow")
    return 0


def _export(args) -> int:
    from keras_transformer.export.saved_model import SIGNATURES
    from keras_transformer.export.saved_model import export_saved_model
    from keras_transformer.models import load_model
    from keras_transformer.text.tokens import read_vocab

    vocab = read_vocab(args.vocab)
    model = load_model(args.model, args.weights, args.preset, len(vocab), args.max_length)
    path = export_saved_model(
        model, vocab, args.base_dir, version=args.version, beam_size=args.beam_size,
        alpha=args.alpha, max_extra_length=args.max_extra_length,
        text_processing=args.text_processing, source_lang=args.source_lang, target_lang=args.target_lang,
        lowercase=args.lowercase, max_beam_size=args.max_beam_size, max_num_return=args.max_num_return,
        signatures=args.signatures or SIGNATURES,
    )
    print(f"exported {path}")
    return 0


def _signature_list(text):
    """--signatures: names separated by commas (spaces around them allowed), checked before any model loads."""
    from keras_transformer.export.saved_model import check_signatures

    try:
        return check_signatures(name.strip() for name in text.split(","))
    except ValueError as error:  # (argparse would print only "invalid value" for a ValueError)
        raise argparse.ArgumentTypeError(str(error)) from None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m keras_transformer.export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    export = commands.add_parser("export", help="write base_dir/<version>/ from a .keras model")
    source = export.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="a .keras file saved after training")
    source.add_argument("--preset", help="build this preset and load --weights into it (tiny, base, big)")
    export.add_argument("--weights", help="a .weights.h5 training checkpoint (epoch checkpoint, best or averaged)")
    export.add_argument("--max-length", type=int, default=192, help="with --preset: the model's max_length")
    export.add_argument("--vocab", required=True, help="the tokenizer's vocab.txt")
    export.add_argument("--base-dir", required=True, help="the model base path TensorFlow Serving polls")
    export.add_argument("--version", type=int, help="default: one more than the largest existing")
    export.add_argument("--beam-size", type=int, default=4)
    export.add_argument("--alpha", type=float, default=0.6)
    export.add_argument("--max-extra-length", type=int, default=50)
    export.add_argument("--signatures", type=_signature_list,
                        help="the signatures to export, comma-separated (default: all five: serving_default, "
                             "translate_ids, score, attention, translate)")
    export.add_argument("--max-beam-size", type=int, default=8,
                        help="the largest beam_size a request to the translate signature may ask for")
    export.add_argument("--max-num-return", type=int, default=4,
                        help="the largest num_return of the translate signature: its outputs' width")
    export.add_argument("--text-processing", default="moses", choices=["moses", "none"],
                        help="moses: raw text in and out (Moses tokenization in the graph)")
    export.add_argument("--lowercase", action=argparse.BooleanOptionalAction, default=None,
                        help="lowercase the input before Moses tokenization (default: exactly when the "
                             "vocabulary has no uppercase piece, i.e. the model was trained on lowercased text)")
    export.add_argument("--source-lang", default="en")
    export.add_argument("--target-lang", default="de")
    check = commands.add_parser("check", help="fail if the export uses ops outside core TensorFlow")
    check.add_argument("export_dir")
    check.add_argument("--verbose", action="store_true", help="list the ops of every function")
    args = parser.parse_args(argv)
    if args.command == "export" and args.preset and not args.weights:
        parser.error("--preset needs --weights (a training checkpoint)")
    return _check(args) if args.command == "check" else _export(args)


if __name__ == "__main__":
    sys.exit(main())
