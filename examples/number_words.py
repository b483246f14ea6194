"""A built-in translation task: numbers written out in English and in German.

"three thousand four hundred forty-two" -> "dreitausendvierhundertzweiundvierzig".
German writes a number as one word and puts the units before the tens
("zweiundvierzig", two-and-forty), so the model has to learn word pieces,
reordering and agreement ("eins" alone, "ein-" in compounds): a small real
translation problem that needs no download.
"""

import random
from typing import List, Tuple

_EN_ONES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
            "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen"]
_EN_TENS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
_DE_ONES = ["null", "eins", "zwei", "drei", "vier", "fünf", "sechs", "sieben", "acht", "neun", "zehn", "elf",
            "zwölf", "dreizehn", "vierzehn", "fünfzehn", "sechzehn", "siebzehn", "achtzehn", "neunzehn"]
_DE_TENS = ["", "", "zwanzig", "dreißig", "vierzig", "fünfzig", "sechzig", "siebzig", "achtzig", "neunzig"]

LIMIT = 1_000_000


def english(n: int) -> str:
    """US English, no "and": 342 -> "three hundred forty-two"."""
    if not 0 <= n < LIMIT:
        raise ValueError(f"n must be in [0, {LIMIT}), got {n}")
    if n < 20:
        return _EN_ONES[n]
    if n < 100:
        tens, ones = divmod(n, 10)
        return _EN_TENS[tens] + (f"-{_EN_ONES[ones]}" if ones else "")
    if n < 1000:
        hundreds, rest = divmod(n, 100)
        return f"{_EN_ONES[hundreds]} hundred" + (f" {english(rest)}" if rest else "")
    thousands, rest = divmod(n, 1000)
    return f"{english(thousands)} thousand" + (f" {english(rest)}" if rest else "")


def _german_below_1000(n: int, final: bool) -> str:
    # "eins" only at the very end of the number; "ein" inside a compound.
    if n == 1:
        return "eins" if final else "ein"
    if n < 20:
        return _DE_ONES[n]
    if n < 100:
        tens, ones = divmod(n, 10)
        return (("ein" if ones == 1 else _DE_ONES[ones]) + "und" if ones else "") + _DE_TENS[tens]
    hundreds, rest = divmod(n, 100)
    return (
        ("ein" if hundreds == 1 else _DE_ONES[hundreds]) + "hundert" + (_german_below_1000(rest, final) if rest else "")
    )


def german(n: int) -> str:
    """One word: 342 -> "dreihundertzweiundvierzig", 1001 -> "eintausendeins"."""
    if not 0 <= n < LIMIT:
        raise ValueError(f"n must be in [0, {LIMIT}), got {n}")
    if n == 0:
        return "null"
    thousands, rest = divmod(n, 1000)
    head = _german_below_1000(thousands, final=False) + "tausend" if thousands else ""
    return head + (_german_below_1000(rest, final=True) if rest else "")


def pairs(numbers) -> Tuple[List[str], List[str]]:
    """(English, German) for each number."""
    numbers = list(numbers)
    return [english(n) for n in numbers], [german(n) for n in numbers]


def split(train_size: int, test_size: int, seed: int = 0, high: int = LIMIT):
    """Disjoint train and test numbers from [0, high).

    Numbers are drawn by length first (1, 2, 3, ... digits equally likely),
    then uniformly within that length, so small numbers are not drowned out
    by the many large ones.
    """
    rng = random.Random(seed)
    lengths = range(1, len(str(high - 1)) + 1)
    wanted = train_size + test_size
    if wanted > high:
        raise ValueError(f"cannot draw {wanted} distinct numbers from [0, {high})")
    drawn, seen = [], set()
    while len(drawn) < wanted:
        digits = rng.choice(lengths)
        n = rng.randrange(0 if digits == 1 else 10 ** (digits - 1), min(10 ** digits, high))
        if n not in seen:
            seen.add(n)
            drawn.append(n)
    return drawn[:train_size], drawn[train_size:]


def vocabulary() -> List[str]:
    """The task's WordPiece vocabulary, built from its morphemes.

    The German words are long compounds, for which tensorflow-text's WordPiece
    learner (pure Python, quadratic in word length) needs minutes; the pieces
    are known, so they are listed: every word that can start a number, every
    "##" continuation, and single letters so no input is ever [UNK].
    """
    from keras_transformer.text import RESERVED_TOKENS

    english = _EN_ONES + _EN_TENS[2:] + ["hundred", "thousand"]
    german = _DE_ONES + _DE_TENS[2:] + ["ein", "und", "hundert", "tausend"]
    letters = list("abcdefghijklmnopqrstuvwxyzäöüß-")
    pieces = english + german + letters
    continuations = ["##" + p for p in german + _EN_ONES[1:10] + letters]
    vocab = list(RESERVED_TOKENS)
    for token in pieces + continuations:
        if token not in vocab:
            vocab.append(token)
    return vocab
