"""schemathesis against the API's own OpenAPI document, in-process: every operation, with
valid and invalid data, must answer without a 5xx, with a documented status, content type
and body, and refuse requests without a token. Examples are bounded so CI stays fast."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
import sqlalchemy as sa
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from schemathesis.generation.modes import GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance

from orchestrator.api.app import create_app
from orchestrator.config import Settings
from tests.unit.api.conftest import TOKENS, submit


@pytest.fixture
def app(api_settings: Settings, engine: sa.Engine, tmp_path: Path) -> Iterator[FastAPI]:
    """The API with one job of alpha's, so the job routes meet a real job too."""
    from fastapi.testclient import TestClient

    app = create_app(api_settings, engine)
    with TestClient(app) as client:
        submit(client, "alpha", tmp_path, name="existing")
    yield app


def no_secret_in_body(ctx: object, response: object, case: object) -> None:
    """No response ever carries a token or a provider key."""
    text = getattr(response, "text", "")
    for secret in (*TOKENS.values(), "sk-test"):
        assert secret not in text, f"a response carried a secret: {secret[:6]}…"


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_the_api_honours_its_openapi_document(app: FastAPI, mode: GenerationMode) -> None:
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)

    @schema.auth()
    class AdminToken:
        """Every generated case carries the admin token, given the way schemathesis can
        take it off again (its auth checks then expect a 401 without it)."""

        def get(self, case: schemathesis.Case, ctx: object) -> str:
            return TOKENS["ops"]

        def set(self, case: schemathesis.Case, data: str, ctx: object) -> None:
            case.headers = {**(case.headers or {}), "Authorization": f"Bearer {data}"}

    operations = [result.ok() for result in schema.get_all_operations()]
    # Every route: jobs (6), datasets, healthz, readyz, metrics, provider webhooks.
    assert len(operations) == 11

    for operation in operations:
        raw = operation.definition.raw
        if mode is GenerationMode.NEGATIVE and not (raw.get("parameters")
                                                    or raw.get("requestBody")):
            continue  # nothing to get wrong: /healthz, /readyz, /metrics take no input
        fuzz(operation, mode)


def fuzz(operation: Any, mode: GenerationMode) -> None:
    """Run ``operation`` with bounded generated cases and every check."""
    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=15, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    def check(case: schemathesis.Case) -> None:
        # Valid-looking data that is still rightly refused with a 400, so that one check is
        # left out there: a spec that satisfies the schema but not its provider's own rules
        # (model names, hyperparameter ranges) or names a dataset never uploaded, and a
        # well-formed cursor this server never gave out.
        refusable = operation.label == "POST /v1/jobs" or "cursor" in (case.query or {})
        excluded = [positive_data_acceptance] if refusable else []
        case.call_and_validate(excluded_checks=excluded, additional_checks=[no_secret_in_body])

    check()
