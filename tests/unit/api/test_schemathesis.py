"""schemathesis against the API's own OpenAPI document, in-process: every operation, with
valid and invalid data, called with an admin token and with a project token, must answer
without a 5xx, with a documented status, content type and body, and refuse requests
without a token; then sequences of calls that follow the document's links (submit → get,
list → history, events, cancel) must do the same. Cases also carry what an attacker sends
and no schema describes: hostile spec documents (deep nesting, an alias bomb) and times at
the edges of the calendar. Examples are bounded and derandomized so CI stays fast (about
30 s) and a failure reproduces."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
import sqlalchemy as sa
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis.generation.modes import GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance

from orchestrator.api.app import create_app
from orchestrator.config import Settings
from orchestrator.db.types import utcnow
from orchestrator.providers.openai.emulator import Scenario
from tests.helpers import Clock, Pump, in_process_emulator
from tests.unit.api.conftest import TOKENS, submit

#: Examples per operation and mode: listing is cheap, the rest read or write little more.
EXAMPLES = {"GET /v1/jobs": 100}
DEFAULT_EXAMPLES = 20
SUBMIT = "POST /v1/jobs"
#: Reproducible runs of bounded time: no shrinking (a failure is reported as found).
BOUNDED: dict[str, Any] = {
    "deadline": None, "derandomize": True, "database": None,
    "phases": [Phase.explicit, Phase.generate], "suppress_health_check": list(HealthCheck)}


@pytest.fixture
def app(api_settings: Settings, engine: sa.Engine, tmp_path: Path) -> Iterator[FastAPI]:
    """The API with one job of alpha's that is training at the (emulated) provider, so the
    job routes meet a real job and its events route a real provider job."""
    app = create_app(api_settings, engine)
    clock = Clock()
    clock.current = utcnow()  # the API stamps jobs with the real time
    with in_process_emulator(clock, Scenario(job_duration_s=3600)), TestClient(app) as client:
        job_id = str(submit(client, "alpha", tmp_path, name="existing")["id"])
        pump = Pump(api_settings, engine, clock)
        for _ in range(10):
            clock.advance(1)
            pump.scheduler().tick()
            pump.run_sent()
            if pump.job(job_id).state == "training":
                break
        assert pump.job(job_id).provider_job_id is not None
        yield app


def hostile_documents() -> st.SearchStrategy[str]:
    """Spec texts an attacker sends: nesting far deeper than any spec (flow and block
    style, JSON too), and an alias bomb."""
    depth = st.sampled_from([64, 1_000, 50_000])
    return st.one_of(
        depth.map(lambda n: "[" * n),
        depth.map(lambda n: "{a: " * n),
        depth.map(lambda n: "".join(f"{' ' * i}- \n" for i in range(min(n, 1_000)))),
        depth.map(lambda n: '{"name": ' + "[" * n + "]" * n + "}"),
        st.just("a: &a [x, x]\n" + "".join(f"{c}: &{c} [*{p}, *{p}]\n"
                                            for p, c in zip("abcdefgh", "bcdefghi",
                                                            strict=True))),
    )


#: Valid RFC 3339 times at the edges of the calendar, whose offset takes them past it in UTC.
EDGE_TIMES = st.builds("{}T{}{}".format, st.sampled_from(["0001-01-01", "9999-12-31"]),
                       st.sampled_from(["00:00:00", "23:59:59.999999"]),
                       st.sampled_from(["Z", "+05:00", "-05:00", "+23:59", "-23:59"]))


class Hostile:
    """What an attacker sends that no schema describes, mixed into generated cases: hostile
    documents as the spec of a submit, edge times in every date-time query parameter.
    Such a case may be refused (a 4xx), never answered with a 5xx."""

    def __init__(self) -> None:
        self.ids: set[str] = set()

    def variants(self, case: schemathesis.Case) -> st.SearchStrategy[Any]:
        """``case`` itself, or a hostile variant of it."""
        variants = [self._spec(case)] if case.operation.label == SUBMIT and case.media_type \
            else []
        times = [p["name"] for p in case.operation.definition.raw.get("parameters", [])
                 if p["in"] == "query" and any(
                     s.get("format") == "date-time"
                     for s in [p["schema"], *p["schema"].get("anyOf", [])])]
        if times:
            variants.append(st.fixed_dictionaries({n: EDGE_TIMES for n in times}).map(
                lambda edges: self._derived(case, query={**(case.query or {}), **edges})))
        return st.one_of(st.just(case), *variants)

    def _spec(self, case: schemathesis.Case) -> st.SearchStrategy[schemathesis.Case]:
        def hostile(text: str) -> schemathesis.Case:
            derived = self._derived(case)
            derived.body = ({**(case.body or {}), "spec": text}
                            if case.media_type == "multipart/form-data" else text.encode())
            return derived

        return hostile_documents().map(hostile)

    def _derived(self, case: schemathesis.Case, **changes: Any) -> schemathesis.Case:
        derived = case.derive(keep_auth=True, **changes)
        self.ids.add(derived.id)
        return derived


def api_schema(app: FastAPI, who: str) -> tuple[Any, Hostile]:
    """The app's document, every case carrying ``who``'s token, some made hostile."""
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)

    @schema.auth()
    class Token:
        """The token, given the way schemathesis can take it off again (its auth checks
        then expect a 401 without it)."""

        def get(self, case: schemathesis.Case, ctx: object) -> str:
            return TOKENS[who]

        def set(self, case: schemathesis.Case, data: str, ctx: object) -> None:
            case.headers = {**(case.headers or {}), "Authorization": f"Bearer {data}"}

    hostile = Hostile()

    @schema.hook
    def flatmap_case(ctx: object, case: schemathesis.Case) -> st.SearchStrategy[Any]:
        return hostile.variants(case)

    return schema, hostile


def checks(case: schemathesis.Case, hostile: Hostile) -> dict[str, Any]:
    """Every check, and ``no_secret_in_body``. Valid-looking data that is still rightly
    refused with a 4xx leaves positive_data_acceptance out: a spec that satisfies the
    schema but not its provider's own rules (model names, hyperparameter ranges) or names
    a dataset never uploaded, a well-formed cursor this server never gave out, and a
    hostile case."""
    refusable = (case.operation.label == SUBMIT or "cursor" in (case.query or {})
                 or case.id in hostile.ids)
    return {"excluded_checks": [positive_data_acceptance] if refusable else [],
            "additional_checks": [no_secret_in_body]}


def no_secret_in_body(ctx: object, response: object, case: object) -> None:
    """No response ever carries a token or a provider key."""
    text = getattr(response, "text", "")
    for secret in (*TOKENS.values(), "sk-test"):
        assert secret not in text, f"a response carried a secret: {secret[:6]}…"


@pytest.mark.parametrize("who", ["ops", "alpha"], ids=["admin token", "project token"])
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_every_operation_honours_the_openapi_document(app: FastAPI, who: str,
                                                      mode: GenerationMode) -> None:
    schema, hostile = api_schema(app, who)
    operations = [result.ok() for result in schema.get_all_operations()]
    # Every route: jobs (6), datasets, healthz, readyz, metrics, provider webhooks.
    assert len(operations) == 11

    failures = []
    for operation in operations:
        raw = operation.definition.raw
        if mode is GenerationMode.NEGATIVE and not (raw.get("parameters")
                                                    or raw.get("requestBody")):
            continue  # nothing to get wrong: /healthz, /readyz, /metrics take no input
        try:
            fuzz(operation, mode, EXAMPLES.get(operation.label, DEFAULT_EXAMPLES), hostile)
        except Exception as exc:  # report every operation that fails, not only the first
            failures.append(f"{operation.label}: {exc}")
    assert not failures, "\n\n".join(failures)


def fuzz(operation: Any, mode: GenerationMode, examples: int, hostile: Hostile) -> None:
    """Run ``operation`` with bounded generated cases and every check."""
    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=examples, **BOUNDED)
    def check(case: schemathesis.Case) -> None:
        case.call_and_validate(**checks(case, hostile))

    check()


@pytest.mark.parametrize("who", ["ops", "alpha"], ids=["admin token", "project token"])
def test_sequences_of_calls_honour_the_openapi_document(app: FastAPI, who: str) -> None:
    schema, hostile = api_schema(app, who)
    machine = schema.as_state_machine()

    answered: set[tuple[str, int]] = set()

    class Calls(machine):  # type: ignore[misc,valid-type]
        def validate_response(self, response: Any, case: schemathesis.Case,
                              additional_checks: Any = None, **kwargs: Any) -> None:
            answered.add((case.operation.label, response.status_code))
            case.validate_response(response, **checks(case, hostile))

    Calls.run(settings=settings(max_examples=20, stateful_step_count=6, **BOUNDED))
    # The links were followed: a job route answered 200 for the id a list returned (an id
    # schemathesis made up is a 404).
    assert any("{job_id}" in label and status == 200 for label, status in answered)
