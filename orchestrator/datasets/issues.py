"""Problems found in a dataset, and the capped log that collects them.

Every problem has a code (stable, for scripts), a line number (None only for problems of
the file as a whole, such as too few examples) and a message that says how to fix it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from enum import StrEnum

#: Codes of problems that belong to the file as a whole and so carry no line number.
#: How many errors the one-line summary (a failed job's reason) spells out.
ERRORS_IN_LINE = 3
FILE_CODES = frozenset({
    "empty_file", "file_too_large", "too_few_examples", "too_many_examples",
    "too_many_validation_examples", "few_examples", "unreadable_file", "not_a_zip",
    "zip_unsafe", "zip_no_jsonl", "zip_many_jsonl", "unexpected_zip", "unknown_model",
    "over_limit", "wrong_format_file",
})


class Severity(StrEnum):
    """How bad a problem is."""

    #: The provider would reject the dataset (or tunectl refuses it).
    ERROR = "error"
    #: The dataset can be used, but probably not as intended.
    WARNING = "warning"


@dataclass(frozen=True)
class Issue:
    """One problem: what (code), where (line), and how to fix it (message)."""

    severity: Severity
    code: str
    message: str
    line: int | None = None

    def where(self, label: str) -> str:
        """``label:line`` or just ``label`` for a file-level problem."""
        return f"{label}:{self.line}" if self.line is not None else label

    def as_json(self) -> dict[str, object]:
        """The problem as plain data."""
        return {"severity": self.severity.value, "code": self.code, "line": self.line,
                "message": self.message}


@dataclass
class IssueLog:
    """Collects problems, keeping the first ``cap`` of each severity and counting all."""

    cap: int = 50
    errors: list[Issue] = field(default_factory=list)
    warnings: list[Issue] = field(default_factory=list)
    error_count: int = 0
    warning_count: int = 0
    codes: Counter[str] = field(default_factory=Counter)
    #: The line the next error/warn call is about (set by the reader for each line).
    line: int | None = None

    def error(self, code: str, message: str, *, line: int | None = -1) -> None:
        """Record an error on the current line (or ``line``; None for the whole file)."""
        self._add(Severity.ERROR, code, message, self.line if line == -1 else line)

    def warn(self, code: str, message: str, *, line: int | None = -1) -> None:
        """Record a warning on the current line (or ``line``; None for the whole file)."""
        self._add(Severity.WARNING, code, message, self.line if line == -1 else line)

    def error_line(self, label: str) -> str:
        """The first errors as one line: ``label:line: message [code] | … (+N more errors)``.

        An error whose code was already shown is abbreviated to ``label:line [code]``.
        """
        shown = self.errors[:ERRORS_IN_LINE]
        parts, codes = [], set()
        for issue in shown:
            where = issue.where(label)
            parts.append(f"{where} [{issue.code}]" if issue.code in codes
                         else f"{where}: {issue.message} [{issue.code}]")
            codes.add(issue.code)
        rest = self.error_count - len(shown)
        tail = f" (+{rest} more error{'s' if rest != 1 else ''})" if rest > 0 else ""
        return " | ".join(parts) + tail

    def _add(self, severity: Severity, code: str, message: str, line: int | None) -> None:
        self.codes[code] += 1
        issue = Issue(severity, code, message, line)
        # File-level problems are few (one per code) and always kept.
        keep = line is None
        if severity is Severity.ERROR:
            self.error_count += 1
            if keep or len(self.errors) < self.cap:
                self.errors.append(issue)
        else:
            self.warning_count += 1
            if keep or len(self.warnings) < self.cap:
                self.warnings.append(issue)
