"""The demo's built-in task: numbers written out in English and German."""

import os
import sys

import pytest

sys.path.insert(
    0, os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "examples")
)

import number_words  # noqa: E402


@pytest.mark.parametrize(
    "n, en, de",
    [
        (0, "zero", "null"),
        (1, "one", "eins"),
        (16, "sixteen", "sechzehn"),
        (21, "twenty-one", "einundzwanzig"),
        (31, "thirty-one", "einunddreißig"),
        (101, "one hundred one", "einhunderteins"),
        (342, "three hundred forty-two", "dreihundertzweiundvierzig"),
        (1001, "one thousand one", "eintausendeins"),
        (21000, "twenty-one thousand", "einundzwanzigtausend"),
        (201001, "two hundred one thousand one", "zweihunderteintausendeins"),
        (999999, "nine hundred ninety-nine thousand nine hundred ninety-nine",
         "neunhundertneunundneunzigtausendneunhundertneunundneunzig"),
    ],
)
def test_hand_checked_numbers(n, en, de):
    assert number_words.english(n) == en
    assert number_words.german(n) == de


def test_every_number_has_a_distinct_spelling_and_split_is_disjoint():
    numbers = range(0, number_words.LIMIT, 7)
    assert len({number_words.german(n) for n in numbers}) == len(numbers)
    assert len({number_words.english(n) for n in numbers}) == len(numbers)
    train, test = number_words.split(500, 100, seed=3, high=2000)
    assert len(set(train)) == 500 and len(set(test)) == 100 and not set(train) & set(test)
    with pytest.raises(ValueError, match="n must be in"):
        number_words.german(number_words.LIMIT)
