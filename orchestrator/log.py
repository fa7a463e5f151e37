"""Logging: structlog JSON lines (or console lines) with secrets redacted before rendering.

Standard-library loggers (Celery, uvicorn, alembic) go through the same chain, so a process
writes one stream. Redaction is the last processor before the renderer, so it also sees
bound context variables and formatted tracebacks.
"""

from __future__ import annotations

import logging
import re
import sys
from typing import Any

import structlog
from structlog.typing import EventDict, Processor

#: Keys whose values are secrets: whole words, so ``billed_tokens`` or ``max_tokens`` stay.
SENSITIVE_KEY = re.compile(
    r"(^|[_\-.])(secrets?|(access|refresh|id|auth|bearer)?[_\-]?token|password|passwd|"
    r"api[_\-]?key|authorization|cookie|set-cookie|signature|credentials?|private[_\-]?key)$",
    re.IGNORECASE)
#: Secrets inside free text: provider keys, Google access tokens and PEM private keys,
#: auth headers, key=value pairs, URL passwords.
SENSITIVE_VALUE = re.compile(
    r"(whsec_[A-Za-z0-9+/=]+|\bsk-[A-Za-z0-9_\-]{6,}|\btcl_[A-Za-z0-9_\-]{8,}"
    r"|\bya29\.[A-Za-z0-9._\-]+"
    r"|-----BEGIN [A-Z ]*PRIVATE KEY-----.*?(-----END [A-Z ]*PRIVATE KEY-----|$)"
    r"|\b(Bearer|Basic)\s+[A-Za-z0-9._~+/=\-]+"
    r"|(?<=://)[^/\s:@]+:[^/\s@]+(?=@))", re.IGNORECASE | re.DOTALL)
SENSITIVE_ASSIGNMENT = re.compile(
    r"\b(api[_\-]?key|token|secret|password)(\s*[=:]\s*)[^\s&,;\"']+", re.IGNORECASE)
REDACTED = "[REDACTED]"


def _scrub(value: Any, depth: int = 0) -> Any:
    if depth > 8:
        return "[too deep]"
    if isinstance(value, dict):
        return {k: REDACTED if SENSITIVE_KEY.search(str(k)) else _scrub(v, depth + 1)
                for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_scrub(v, depth + 1) for v in value)
    if isinstance(value, str):
        value = SENSITIVE_ASSIGNMENT.sub(rf"\1\2{REDACTED}", value)
        return SENSITIVE_VALUE.sub(REDACTED, value)
    return value


def redact(_logger: Any, _method: str, event_dict: EventDict) -> EventDict:
    """Replace secret-looking keys and values (API keys, bearer tokens, URL passwords)."""
    scrubbed: EventDict = _scrub(event_dict)
    return scrubbed


def processors(fmt: str) -> tuple[list[Processor], Processor]:
    """The shared pre-chain and the renderer for ``fmt`` ("json" or "console")."""
    chain: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        redact,
    ]
    renderer: Processor = (structlog.dev.ConsoleRenderer(colors=False) if fmt == "console"
                           else structlog.processors.JSONRenderer())
    return chain, renderer


def configure(fmt: str = "json", level: str = "info", stream: Any = None) -> None:
    """Send structlog and stdlib logging through one redacting chain to ``stream`` (stderr)."""
    chain, renderer = processors(fmt)
    numeric = logging.getLevelName(level.upper())
    structlog.configure(
        processors=[*chain, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.stdlib.LoggerFactory(),
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=chain,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    ))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric)
    for noisy in ("httpx", "httpcore", "alembic"):
        logging.getLogger(noisy).setLevel(max(numeric, logging.WARNING))
