"""Text conventions shared by every data set: lower-case words, punctuation as its own token."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence

NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

_PUNCTUATION = re.compile(r"([?!.,;:\"()])")


def number_word(n: int) -> str:
    """The English word for 0..9 ("zero" .. "nine")."""
    if not 0 <= n < len(NUMBER_WORDS):
        raise ValueError(f"no number word for {n}; only 0..{len(NUMBER_WORDS) - 1} are spelled out")
    return NUMBER_WORDS[n]


def normalize_question(text: str) -> str:
    """Lower-case, punctuation split off as separate tokens, single spaces: "Is it red?" -> "is it red ?"."""
    return " ".join(_PUNCTUATION.sub(r" \1 ", str(text).lower()).split())


def normalize_answer(answer: object) -> str:
    """One lower-case word: trailing punctuation dropped, inner spaces joined with "_".

    A list of answers (several annotators) becomes its most common entry, ties going to the first.
    """
    if isinstance(answer, Sequence) and not isinstance(answer, str):
        if len(answer) == 0:
            raise ValueError("empty list of answers")
        answers = [normalize_answer(a) for a in answer]
        return Counter(answers).most_common(1)[0][0]
    words = _PUNCTUATION.sub(" ", str(answer).lower()).split()
    if not words:
        raise ValueError(f"empty answer: {answer!r}")
    return "_".join(words)
