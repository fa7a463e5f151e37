"""Token statistics in bounded memory: min, mean, p95 and max over any number of examples.

Values are kept in a histogram: exact below 4,096 tokens, and above that rounded down to
12 significant bits (under 0.05 % off), so p95 is exact for typical examples and the
histogram never holds more than a few tens of thousands of buckets.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

_EXACT = 4096


def _bucket(value: int) -> int:
    if value < _EXACT:
        return value
    shift = value.bit_length() - 12
    return (value >> shift) << shift


@dataclass
class TokenStats:
    """Running statistics of tokens per example."""

    count: int = 0
    total: int = 0
    minimum: int | None = None
    maximum: int | None = None
    #: Examples over the model's per-example limit.
    over_limit: int = 0
    histogram: Counter[int] = field(default_factory=Counter)

    def add(self, tokens: int, limit: int | None) -> None:
        """Record one example of ``tokens`` tokens."""
        self.count += 1
        self.total += tokens
        self.minimum = tokens if self.minimum is None else min(self.minimum, tokens)
        self.maximum = tokens if self.maximum is None else max(self.maximum, tokens)
        self.histogram[_bucket(tokens)] += 1
        if limit is not None and tokens > limit:
            self.over_limit += 1

    @property
    def mean(self) -> float | None:
        """Mean tokens per example."""
        return self.total / self.count if self.count else None

    def percentile(self, q: float) -> int | None:
        """The smallest value with at least ``q`` (0..1) of the examples at or below it."""
        if not self.count:
            return None
        rank = max(1, math.ceil(q * self.count - 1e-9))
        seen = 0
        for value in sorted(self.histogram):
            seen += self.histogram[value]
            if seen >= rank:
                return value
        return self.maximum
