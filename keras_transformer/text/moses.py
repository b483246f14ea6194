"""Moses-style text normalization in core TensorFlow ops.

Parallel corpora such as Multi30k are commonly distributed lowercased and
tokenized by the Moses scripts (punctuation split off, `&`, `'` and `"`
escaped as `&amp;`, `&apos;`, `&quot;`). A model trained on that text needs
the same treatment of raw user input, and its output needs the reverse before
a person reads it. Both directions here are built from `tf.strings` ops only,
so they run in `tf.data`, in the `Translator`, and inside an exported
SavedModel that TensorFlow Serving loads without tensorflow-text.

This is an approximation of the Moses tokenizer (no per-language
non-breaking-prefix lists, no aggressive hyphen splitting), measured against
the Multi30k `*.lc.norm.tok.*` files in the tests.
"""

import tensorflow as tf

# The characters the Moses tokenizer escapes, in the order it escapes them
# (`&` first, so the other entities are not escaped twice).
ESCAPES = (
    ("&", "&amp;"),
    ("|", "&#124;"),
    ("<", "&lt;"),
    (">", "&gt;"),
    ("'", "&apos;"),
    ('"', "&quot;"),
    ("[", "&#91;"),
    ("]", "&#93;"),
)

# Typographic punctuation folded to ASCII before tokenizing.
_NORMALIZE = (
    ("[\u201c\u201d\u201e\u00ab\u00bb]", '"'),
    ("[\u2018\u2019\u201a\u00b4`]", "'"),
    ("\u2026", "..."),
    ("[\u2013\u2014]", " - "),
    ("\u00a0", " "),
)

# Language families for apostrophes: English splits the clitic ("man 's"),
# French keeps the elided article with its apostrophe ("l' homme"), and the
# rest split it off on both sides.
_APOSTROPHE_RULES = {
    "en": ((r"([^\pL])'", r"\1 ' "), (r"'([^\pL])", r" ' \1"), (r"(\pL)'(\pL)", r"\1 '\2")),
    "fr": ((r"([^\pL])'", r"\1 ' "), (r"'([^\pL])", r" ' \1"), (r"(\pL)'(\pL)", r"\1' \2")),
}
_DEFAULT_APOSTROPHES = ((r"'", r" ' "),)


def is_lowercase_vocabulary(vocab) -> bool:
    """Whether a subword vocabulary was learned from lowercased text.

    True when no entry has a letter that lowercasing changes (bracketed
    reserved tokens such as `[UNK]` aside). A model whose vocabulary has no
    uppercase piece has only seen lowercased text, so raw input must be
    lowercased before it reaches the model; a cased vocabulary means the
    text keeps its case.
    """
    return not any(
        token != token.lower() for token in vocab if not (token.startswith("[") and token.endswith("]"))
    )


def _squeeze_spaces(text):
    return tf.strings.strip(tf.strings.regex_replace(text, r"\s+", " "))


def moses_tokenize(text, lang: str = "en", lowercase: bool = True):
    """Raw sentences -> Moses-style tokenized (and by default lowercased) text.

    Args:
        text: tf.string tensor of any shape.
        lang: ISO code; selects how apostrophes are split ("en", "fr", other).
        lowercase: lowercase first (Unicode-aware), as the `lc` corpora are.

    Returns:
        tf.string tensor of the same shape: tokens separated by single spaces,
        `&'"<>[]|` escaped.
    """
    text = tf.convert_to_tensor(text, tf.string)
    for pattern, rewrite in _NORMALIZE:
        text = tf.strings.regex_replace(text, pattern, rewrite)
    text = _squeeze_spaces(text)
    if lowercase:
        text = tf.strings.lower(text, encoding="utf-8")
    # Every character that is not a letter, digit, space or one of . ' , -
    # becomes a token of its own.
    text = tf.strings.regex_replace(text, r"([^\pL\pN\s.',\-])", r" \1 ")
    # Runs of dots are one token. A word's final period is split off unless
    # the next word starts with a lowercase letter (the Moses rule, without
    # its lists of abbreviations): "st. louis" keeps its period, "dog. The"
    # does not. Lowercased text has letters without case only, so there any
    # following letter keeps the period.
    text = tf.strings.regex_replace(text, r"(\.\.+)", r" \1 ")
    keeps_period = r"\pL" if lowercase else r"\p{Ll}"
    text = tf.strings.regex_replace(text, rf"([^.\s])\.(\s+[^{keeps_period}\s]|\s*$)", r"\1 .\2")
    # Commas split off unless inside a number (1,000).
    text = tf.strings.regex_replace(text, r"([^\pN]),", r"\1 , ")
    text = tf.strings.regex_replace(text, r",([^\pN])", r" , \1")
    text = tf.strings.regex_replace(text, r"(\pN),$", r"\1 ,")
    text = tf.strings.regex_replace(text, r"^,", r", ")
    for pattern, rewrite in _APOSTROPHE_RULES.get(lang, _DEFAULT_APOSTROPHES):
        text = tf.strings.regex_replace(" " + text + " ", pattern, rewrite)
    text = _squeeze_spaces(text)
    for char, entity in ESCAPES:
        text = tf.strings.regex_replace(text, _re_escape(char), entity)
    return text


def moses_detokenize(text, capitalize: bool = True):
    """Moses-style tokenized text -> readable text (the inverse of the above, as near as it goes).

    Unescapes the entities, attaches punctuation to the word before it,
    brackets to the words inside them, and pairs double quotes. With
    `capitalize`, the first letter of each sentence is upper-cased (the
    lowercased corpora carry no other case information; a model trained on
    cased text needs no such help).
    """
    text = _squeeze_spaces(tf.convert_to_tensor(text, tf.string))
    # Pair quotes first, while they are still escaped (and so unambiguous):
    # an opening &quot; attaches to the next word, its closing one to the last.
    text = tf.strings.regex_replace(text, r"&quot; ([^&]*?) ?&quot;", r'"\1"')
    text = tf.strings.regex_replace(text, r"&quot; ?", '"')
    for char, entity in ESCAPES[::-1]:
        text = tf.strings.regex_replace(text, entity, char)
    text = tf.strings.regex_replace(text, r" ([.,!?;:%)\]}]|\.\.\.)", r"\1")
    text = tf.strings.regex_replace(text, r"([(\[{$]) ", r"\1")
    text = tf.strings.regex_replace(text, r" ('s|'\pL)\b", r"\1")  # English clitics: man 's -> man's
    text = tf.strings.regex_replace(text, r"(\pL) ' ([sS])\b", r"\1'\2")  # split on both sides: joe ' s
    text = tf.strings.regex_replace(text, r"(\pL') (\pL)", r"\1\2")  # French elision: l' homme -> l'homme
    text = tf.strings.regex_replace(text, r"(\pL) - (\pL)", r"\1-\2")
    if capitalize:
        text = _capitalize_first(text)
    return text


def _capitalize_first(text):
    first = tf.strings.substr(text, 0, 1, unit="UTF8_CHAR")
    length = tf.strings.length(text, unit="UTF8_CHAR")
    # Position 1 is out of range for an empty string; min(1, length) is not.
    rest = tf.strings.substr(text, tf.minimum(length, 1), length, unit="UTF8_CHAR")
    return tf.strings.upper(first, encoding="utf-8") + rest


def _re_escape(char: str) -> str:
    return "\\" + char if char in "|[]" else char
