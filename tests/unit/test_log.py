"""Secrets never reach a rendered log line."""

from __future__ import annotations

import io
import json
import logging

import structlog

from orchestrator import log


def rendered(fmt: str = "json") -> tuple[io.StringIO, structlog.stdlib.BoundLogger]:
    stream = io.StringIO()
    log.configure(fmt, "info", stream)
    return stream, structlog.get_logger("t")


def test_secret_keys_and_values_are_redacted_in_json_lines() -> None:
    stream, logger = rendered()
    with structlog.contextvars.bound_contextvars(job_id="job_1"):
        logger.info("provider.call", api_key="sk-live-abcdef123456",
                    headers={"Authorization": "Bearer abc.def", "x-request-id": "req_1"},
                    note="key sk-proj-ZZZZ999999 and secret whsec_c2VjcmV0",
                    url="postgresql://user:hunter2@db/x")
    line = json.loads(stream.getvalue())

    assert line["job_id"] == "job_1"
    assert line["api_key"] == "[REDACTED]"
    assert line["headers"] == {"Authorization": "[REDACTED]", "x-request-id": "req_1"}
    assert line["note"] == "key [REDACTED] and secret [REDACTED]"
    assert "hunter2" not in stream.getvalue()
    assert line["url"] == "postgresql://[REDACTED]@db/x"


def test_stdlib_loggers_and_tracebacks_are_redacted_too() -> None:
    stream, _ = rendered()
    try:
        raise RuntimeError("failed with Bearer sk-secret-value-1")
    except RuntimeError:
        logging.getLogger("celery.worker").exception("task failed for sk-abcdefghijk")
    text = stream.getvalue()

    assert "sk-secret-value-1" not in text and "sk-abcdefghijk" not in text
    assert json.loads(text)["logger"] == "celery.worker"


def test_words_that_merely_contain_sk_are_left_alone() -> None:
    stream, logger = rendered()
    logger.info("x", note="task-1234567 and ask-me-anything")
    assert json.loads(stream.getvalue())["note"] == "task-1234567 and ask-me-anything"


def test_token_counts_stay_and_secrets_in_prose_go() -> None:
    stream, logger = rendered()
    logger.info("x", billed_tokens=1200, max_tokens=5, access_token="abc",
                note="retry with api_key=abcdef123 and Authorization: Basic dXNlcjpwYXNz")
    line = json.loads(stream.getvalue())

    assert (line["billed_tokens"], line["max_tokens"]) == (1200, 5)
    assert line["access_token"] == "[REDACTED]"
    assert "abcdef123" not in line["note"] and "dXNlcjpwYXNz" not in line["note"]


def test_google_access_tokens_and_private_keys_go() -> None:
    stream, logger = rendered()
    logger.info("x", note="token ya29.a0AfB_byC-xyz.123 refused",
                key='{"private_key": "-----BEGIN PRIVATE KEY-----\\nMIIEv\\n'
                    '-----END PRIVATE KEY-----\\n", "client_email": "a@b"}')
    text = stream.getvalue()
    line = json.loads(text)

    assert line["note"] == "token [REDACTED] refused"
    assert "MIIEv" not in text and "a@b" in line["key"]
