"""Fine-tuning a trained Transformer on new data.

    model = keras_transformer.models.load_model("run/model.keras")  # or a preset + checkpoint
    check_vocabulary(tokenizer, new_sources + new_targets)   # unknown-token rate, refuses a poor fit
    freeze(model, embeddings=True, encoder_layers=2)         # what stays fixed
    compile_for_translation(model, warmup_steps=500, learning_rate_scale=0.3)  # restarted, lower schedule
    model.fit(...)

Where the new data needs a new vocabulary (another language), learn it,
then `remap_embeddings` carries every token the two vocabularies share over
to a model built for the new one.
"""

import collections
from typing import Dict, Sequence

import numpy as np

from keras_transformer.data.tokenizer import WordPieceTokenizer
from keras_transformer.models.loading import load_model  # noqa: F401  (its old home; use keras_transformer.models)


def vocabulary_report(tokenizer: WordPieceTokenizer, texts: Sequence[str], examples: int = 10) -> Dict:
    """How well `tokenizer` covers `texts`.

    Returns:
        dict: sentences, words, tokens, unknown_tokens, unknown_rate (unknown
        tokens / tokens), tokens_per_word, and the most common unknown words.
    """
    texts = list(texts)
    ids = tokenizer.tokenize(texts)
    flat = ids.flat_values.numpy()
    words = [w for text in texts for w in text.split()]
    unknown = int((flat == tokenizer.unk_id).sum())
    report = {
        "sentences": len(texts),
        "words": len(words),
        "tokens": int(flat.size),
        "unknown_tokens": unknown,
        "unknown_rate": unknown / max(flat.size, 1),
        "tokens_per_word": flat.size / max(len(words), 1),
        "unknown_words": [],
    }
    if unknown:
        per_word = tokenizer.tokenize(sorted(set(words)))
        missing = {w for w, row in zip(sorted(set(words)), per_word.numpy()) if tokenizer.unk_id in row}
        counts = collections.Counter(w for w in words if w in missing)
        report["unknown_words"] = [w for w, _ in counts.most_common(examples)]
    return report


def check_vocabulary(tokenizer: WordPieceTokenizer, texts: Sequence[str], max_unknown_rate: float = 0.02,
                     name: str = "the new data") -> Dict:
    """`vocabulary_report`, raising where the vocabulary does not fit the data.

    Raises:
        ValueError: more than `max_unknown_rate` of the tokens are [UNK]; the
            message gives the rate, the most common unknown words and what to do.
    """
    report = vocabulary_report(tokenizer, texts)
    if report["unknown_rate"] > max_unknown_rate:
        raise ValueError(
            f"{name} does not fit the model's vocabulary: {report['unknown_rate']:.1%} of its tokens are "
            f"[UNK] (limit {max_unknown_rate:.1%}); most common unknown words: {report['unknown_words']}. "
            "Learn a vocabulary that covers it (WordPieceTokenizer.learn on old and new text) and carry the "
            "model over with remap_embeddings, or raise the limit."
        )
    return report


def check_model_vocabulary(model, tokenizer: WordPieceTokenizer):
    """Raises ValueError if `model` was not built for `tokenizer`'s vocabulary."""
    sizes = {model.source_vocab_size, model.target_vocab_size}
    if sizes != {tokenizer.vocab_size}:
        raise ValueError(
            f"the model's vocabulary has {sorted(sizes)} entries but the tokenizer's has "
            f"{tokenizer.vocab_size}: they are not the pair it was trained with. Use the vocab.txt saved "
            "beside the model, or remap_embeddings to move the model to a new vocabulary."
        )


def _embeddings(model):
    layers = [model.source_embedding] + ([model.target_embedding] if model.target_embedding is not None else [])
    return [layer.embeddings for layer in layers]


def remap_embeddings(model, old_vocab: Sequence[str], new_vocab: Sequence[str]):
    """A copy of `model` for `new_vocab`: every weight carried over, embedding rows matched by token.

    Tokens in both vocabularies keep their learned vectors; new tokens get
    the embedding layer's fresh initialization.

    Returns:
        (new model, number of tokens carried over).
    """
    if model.share_embeddings == "none":
        raise ValueError("remap_embeddings needs tied output embeddings (share_embeddings 'all' or 'decoder')")
    config = model.get_config()
    config.update(source_vocab_size=len(new_vocab), target_vocab_size=len(new_vocab))
    remapped = type(model).from_config(config)
    remapped.build()
    old_index = {token: i for i, token in enumerate(old_vocab)}
    pairs = np.array([(j, old_index[t]) for j, t in enumerate(new_vocab) if t in old_index], dtype=np.int64)
    old_embeddings = {id(v) for v in _embeddings(model)}
    new_embeddings = _embeddings(remapped)
    others_old = [w for w in model.weights if id(w) not in old_embeddings]
    others_new = [w for w in remapped.weights if all(w is not e for e in new_embeddings)]
    if [w.path for w in others_old] != [w.path for w in others_new]:
        raise ValueError("the remapped model's weights do not line up with the original's")
    for old, new in zip(others_old, others_new):
        new.assign(old)
    for old, new in zip(_embeddings(model), new_embeddings):
        matrix = np.array(new.numpy())
        matrix[pairs[:, 0]] = old.numpy()[pairs[:, 1]]
        new.assign(matrix)
    return remapped, len(pairs)


def freeze(model, embeddings: bool = False, encoder: bool = False, decoder: bool = False,
           encoder_layers: int = 0, decoder_layers: int = 0):
    """Marks parts of a `Transformer` not trainable; returns the names of what was frozen.

    Args:
        embeddings: the token embeddings (shared with the output projection when tied).
        encoder, decoder: whole stacks.
        encoder_layers, decoder_layers: only the first k layers of a stack.

    Compile after freezing: Keras reads `trainable` when it builds the train step.
    """
    frozen = []
    if embeddings:
        for layer in (model.source_embedding, model.target_embedding, model.output_projection):
            if layer is not None:
                layer.trainable = False
                frozen.append(layer.name)
    for stack, whole, first in ((model.encoder, encoder, encoder_layers), (model.decoder, decoder, decoder_layers)):
        if first < 0 or first > len(stack.stack):
            raise ValueError(f"{stack.name} has {len(stack.stack)} layers; cannot freeze the first {first}")
        if whole:
            stack.trainable = False
            frozen.append(stack.name)
            continue
        for layer in stack.stack[:first]:
            layer.trainable = False
            frozen.append(f"{stack.name}/{layer.name}")
    return frozen
