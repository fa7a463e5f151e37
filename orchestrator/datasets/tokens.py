"""Offline token counting with the vocabularies shipped inside the ``quicktok-v1`` wheel.

Nothing is downloaded: ``o200k_base`` and ``cl100k_base`` (OpenAI) and ``qwen`` (the
Qwen2/2.5/3 vocabulary that DashScope's Qwen models use) are bundled data files. Counts
match tiktoken's ``encode_ordinary`` (special-token strings in the text count as text).
Gemini's tokenizer is not available offline; its rules use ``o200k_base`` as a proxy and
mark the counts approximate.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Protocol

import quicktok  # type: ignore[import-untyped]

#: tunectl's tokenizer names → quicktok's bundled encodings.
ENCODINGS = {"o200k_base": "o200k_base", "cl100k_base": "cl100k_base", "qwen": "qwen3"}


class Counter(Protocol):
    """Counts the tokens of a text."""

    def __call__(self, text: str) -> int: ...


@lru_cache(maxsize=len(ENCODINGS))
def counter(name: str) -> Counter:
    """A token counter for ``name`` (loaded once per process; o200k takes ~80 MB)."""
    if name not in ENCODINGS:
        raise ValueError(f"unknown tokenizer {name!r}; known: {', '.join(ENCODINGS)}")
    encoding = quicktok.get_encoding(ENCODINGS[name])
    count, encode = encoding.count, encoding.encode_ordinary

    def tokens(text: str) -> int:
        try:
            return int(count(text))
        except ValueError:  # the text spells a special token: count it as plain text
            return len(encode(text))

    return tokens
