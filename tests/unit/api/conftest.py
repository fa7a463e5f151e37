"""The API in-process (Starlette's TestClient, no sockets) on this stack's database, with
three tokens: project alpha's, project beta's, and an admin's (project ops)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from pydantic import SecretStr

from orchestrator.api.app import create_app
from orchestrator.api.auth import hash_token
from orchestrator.config import ApiToken, Settings
from tests.helpers import write_dataset
from tests.unit.test_cli import env  # noqa: F401  (the CLI's environment, a fixture)

TOKENS = {"alpha": "tcl_alpha-0123456789abcdef", "beta": "tcl_beta-0123456789abcdef",
          "ops": "tcl_ops-0123456789abcdef"}
#: OpenAI's webhook signing secret, so POST /webhooks/openai verifies rather than answers 503.
WEBHOOK_SECRET = "whsec_" + "c2VjcmV0LXNpZ25pbmcta2V5LWZvci10ZXN0cw=="


def auth(who: str) -> dict[str, str]:
    """The Authorization header of ``who``'s token."""
    return {"authorization": f"Bearer {TOKENS[who]}"}


@pytest.fixture
def api_settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"api_tokens": [
        ApiToken(name=f"{who}-token", project=who, sha256=hash_token(token),
                 admin=who == "ops") for who, token in TOKENS.items()],
        "openai_webhook_secret": SecretStr(WEBHOOK_SECRET)})


@pytest.fixture
def client(api_settings: Settings, engine: sa.Engine) -> Iterator[TestClient]:
    with TestClient(create_app(api_settings, engine)) as c:
        yield c


SPEC = {"name": "api-job", "provider": "openai", "base_model": "gpt-4o-mini-2024-07-18",
        "labels": {"team": "support"}}


def submit(client: TestClient, who: str, tmp_path: Path, **spec: object) -> dict[str, object]:
    """A multipart submit of ``SPEC`` (updated by ``spec``) with a fresh dataset."""
    import json

    dataset = write_dataset(tmp_path / "train.jsonl")
    response = client.post("/v1/jobs", headers=auth(who),
                           data={"spec": json.dumps({**SPEC, **spec})},
                           files={"training_file": ("train.jsonl", dataset.read_bytes())})
    assert response.status_code in (200, 201), response.text
    body: dict[str, object] = response.json()
    return body
