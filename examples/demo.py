"""A first look at keras_transformer: build the `tiny` Transformer, print its
summary, and train it with `model.fit` on a generated sequence-reversal task.

    make demo        # or: python examples/demo.py --epochs 6
"""

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_transformer as kt  # noqa: E402

START = 1  # id 0 is padding, 1 starts the target


def reversal_task(num_examples, vocab_size, length, seed):
    """Source: random ids; target: the same ids reversed (teacher forcing)."""
    rng = np.random.default_rng(seed)
    source = rng.integers(2, vocab_size, size=(num_examples, length))
    reversed_ids = source[:, ::-1]
    decoder_input = np.concatenate([np.full((num_examples, 1), START), reversed_ids[:, :-1]], axis=1)
    return {"source": source, "target": decoder_input}, reversed_ids


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--vocab-size", type=int, default=24)
    parser.add_argument("--length", type=int, default=10)
    args = parser.parse_args()

    keras.utils.set_random_seed(0)
    model = kt.Transformer.from_preset(
        "tiny", source_vocab_size=args.vocab_size, target_vocab_size=args.vocab_size,
        num_layers=2, dropout=0.0, max_length=64,
    )
    model.compile(
        optimizer=keras.optimizers.Adam(2e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    inputs, labels = reversal_task(6000, args.vocab_size, args.length, seed=0)
    model.fit(inputs, labels, batch_size=64, epochs=args.epochs)
    model.summary()

    test_inputs, test_labels = reversal_task(500, args.vocab_size, args.length, seed=1)
    predicted = np.argmax(model.predict(test_inputs, verbose=0), axis=-1)
    accuracy = float(np.mean(predicted == test_labels))
    print(f"\nsource:    {test_inputs['source'][0].tolist()}")
    print(f"predicted: {predicted[0].tolist()}")
    print(f"held-out token accuracy (teacher forcing): {accuracy:.3f}")
    if accuracy < 0.9:
        raise SystemExit("demo failed: the model did not learn to reverse sequences")


if __name__ == "__main__":
    main()
