"""An encoder-only Transformer that tells English, German and French apart.

    python examples/classify_language.py              # about 1-2 minutes on 2 CPU cores

A BERT-style encoder (`keras_transformer.models.EncoderBackbone`: learned
position embeddings, post-norm blocks, GELU) under a classifier head, in a
Keras functional model:

    ids [B, T] -> EncoderBackbone -> masked mean over the real tokens -> Dense softmax [B, 3]

The backbone's padding mask (token id 0) flows on to the pooling, so a
sentence gets the same prediction however much it is padded.
Data: Multi30k, whose training and validation sentences exist in all three
languages (lowercased, tokenized). Prints the validation accuracy and a few
predictions.
"""

import argparse
import os
import sys
import time
from typing import List, Sequence, Tuple

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import keras_transformer as kt  # noqa: E402
from keras_transformer.data import WordPieceTokenizer  # noqa: E402
from keras_transformer.data import read_lines  # noqa: E402

LANGUAGES = ("en", "de", "fr")
DEFAULT_DATA_DIR = os.path.join(ROOT, "..", "shared", "data", "multi30k")
EXAMPLES = [
    "a dog runs along the beach .",
    "ein hund läuft am strand entlang .",
    "un chien court le long de la plage .",
    "two men play soccer in the park .",
    "zwei männer spielen fußball im park .",
    "deux hommes jouent au football dans le parc .",
    "hello , how are you ?",
    "hallo , wie geht es dir ?",
    "bonjour , comment ça va ?",
]


def load_split(data_dir: str, split: str, limit: int = None) -> Tuple[List[str], np.ndarray]:
    """The first `limit` sentences of `{split}.lc.norm.tok.{en,de,fr}` and
    their language labels (indices into `LANGUAGES`)."""
    texts, labels = [], []
    for label, language in enumerate(LANGUAGES):
        lines = read_lines(os.path.join(data_dir, f"{split}.lc.norm.tok.{language}"))[:limit]
        texts += lines
        labels += [label] * len(lines)
    return texts, np.array(labels, np.int32)


def encode(tokenizer: WordPieceTokenizer, texts: Sequence[str], max_length: int) -> tf.RaggedTensor:
    """str [B] -> ragged int32 ids [B, (T)], at most `max_length` tokens each."""
    return tokenizer.tokenize(list(texts))[:, :max_length]


def make_dataset(
    ids: tf.RaggedTensor, labels, batch_size: int, shuffle: bool, seed: int = 0
) -> tf.data.Dataset:
    """Batches of (ids [B, T] 0-padded to the longest in the batch, labels [B])."""
    dataset = tf.data.Dataset.from_tensor_slices((ids, labels))
    if shuffle:
        dataset = dataset.shuffle(len(labels), seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.ragged_batch(batch_size).map(lambda x, y: (x.to_tensor(), y))
    return dataset.prefetch(tf.data.AUTOTUNE)


def build_classifier(
    vocab_size: int,
    num_classes: int = len(LANGUAGES),
    num_layers: int = 2,
    d_model: int = 64,
    num_heads: int = 4,
    d_ff: int = 128,
    dropout: float = 0.1,
    max_length: int = 64,
) -> keras.Model:
    """Int ids [B, T] (0 = padding) -> class probabilities [B, num_classes]."""
    ids = keras.Input(shape=(None,), dtype="int32", name="ids")
    backbone = kt.EncoderBackbone(
        vocab_size, num_layers=num_layers, d_model=d_model, num_heads=num_heads, d_ff=d_ff, dropout=dropout,
        max_length=max_length, name="backbone",
    )
    x = backbone(ids)
    # Averages over the tokens the Keras mask marks real; padding is skipped.
    x = keras.layers.GlobalAveragePooling1D(name="masked_mean")(x)
    probabilities = keras.layers.Dense(num_classes, activation="softmax", name="classifier")(x)
    return keras.Model(ids, probabilities, name="language_classifier")


def predict(
    model: keras.Model, tokenizer: WordPieceTokenizer, texts: Sequence[str], max_length: int
) -> np.ndarray:
    """Class probabilities [B, num_classes] for each of `texts`."""
    ids = encode(tokenizer, texts, max_length).to_tensor()
    return model.predict(ids, verbose=0)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", default=DEFAULT_DATA_DIR, help="Multi30k directory")
    parser.add_argument("--train-sentences", type=int, default=4000, help="training sentences per language")
    parser.add_argument("--vocab-sentences", type=int, default=1000,
                        help="sentences per language the WordPiece vocabulary is learned from")
    parser.add_argument("--vocab-size", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-length", type=int, default=64, help="longest input, in tokens")
    parser.add_argument("--num-layers", type=int, default=2)
    parser.add_argument("--d-model", type=int, default=64)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    keras.utils.set_random_seed(args.seed)
    start = time.monotonic()

    train_texts, train_labels = load_split(args.data_dir, "train", args.train_sentences)
    val_texts, val_labels = load_split(args.data_dir, "val")
    vocab_texts, _ = load_split(args.data_dir, "train", args.vocab_sentences)
    tokenizer = WordPieceTokenizer.learn(vocab_texts, vocab_size=args.vocab_size, min_count=2)
    print(f"{len(train_texts)} training and {len(val_texts)} validation sentences; "
          f"{tokenizer.vocab_size} WordPiece tokens learned from {len(vocab_texts)} sentences "
          f"({time.monotonic() - start:.0f} s)")

    train_data = make_dataset(encode(tokenizer, train_texts, args.max_length), train_labels,
                              args.batch_size, shuffle=True, seed=args.seed)
    val_data = make_dataset(encode(tokenizer, val_texts, args.max_length), val_labels,
                            args.batch_size, shuffle=False)
    model = build_classifier(tokenizer.vocab_size, d_model=args.d_model, d_ff=2 * args.d_model,
                             num_layers=args.num_layers, max_length=args.max_length)
    model.compile(
        optimizer=keras.optimizers.Adam(args.learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    print(f"model: {model.count_params():,} parameters")
    # The dataset shuffles itself; Keras warns when fit is asked to as well.
    model.fit(train_data, validation_data=val_data, epochs=args.epochs, shuffle=False, verbose=2)

    predicted = predict(model, tokenizer, val_texts, args.max_length).argmax(axis=-1)
    accuracy = float(np.mean(predicted == val_labels))
    print(f"\nvalidation accuracy: {accuracy:.2%} on {len(val_texts)} sentences "
          f"({time.monotonic() - start:.0f} s in all)")
    wrong = np.flatnonzero(predicted != val_labels)
    for i in wrong[:5]:
        print(f"  wrong: {LANGUAGES[predicted[i]]} for {LANGUAGES[val_labels[i]]}: {val_texts[i]}")
    print("predictions:")
    for text, probabilities in zip(EXAMPLES, predict(model, tokenizer, EXAMPLES, args.max_length)):
        best = int(probabilities.argmax())
        print(f"  {LANGUAGES[best]} {probabilities[best]:.3f}  {text}")
    return accuracy


if __name__ == "__main__":
    main()
