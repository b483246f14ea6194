"""Loading a trained model: a `.keras` file, or a preset with a training checkpoint."""

from typing import Optional

import keras

from keras_transformer.models.transformer import Transformer


def load_model(path: Optional[str], weights: Optional[str] = None, preset: Optional[str] = None,
               vocab_size: Optional[int] = None, max_length: int = 192):
    """A trained model from a `.keras` file, or from a preset and a `.weights.h5` checkpoint.

    Args:
        path: a `.keras` file, or None with `preset`.
        weights: a `.weights.h5` training checkpoint loaded on top (optional with `path`).
        preset, vocab_size, max_length: build the model when there is no `.keras` file.
    """
    if path:
        model = keras.saving.load_model(path, compile=False)
    elif preset and vocab_size:
        model = Transformer.from_preset(preset, vocab_size, vocab_size, max_length=max_length)
        model.build()
    else:
        raise ValueError("give a .keras file, or `preset` and `vocab_size` with `weights`")
    if weights:
        model.load_weights(weights)
    return model
