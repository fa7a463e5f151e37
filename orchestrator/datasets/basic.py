"""A basic streaming JSONL check: every line one JSON object of the method's shape.

It stops at the first problem and names its line. The full per-provider validator (token
counts, provider limits, conversion) is a separate module that replaces this one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.errors import DatasetError

MAX_LINE_BYTES = 8 << 20


@dataclass(frozen=True)
class DatasetSummary:
    """What the check learned about a dataset."""

    examples: int
    bytes: int


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _shape_error(record: dict[str, Any], method: str) -> str | None:
    if method == "dpo":
        missing = [k for k in ("input", "preferred_output", "non_preferred_output")
                   if k not in record]
        return f"a DPO example needs {', '.join(missing)}" if missing else None
    messages = record.get("messages")
    if not isinstance(messages, list) or not messages:
        return "an SFT example needs a non-empty \"messages\" list"
    if not any(isinstance(m, dict) and m.get("role") == "assistant" for m in messages):
        return "an SFT example needs at least one assistant message to learn from"
    return None


def check_jsonl(path: Path, *, method: str, min_examples: int, label: str) -> DatasetSummary:
    """Check ``path`` line by line; raise DatasetError naming ``label`` and the line."""
    examples = size = 0
    with path.open("rb") as f:
        for number, raw in enumerate(f, start=1):
            size += len(raw)
            line = raw.rstrip(b"\n").rstrip(b"\r")
            where = f"{label}:{number}"
            if len(line) > MAX_LINE_BYTES:
                raise DatasetError(f"{where}: line longer than {MAX_LINE_BYTES} bytes")
            if not line.strip():
                raise DatasetError(f"{where}: blank line; remove it (one JSON object per line)")
            try:
                record = json.loads(line.decode("utf-8"), object_pairs_hook=_reject_duplicates,
                                    parse_constant=_reject_constant)
            except UnicodeDecodeError:
                raise DatasetError(f"{where}: not valid UTF-8; re-encode the file") from None
            except (ValueError, RecursionError) as exc:
                raise DatasetError(f"{where}: not valid JSON ({exc}); "
                                   "each line must be one JSON object") from None
            if not isinstance(record, dict):
                raise DatasetError(f"{where}: a line must be a JSON object, "
                                   f"not {type(record).__name__}")
            problem = _shape_error(record, method)
            if problem:
                raise DatasetError(f"{where}: {problem}")
            examples += 1
    if examples < min_examples:
        raise DatasetError(f"{label}: {examples} examples; at least {min_examples} are needed")
    return DatasetSummary(examples=examples, bytes=size)
