"""Reading JSONL safely: one bounded line at a time, every JSON trap reported by line.

The stdlib parser accepts ``NaN``, keeps the last of duplicate keys, lets lone surrogates
through and recurses without limit; ``str.splitlines`` splits on U+2028. This module closes
each of those: lines are split on ``\\n`` bytes only, decoded strictly, parsed with hooks that
refuse duplicates and non-finite numbers, and checked for depth and unpaired surrogates.
A line longer than the cap is skipped without being held in memory.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO, Any

#: tunectl's own cap on one line (not a provider limit): 16 MiB.
MAX_LINE_BYTES = 16 << 20
#: Deepest nesting accepted (a chat example needs about 6 levels; tool schemas a few more).
MAX_DEPTH = 64
_BOM = b"\xef\xbb\xbf"
_SEPARATORS = (b"\xe2\x80\xa8", b"\xe2\x80\xa9")  # raw U+2028 / U+2029
_SURROGATE = re.compile("[\ud800-\udfff]")


@dataclass(frozen=True)
class BadLine:
    """Why a line is not one usable JSON object."""

    code: str
    message: str


class _Refused(ValueError):
    """Raised from the parser hooks; carries the problem."""

    def __init__(self, problem: BadLine) -> None:
        super().__init__(problem.message)
        self.problem = problem


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _Refused(BadLine("duplicate_key", f"key {json.dumps(key)} appears twice "
                                       "in one object; keep only one of them"))
            seen.add(key)
    return out


def _constant(name: str) -> Any:
    raise _Refused(BadLine("nan_or_infinity", f"{name} is not valid JSON; write a finite "
                           "number, a string or null instead"))


def _float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise _Refused(BadLine("nan_or_infinity", f"{text} overflows to infinity; write a "
                               "smaller number"))
    return value


_DECODER = json.JSONDecoder(object_pairs_hook=_object, parse_constant=_constant,
                            parse_float=_float)


#: The C scanner: JSONDecoder.decode minus two Python frames per line.
_SCAN: Callable[[str, int], tuple[Any, int]] = _DECODER.scan_once  # type: ignore[attr-defined]


def parse_json(text: str, start: int | None = None) -> Any | BadLine:
    """Parse one JSON document strictly; return the value or the problem.

    ``start`` is where the document begins (None: after any leading whitespace).
    """
    if start is None:
        start = len(text) - len(text.lstrip()) if text[:1].isspace() else 0
    try:
        try:
            value, end = _SCAN(text, start)
        except StopIteration as exc:
            raise json.JSONDecodeError("Expecting value", text, exc.value) from None
        if end != len(text) and not text[end:].isspace():
            raise json.JSONDecodeError("Extra data", text, end)
    except _Refused as exc:
        return exc.problem
    except json.JSONDecodeError as exc:
        return BadLine("invalid_json", f"not valid JSON ({exc.msg} at column {exc.colno}); "
                       "each line must be one complete JSON object")
    except RecursionError:
        return BadLine("too_deep", f"values are nested deeper than {MAX_DEPTH} levels; "
                       "flatten the data")
    except ValueError as exc:  # e.g. an integer over Python's 4,300-digit limit
        return BadLine("invalid_json", f"not a usable JSON value ({str(exc)[:80]}); "
                       "shorten the number or write it as a string")
    return value


def parse_line(raw: bytes, *, first: bool = False) -> Any | BadLine:
    """One line's bytes (without the newline) → the JSON object, or the problem."""
    brace = raw[:1] == b"{"  # the usual line; it can be neither blank nor a BOM
    if not brace:
        if raw.startswith(_BOM):
            where = "the file starts" if first else "this line starts"
            return BadLine("bom", f"{where} with a UTF-8 byte order mark; save the file as "
                           "UTF-8 without BOM")
        if not raw or raw.isspace():
            return BadLine("blank_line", "blank line; delete it (every line must hold one "
                           "JSON object)")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return BadLine("invalid_utf8", f"not valid UTF-8 (byte {exc.start + 1} of the line); "
                       "re-encode the file as UTF-8")
    if b"\xe2\x80" in raw and (_SEPARATORS[0] in raw or _SEPARATORS[1] in raw):
        return BadLine("line_separator", "raw U+2028/U+2029 line separator inside the line "
                       "(many tools split lines there); write it escaped as \\u2028 or "
                       "\\u2029")
    value = parse_json(text, 0 if brace else None)
    if isinstance(value, BadLine):
        return value
    if not isinstance(value, dict):
        kind = {list: "an array", str: "a string", bool: "a boolean"}.get(
            type(value), "a number" if isinstance(value, int | float) else "null")
        return BadLine("not_object", f"the line is {kind}, not a JSON object; write each "
                       "example as {...}")
    # Cheap guards first: deep nesting needs many brackets, surrogates need \ud8.. escapes.
    if raw.count(b"[") + raw.count(b"{") > MAX_DEPTH and _depth(value) > MAX_DEPTH:
        return BadLine("too_deep", f"values are nested deeper than {MAX_DEPTH} levels; "
                       "flatten the data")
    if (b"\\ud" in raw or b"\\uD" in raw) and _has_lone_surrogate(value):
        return BadLine("lone_surrogate", "a string holds an unpaired UTF-16 surrogate "
                       "(\\ud800-\\udfff escape without its pair); fix the text's encoding")
    return value


def _depth(value: Any) -> int:
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, depth)
            if deepest > MAX_DEPTH:
                return deepest
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    return deepest


def _has_lone_surrogate(value: Any) -> bool:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if _SURROGATE.search(item):
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def read_lines(stream: IO[bytes], max_line_bytes: int = MAX_LINE_BYTES,
               ) -> Iterator[tuple[int, Any | BadLine, int]]:
    """Yield ``(line number, object or problem, bytes)`` for each line of ``stream``.

    Memory stays bounded by ``max_line_bytes``: a longer line is read in pieces, dropped,
    and reported as ``line_too_long``. A final line without a newline counts as a line; a
    file's closing newline does not start an empty one.
    """
    number = 0
    limit = max_line_bytes + 1
    readline = stream.readline
    while True:
        raw = readline(limit)
        if not raw:
            return
        number += 1
        if raw[-1:] == b"\n":
            line = raw[:-2] if raw[-2:-1] == b"\r" else raw[:-1]
        elif len(raw) < limit:
            line = raw  # the last line, without a newline
        else:
            size = len(raw)
            while raw and raw[-1:] != b"\n":
                raw = readline(limit)
                size += len(raw)
            yield number, BadLine("line_too_long", f"line is {size:,} bytes, over tunectl's "
                                  f"limit of {max_line_bytes:,}; shorten the example (host "
                                  "images by URL instead of inlining them)"), size
            continue
        yield number, parse_line(line, first=number == 1), len(raw)
