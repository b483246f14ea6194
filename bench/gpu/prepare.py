"""Prepares the GPU run where TensorFlow is installed: Multi30k as token arrays, and the wheels.

    python bench/gpu/prepare.py --data-dir ../shared/data/multi30k [--vocab RUN/vocab.txt] [--wheels]

Writes .gpu/ (git-ignored; `carry` it to the GPU machine): vocab.txt (learned from the
lowercased, tokenized training text unless --vocab names one), train.npz (the (source, target)
id pairs of `data.tokenized_pairs`, through `save_token_arrays`) and, with --wheels, wheels/:
Keras and keras-hub at the versions installed here, and what else of their needs the GPU
machine's image lacks (namex, optree), for its Python 3.12.
"""

import argparse
import os
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

# What the GPU machine's image lacks of Keras's and keras-hub's needs (it has absl-py, h5py,
# ml-dtypes, numpy, packaging, regex, rich, sentencepiece and tokenizers). Not kagglehub:
# keras-hub runs without it (preset_utils sets it to None), but a kagglehub carried without
# its own needs would fail keras-hub's import.
WHEELS = ("keras", "keras-hub", "namex", "optree")
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")


def download_wheels(out):
    from importlib.metadata import version

    os.makedirs(out, exist_ok=True)
    for name in WHEELS:
        spec = f"{name}=={version(name)}"  # the versions tested here
        command = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                   "--python-version", "3.12", "--implementation", "cp", "-d", out, spec]
        for platform in PLATFORMS:
            command += ["--platform", platform]
        subprocess.run(command, check=True)
    print(f"wheels: {', '.join(sorted(os.listdir(out)))}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default=os.path.join(ROOT, "..", "shared", "data", "multi30k"))
    p.add_argument("--out", default=os.path.join(ROOT, ".gpu"))
    p.add_argument("--vocab", help="a vocab.txt to use instead of learning one")
    p.add_argument("--vocab-size", type=int, default=10000)
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--limit", type=int, help="only the first N training pairs (a quick check)")
    p.add_argument("--wheels", action="store_true", help="also download the wheels into OUT/wheels")
    args = p.parse_args(argv)

    from keras_transformer import data
    from keras_transformer.data.arrays import save_token_arrays

    os.makedirs(args.out, exist_ok=True)
    paths = [os.path.join(args.data_dir, f"train.lc.norm.tok.{lang}") for lang in ("en", "de")]
    source, target = data.read_parallel(*paths)
    if args.limit:
        source, target = source[:args.limit], target[:args.limit]
    vocab_path = os.path.join(args.out, "vocab.txt")
    if args.vocab:
        shutil.copyfile(args.vocab, vocab_path)
        tokenizer = data.WordPieceTokenizer.load(vocab_path)
    else:
        tokenizer = data.WordPieceTokenizer.learn(source + target, vocab_size=args.vocab_size)
        tokenizer.save(vocab_path)
    pairs = data.tokenized_pairs(tokenizer, source, target, max_length=args.max_length)
    count = save_token_arrays(os.path.join(args.out, "train.npz"),
                              ((s.numpy(), t.numpy()) for s, t in pairs))
    print(f"{count} pairs -> {args.out}/train.npz, vocabulary of {tokenizer.vocab_size} -> {vocab_path}")
    if args.wheels:
        download_wheels(os.path.join(args.out, "wheels"))


if __name__ == "__main__":
    main()
