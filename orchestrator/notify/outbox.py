"""The outbox: the webhook events a job transition causes, written by db/transition.py in the
transition's own transaction, so a committed change always notifies and a rolled-back one
never does.

A target (a job spec's ``notify`` entry, or one of ``TUNECTL_WEBHOOKS``) names the events it
wants: ``succeeded``, ``failed``, ``cancelled``, ``deployed``, ``undeployed``, or ``all`` for
every transition. A transition makes at most one event per endpoint (one row in
``webhook_deliveries``, whose id is the event's ``webhook-id``): when a deploying job's
deployment serves, the job is both deployed and succeeded, and an endpoint that asked for
both gets one ``job.deployed`` event. A job succeeds once: a ``tunectl deploy`` of a job
that had succeeded already ends in ``job.deployed`` (or ``job.undeployed``, if it was
undeployed before it served), never in a second ``job.succeeded``. Endpoints are told apart
by their URL in one spelling (``endpoint_url``). The payload
(docs/webhook-payload.schema.json) is rendered here once, and those exact bytes are signed
and sent on every attempt.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import httpx
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from orchestrator.config import DEFAULT_WEBHOOK_SECRET, Settings, get_settings
from orchestrator.db.models import DELIVERIES, ENDPOINTS, HISTORY, JOBS
from orchestrator.db.types import new_id
from orchestrator.documents import iso
from orchestrator.errors import DestinationRefused, MissingCredential, SpecError
from orchestrator.notify import schedule, ssrf
from orchestrator.specs import NotifyTarget
from orchestrator.states import State

#: A delivery sent right after its transaction commits: (delivery id, lease token).
Wake = tuple[str, str]


@dataclass(frozen=True)
class Change:
    """One committed-to-be transition of one job, as the outbox sees it."""

    job_id: str
    seq: int
    source: State | None
    target: State
    reason: str
    data: dict[str, Any]
    fields: dict[str, Any]
    at: datetime


def event_kinds(change: Change, *, succeeded_before: bool = False) -> tuple[str, ...]:
    """The named events a transition is, most specific first (none for most moves).
    ``succeeded_before``: the job had succeeded before ``tunectl deploy`` re-opened it, so
    its deploy ending is no news of success."""
    source, target = change.source, change.target
    undeployed = change.data.get("event") == "undeployed"
    if target is State.SUCCEEDED and source is not State.SUCCEEDED:
        succeeded = () if succeeded_before else ("succeeded",)
        if source is State.DEPLOYING and change.fields.get("deployed_model"):
            return ("deployed", *succeeded)
        return (*succeeded, "undeployed") if undeployed else succeeded
    if undeployed:
        return ("undeployed",)
    if target is State.FAILED and source is not State.FAILED:
        return ("failed",)
    if target is State.CANCELLED:
        return ("cancelled",)
    return ()


def event_type(events: Sequence[str], kinds: Sequence[str], target: State) -> str | None:
    """The event type a target that wants ``events`` gets for a transition, if any."""
    if "all" in events:
        return f"job.{kinds[0] if kinds else target.value}"
    for kind in kinds:
        if kind in events:
            return f"job.{kind}"
    return None


def check_targets(targets: Sequence[NotifyTarget], settings: Settings, source: str,
                  project: str) -> None:
    """Refuse, when a job is submitted to ``project``, a target that could never be
    delivered: a URL the SSRF guard refuses without looking up its host, or a signing
    secret that is not set for the project.

    Raises:
        SpecError: naming the target's field.
    """
    for i, target in enumerate(targets):
        try:
            ssrf.check_literal(target.url, settings.webhook_allow_networks)
        except DestinationRefused as exc:
            raise SpecError(source, f"notify.{i}.url", str(exc)) from None
        try:
            settings.webhook_secrets(target.secret or DEFAULT_WEBHOOK_SECRET, project=project)
        except MissingCredential as exc:
            raise SpecError(source, f"notify.{i}.secret", str(exc)) from None


def endpoint_url(url: str) -> str:
    """``url`` in the one spelling an endpoint is known by: scheme and host in lower case
    (the host in its ASCII form), no default port; path and query as given."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError, ValueError):
        return url  # refused when it is sent
    scheme = parsed.scheme.lower()
    default = {"http": 80, "https": 443}.get(scheme)
    return str(parsed.copy_with(scheme=scheme, host=parsed.raw_host.decode("ascii").lower(),
                                port=None if parsed.port == default else parsed.port))


def endpoint_id(url: str) -> str:
    """The endpoint's id: derived from its URL (``endpoint_url``'s spelling of it), so the
    outbox never has to look it up."""
    return "we_" + hashlib.sha256(endpoint_url(url).encode()).hexdigest()[:32]


def write(conn: sa.Connection, change: Change, notify: list[dict[str, Any]] | None,
          wake: list[Wake] | None = None) -> None:
    """Write the events ``change`` causes for the job's ``notify`` targets and the configured
    ones, due after the retry schedule's first delay (at once, by default). With ``wake``,
    ones due at once are written already leased and listed there, for the caller to send
    right after it commits (a lost message costs one lease)."""
    settings = get_settings()
    kinds = event_kinds(change, succeeded_before=change.source is State.DEPLOYING
                        and change.target is State.SUCCEEDED
                        and _succeeded_before(conn, change.job_id))
    chosen: dict[str, tuple[str, str, str, str]] = {}
    # A spec naming one of the operator's endpoints changes neither how its events are
    # signed nor which it gets.
    targets: list[tuple[str, str, str | None, Sequence[str]]] = [
        ("config", t.url, t.secret, t.events) for t in settings.webhooks]
    operators = {endpoint_id(t.url) for t in settings.webhooks}
    targets += [("spec", t["url"], t.get("secret"), t.get("events") or ()) for t in notify or ()
                if endpoint_id(t["url"]) not in operators]
    for source, url, secret, events in targets:
        kind = event_type(events, kinds, change.target)
        if kind is not None:  # the first target naming an endpoint wins
            chosen.setdefault(endpoint_id(url), (endpoint_url(url),
                                                 secret or DEFAULT_WEBHOOK_SECRET, source, kind))
    if not chosen:
        return
    job = conn.execute(sa.select(JOBS).where(JOBS.c.id == change.job_id)).one()
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    conn.execute(dialect.insert(ENDPOINTS).values(
        [{"id": eid, "url": url, "state": "enabled", "created_at": change.at}
         for eid, (url, *_) in chosen.items()]).on_conflict_do_nothing())
    due = change.at + timedelta(seconds=schedule.delay_s(settings, 0))
    lease = new_id("lease") if wake is not None and due <= change.at else None
    # Leased as a job step is, until a worker takes it up (deliver.run).
    until = change.at + timedelta(seconds=settings.lease_s) if lease else None
    rows = []
    for eid, (_, secret, source, kind) in chosen.items():
        delivery_id = new_id("msg")
        rows.append({"id": delivery_id, "job_id": change.job_id, "seq": change.seq,
                     "endpoint_id": eid, "secret_name": secret, "source": source,
                     "event_type": kind, "payload": payload(job, kind, change),
                     "status": "pending", "attempts": 0, "next_attempt_at": due,
                     "lease_owner": lease, "lease_expires_at": until,
                     "created_at": change.at, "updated_at": change.at})
        if wake is not None and lease is not None:
            wake.append((delivery_id, lease))
    conn.execute(sa.insert(DELIVERIES), rows)


def _succeeded_before(conn: sa.Connection, job_id: str) -> bool:
    """Whether the job's current deploy re-opened it from ``succeeded`` (``tunectl deploy``
    of a job that had succeeded), read from the move into ``deploying``."""
    reopened_from = conn.execute(
        sa.select(HISTORY.c.from_state)
        .where(HISTORY.c.job_id == job_id, HISTORY.c.to_state == State.DEPLOYING.value,
               HISTORY.c.from_state != State.DEPLOYING.value)
        .order_by(HISTORY.c.seq.desc()).limit(1)).scalar_one_or_none()
    return bool(reopened_from == State.SUCCEEDED.value)


def payload(job: sa.Row[Any], kind: str, change: Change) -> str:
    """The event's JSON body (docs/webhook-payload.schema.json), compact, as it is signed."""
    dataset: dict[str, Any] = job.dataset or {}
    duration = ((job.finished_at - job.created_at).total_seconds()
                if job.finished_at is not None else None)
    body = {
        "type": kind,
        "timestamp": change.at.isoformat(),
        "data": {
            "job": {
                "id": job.id, "project": job.project, "name": job.name,
                "provider": job.provider,
                "base_model": job.base_model, "method": job.method, "state": job.state,
                "provider_status": job.provider_status,
                "provider_job_id": job.provider_job_id,
                "fine_tuned_model": job.fine_tuned_model,
                "deployed_model": job.deployed_model,
                "model_ref": (job.result or {}).get("model_ref"),
                "error": job.error, "failure_kind": job.failure_kind,
                "labels": dict(job.labels or {}),
                "timings": {"created_at": iso(job.created_at),
                            "finished_at": iso(job.finished_at), "duration_s": duration},
                "cost_estimate": {
                    "usd": dataset.get("estimated_cost_usd"),
                    "billed_tokens": (dataset.get("training") or {}).get("billed_tokens"),
                } if dataset else None,
            },
            "transition": {"seq": change.seq,
                           "from": change.source.value if change.source else None,
                           "to": change.target.value, "reason": change.reason,
                           "at": change.at.isoformat(), "data": change.data},
        },
    }
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False, default=str)
