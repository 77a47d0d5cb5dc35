"""Reading a prompt the way the built-in generators do: lower-case singular words and a hash."""

import hashlib
import re
from typing import TypeVar

T = TypeVar("T")

_WORD_PATTERN = re.compile(r"[a-z]+")


def prompt_words(text: str) -> list[str]:
    return [_singular(word) for word in _WORD_PATTERN.findall(text.lower())]


def word_set(words: str) -> frozenset[str]:
    return frozenset(words.split())


def hash_text(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


def last_match(words: list[str], table: dict[str, T], default: T) -> T:
    """The value of the last word the table knows: later words refine earlier ones."""
    matches = [table[word] for word in words if word in table]
    return matches[-1] if matches else default


def _singular(word: str) -> str:
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
        return word[:-1]
    return word
