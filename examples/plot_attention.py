"""Translate one sentence and draw the decoder's cross-attention as a heat map.

    python examples/plot_attention.py --model runs/multi30k-en-de/model.keras \\
        --vocab runs/multi30k-en-de/vocab.txt --sentence "a man rides a bike ." --output attention.png

Source tokens run along the x axis, generated target tokens down the y axis;
row t is the attention of the step that generated target token t. By default
the map is what `beam_search(..., return_attention=True)` returns: the last
decoder layer, averaged over heads. With `--heads` the best translation is fed
back through the decoder in one teacher-forced pass and each head of
`--layer` gets its own panel.
"""

import argparse
import math
import os
import sys
from typing import Dict, Sequence

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import keras  # noqa: E402
import matplotlib  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

import keras_transformer  # noqa: E402,F401  (registers the model's classes for loading)
from keras_transformer.data import WordPieceTokenizer  # noqa: E402
from keras_transformer.text import add_start_end  # noqa: E402
from keras_transformer.decoding import beam_search  # noqa: E402

matplotlib.use("Agg")

# Figure geometry in pixels, so the image size follows from the token counts.
CELL_PX = 32  # one source x target cell
PANEL_MARGIN_PX = 150  # per panel: tick labels and title
COLORBAR_PX = 100
MAX_COLUMNS = 2  # panels per row with --heads


def translate_with_attention(
    model, tokenizer: WordPieceTokenizer, sentence: str, beam_size: int = 4, alpha: float = 0.6,
    max_extra_length: int = 50,
) -> Dict[str, object]:
    """The best translation of `sentence` and its attention.

    Returns:
        A dict: "source_ids" int32 [S] and "target_ids" int32 [T] (through
        [END]); "source_tokens", "target_tokens" (lists of str); "translation"
        (str); "attention" float32 [T, S], the last decoder layer's
        cross-attention averaged over heads, as beam search recorded it.
    """
    source = add_start_end(tokenizer.tokenize([sentence]), tokenizer.start_id, tokenizer.end_id).to_tensor()
    max_length = min(int(source.shape[1]) + max_extra_length, model.max_length)
    search = tf.function(lambda s: beam_search(
        model, s, max_length, beam_size, alpha, max_extra_length=max_extra_length, return_attention=True
    ))
    out = search(source)
    ids = out["ids"][0, 0].numpy()
    length = int(np.argmax(ids == tokenizer.end_id)) + 1 if (ids == tokenizer.end_id).any() else len(ids)
    target_ids = ids[:length]
    source_ids = source[0].numpy()
    return {
        "source_ids": source_ids,
        "target_ids": target_ids,
        "source_tokens": tokenizer.id_to_token(source_ids),
        "target_tokens": tokenizer.id_to_token(target_ids),
        "translation": tokenizer.detokenize(target_ids[None]).numpy()[0].decode("utf-8"),
        "attention": out["attention"][0, 0, :length].numpy(),
    }


def head_attention(model, source_ids, target_ids, layer: int = -1) -> np.ndarray:
    """Cross-attention of every head of decoder layer `layer`, float32
    [N, T, S], from one teacher-forced pass: the decoder reads
    `[START] + target_ids[:-1]`, so row t predicts `target_ids[t]`."""
    if not -model.num_layers <= layer < model.num_layers:
        raise ValueError(
            f"`layer` must be in [{-model.num_layers}, {model.num_layers}) for a model with "
            f"{model.num_layers} decoder layers. Received: layer={layer}"
        )
    source = tf.constant(np.asarray(source_ids)[None], tf.int32)
    target_in = np.concatenate([[WordPieceTokenizer.start_id], target_ids[:-1]])
    encoder_output, source_mask = model.encode(source, training=False)
    _, scores = model.decode(
        tf.constant(target_in[None], tf.int32), encoder_output, source_mask,
        return_attention_scores=True, training=False,
    )
    return tf.cast(scores[layer][0], tf.float32).numpy()


def figure_pixels(num_source: int, num_target: int, num_panels: int = 1):
    """(width, height) of the image in pixels."""
    columns = min(num_panels, MAX_COLUMNS)
    rows = math.ceil(num_panels / columns)
    width = columns * (num_source * CELL_PX + PANEL_MARGIN_PX) + COLORBAR_PX
    height = rows * (num_target * CELL_PX + PANEL_MARGIN_PX)
    return width, height


def plot_attention(
    attention, source_tokens: Sequence[str], target_tokens: Sequence[str], path: str,
    titles: Sequence[str] = None, dpi: int = 100,
):
    """Writes a PNG heat map of `attention` to `path`.

    Args:
        attention: float [T, S], or [P, T, S] for P panels (one per head).
        source_tokens: S labels for the x axis.
        target_tokens: T labels for the y axis.
        path: str, the PNG file to write.
        titles: one title per panel; default none.
        dpi: int, dots per inch; the pixel size is `figure_pixels(S, T, P)`
            whatever the dpi.

    Returns:
        (width, height) in pixels.
    """
    attention = np.asarray(attention, np.float32)
    panels = attention[None] if attention.ndim == 2 else attention
    if panels.shape[1:] != (len(target_tokens), len(source_tokens)):
        raise ValueError(
            f"`attention` must be [T, S] or [P, T, S] with T={len(target_tokens)} target and "
            f"S={len(source_tokens)} source tokens. Received shape: {attention.shape}"
        )
    width, height = figure_pixels(len(source_tokens), len(target_tokens), len(panels))
    columns = min(len(panels), MAX_COLUMNS)
    fig = Figure(figsize=(width / dpi, height / dpi), dpi=dpi, layout="constrained")
    axes = fig.subplots(math.ceil(len(panels) / columns), columns, squeeze=False)
    vmax = float(panels.max())
    for i, ax in enumerate(axes.flat):
        if i >= len(panels):
            ax.set_axis_off()
            continue
        image = ax.imshow(panels[i], cmap="viridis", vmin=0.0, vmax=vmax, aspect="auto")
        ax.set_xticks(range(len(source_tokens)), source_tokens, rotation=90)
        ax.set_yticks(range(len(target_tokens)), target_tokens)
        ax.set_xlabel("source")
        ax.set_ylabel("target")
        if titles is not None:
            ax.set_title(titles[i])
    fig.colorbar(image, ax=axes, label="attention weight")
    fig.savefig(path, dpi=dpi)
    return width, height


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="a Transformer saved as .keras")
    parser.add_argument("--vocab", required=True, help="its vocab.txt")
    parser.add_argument("--sentence", required=True, help="source text, tokenized as the model was trained")
    parser.add_argument("--output", default="attention.png", help="PNG file to write")
    parser.add_argument("--beam-size", type=int, default=4)
    parser.add_argument("--alpha", type=float, default=0.6)
    parser.add_argument("--heads", action="store_true", help="one panel per head of --layer")
    parser.add_argument("--layer", type=int, default=-1, help="decoder layer for --heads; default the last")
    parser.add_argument("--dpi", type=int, default=100)
    args = parser.parse_args(argv)

    model = keras.saving.load_model(args.model, compile=False)
    tokenizer = WordPieceTokenizer.load(args.vocab)
    result = translate_with_attention(model, tokenizer, args.sentence, args.beam_size, args.alpha)
    print(f"source:      {args.sentence}")
    print(f"translation: {result['translation']}")

    if args.heads:
        attention = head_attention(model, result["source_ids"], result["target_ids"], args.layer)
        layer = args.layer % model.num_layers
        titles = [f"decoder layer {layer}, head {h}" for h in range(len(attention))]
    else:
        attention = result["attention"]
        titles = ["last decoder layer, mean over heads"]
    width, height = plot_attention(
        attention, result["source_tokens"], result["target_tokens"], args.output, titles, args.dpi
    )
    print(f"wrote {args.output} ({width} x {height} px)")
    return result


if __name__ == "__main__":
    main()
