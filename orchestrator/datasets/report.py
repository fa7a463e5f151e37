"""The validation report: problems (capped, with counts), statistics and the cost estimate,
as plain data for ``--json``, a summary for the job row, and one line for a DatasetError."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from orchestrator.datasets.issues import Issue, IssueLog
from orchestrator.datasets.rules import Rules
from orchestrator.datasets.stats import TokenStats


@dataclass
class Report:
    """Everything ``validate_file`` learned about one dataset file."""

    label: str
    provider: str
    model: str
    method: str
    format: str
    purpose: str
    rules: Rules
    log: IssueLog
    bytes: int = 0
    lines: int = 0
    examples: int = 0
    tokens: TokenStats | None = None
    tokens_approximate: bool = False
    epochs: int | None = None
    epochs_source: str = ""
    billed_tokens: int | None = None
    cost_usd: float | None = None
    usd_per_million: float | None = None
    price_source: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when the dataset has no errors (warnings are allowed)."""
        return self.log.error_count == 0

    @property
    def token_limit(self) -> int | None:
        """The per-example limit the statistics were compared with."""
        return self.rules.token_limit

    def error_line(self) -> str:
        """The first errors as one line (see ``IssueLog.error_line``)."""
        return self.log.error_line(self.label)

    def summary(self) -> dict[str, Any]:
        """The numbers dashboards want (stored on the job and in its history)."""
        stats = self.tokens
        return {
            "format": self.format, "examples": self.examples, "bytes": self.bytes,
            "tokens": None if stats is None or not stats.count else {
                "min": stats.minimum, "mean": round(stats.mean or 0, 1),
                "p95": stats.percentile(0.95), "max": stats.maximum, "total": stats.total,
                "over_limit": stats.over_limit, "approximate": self.tokens_approximate},
            "epochs": self.epochs, "billed_tokens": self.billed_tokens,
            "estimated_cost_usd": None if self.cost_usd is None else round(self.cost_usd, 4),
            "errors": self.log.error_count, "warnings": self.log.warning_count,
        }

    def as_json(self) -> dict[str, Any]:
        """The whole report as plain data (``tunectl dataset validate --json``)."""
        stats = self.tokens
        return {
            "file": self.label, "provider": self.provider, "model": self.model,
            "method": self.method, "format": self.format, "purpose": self.purpose,
            "ok": self.ok, "bytes": self.bytes, "lines": self.lines, "examples": self.examples,
            "error_count": self.log.error_count, "warning_count": self.log.warning_count,
            "errors": [_issue(i) for i in self.log.errors],
            "warnings": [_issue(i) for i in self.log.warnings],
            "codes": dict(sorted(self.log.codes.items())),
            "tokens": None if stats is None else {
                "counted": True, "encoding": self.rules.tokenizer,
                "approximate": self.tokens_approximate, "examples": stats.count,
                "min": stats.minimum, "mean": stats.mean, "p95": stats.percentile(0.95),
                "max": stats.maximum, "total": stats.total, "limit": self.token_limit,
                "over_limit": stats.over_limit, "over_limit_effect": self.rules.over_limit},
            "epochs": {"value": self.epochs, "source": self.epochs_source},
            "billed_tokens": self.billed_tokens,
            "cost": {"usd": self.cost_usd, "usd_per_million": self.usd_per_million,
                     "source": self.price_source},
            "rules": self.rules.as_json(),
            "notes": self.notes,
        }


def _issue(issue: Issue) -> dict[str, object]:
    return issue.as_json()
