"""Offline token counts match OpenAI's and Qwen's tokenizers; statistics stay bounded."""

from __future__ import annotations

import pytest

from orchestrator.datasets.stats import TokenStats
from orchestrator.datasets.tokens import counter

ASCII = "Open Settings → Security → Reset password, then follow the link we email you."
MIXED = "\u4f60\u597d\uff0c\u4e16\u754c\uff01🙂 <|endoftext|> naïve café 1234567"


class TestTokenCounts:
    # Expected values were computed with tiktoken 0.14 (encode_ordinary) on the official
    # o200k_base/cl100k_base files and with Qwen's qwen.tiktoken (DashScope's vocabulary).
    @pytest.mark.parametrize(("name", "expected"), [
        ("o200k_base", [16, 19]), ("cl100k_base", [16, 22]), ("qwen", [16, 22])])
    def test_counts_match_the_reference_tokenizers(self, name: str,
                                                   expected: list[int]) -> None:
        count = counter(name)

        assert [count(ASCII), count(MIXED)] == expected

    def test_special_token_text_counts_as_plain_text(self) -> None:
        count = counter("o200k_base")

        assert count("<|endoftext|>") > 1

    def test_an_unknown_tokenizer_is_refused(self) -> None:
        with pytest.raises(ValueError, match="unknown tokenizer"):
            counter("gemini")


class TestTokenStats:
    def test_min_mean_p95_max_are_exact_for_small_values(self) -> None:
        stats = TokenStats()
        for value in range(1, 101):
            stats.add(value, limit=90)

        assert (stats.minimum, stats.mean, stats.percentile(0.95), stats.maximum) == \
            (1, 50.5, 95, 100)
        assert stats.over_limit == 10

    def test_large_values_are_within_a_twentieth_of_a_percent(self) -> None:
        stats = TokenStats()
        for value in range(100_000, 200_000, 7):
            stats.add(value, limit=None)

        exact = sorted(range(100_000, 200_000, 7))[int(0.95 * stats.count) - 1]
        assert abs((stats.percentile(0.95) or 0) - exact) / exact < 0.0005
        assert len(stats.histogram) < 5000

    def test_no_examples_means_no_statistics(self) -> None:
        assert TokenStats().percentile(0.95) is None and TokenStats().mean is None
