"""In-memory state of the OpenAI emulator: the Scenario knobs, files, and jobs driven by a clock.

Nothing here knows HTTP (emulator.py maps it onto routes). Jobs advance lazily: every Store call
first moves each live job along its timeline to "now", so no background thread is needed and an
injected clock makes a whole lifecycle deterministic. Every public Store method holds the lock.
With webhooks on, a job that ends queues its webhook event; emulator_webhooks.py sends them (and
wakes the store when the next job is due to end, so that events are not late).
"""

from __future__ import annotations

import copy
import math
import secrets
import string
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from orchestrator.providers.emulation import (
    FaultScenario,
    FaultStore,
    Latency,
    ServerErrors,
    Throttle,
)

#: Where the fault knobs apply unless a scenario says otherwise: the whole API.
API_ROUTES = r"^/v1/"
ORGANIZATION_ID = "org-emulator"
ORGANIZATION_NAME = "emulator"  # the <org> segment of ft:<model>:<org>:<suffix>:<id>
BATCH_FILE_TTL_S = 30 * 24 * 3600  # "files with purpose=batch expire after 30 days"
VALIDATING_SHARE, QUEUED_SHARE = 0.1, 0.1  # of a job's duration; the rest is training
TERMINAL = frozenset({"succeeded", "failed", "cancelled"})
AUTO_VALUES: dict[str, Any] = {
    "n_epochs": 3,
    "batch_size": 1,
    "learning_rate_multiplier": 1.8,
    "beta": 0.1,
    "compute_multiplier": 1.0,
    "eval_interval": 1,
    "eval_samples": 1,
}
METHOD_DEFAULTS: dict[str, dict[str, Any]] = {
    "supervised": {"batch_size": "auto", "learning_rate_multiplier": "auto", "n_epochs": "auto"},
    "dpo": {"batch_size": "auto", "learning_rate_multiplier": "auto", "n_epochs": "auto",
            "beta": "auto"},
    "reinforcement": {"batch_size": "auto", "learning_rate_multiplier": "auto", "n_epochs": "auto",
                      "reasoning_effort": "default", "compute_multiplier": "auto",
                      "eval_interval": "auto", "eval_samples": "auto"},
}
JOB_HYPERPARAMETERS = ("batch_size", "learning_rate_multiplier", "n_epochs")
MAX_METADATA_PAIRS, MAX_METADATA_KEY, MAX_METADATA_VALUE = 16, 64, 512
_ALNUM = string.ascii_letters + string.digits


def new_id(prefix: str, length: int = 24) -> str:
    """An OpenAI-looking id: `prefix` followed by `length` random letters and digits."""
    return prefix + "".join(secrets.choice(_ALNUM) for _ in range(length))


class ApiError(Exception):
    """A failure the API reports as {"error": {message, type, param, code}} with HTTP `status`."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        type: str = "invalid_request_error",
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = (
            status, message, param, code, type,
        )

    def body(self) -> dict[str, Any]:
        """The ErrorResponse body."""
        return {"error": {"message": self.message, "type": self.type,
                          "param": self.param, "code": self.code}}


# --- Scenario --------------------------------------------------------------------------------


class JobFailure(BaseModel):
    """The `error` a failed job reports."""

    model_config = ConfigDict(extra="forbid")

    code: str
    message: str
    param: str | None = None


class WebhookTarget(BaseModel):
    """Where the emulator sends OpenAI's fine-tuning webhooks, signed with ``secret`` (a
    ``whsec_`` secret, as OpenAI's dashboard shows it)."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(pattern=r"^https?://\S+$", max_length=2000)
    secret: str = Field(pattern=r"^whsec_[A-Za-z0-9+/=]{16,}$")
    #: Tries per event (OpenAI retries for up to 72 hours; the emulator 1 s, 2 s, 4 s … apart).
    attempts: int = Field(5, ge=1, le=20)


class Scenario(FaultScenario):
    """How the emulator behaves; the defaults are a well-behaved server."""

    job_duration_s: float = Field(3.0, ge=0)  # 0: succeeded on the first read after creation
    fail_jobs: JobFailure | None = None  # every new job ends failed with this error
    #: Send fine_tuning.job.succeeded|failed|cancelled webhooks when jobs end.
    webhooks: WebhookTarget | None = None
    throttle: Throttle = Field(default_factory=lambda: Throttle(routes=API_ROUTES))
    server_errors: ServerErrors = Field(default_factory=lambda: ServerErrors(routes=API_ROUTES))
    latency: Latency = Field(default_factory=lambda: Latency(routes=API_ROUTES))


# --- Objects ---------------------------------------------------------------------------------


@dataclass
class StoredFile:
    """An uploaded (or generated) file and its bytes."""

    id: str
    seq: int
    filename: str
    purpose: str
    content: bytes
    created_at: int
    expires_at: int | None

    def to_api(self) -> dict[str, Any]:
        """The OpenAIFile object."""
        return {"id": self.id, "object": "file", "bytes": len(self.content),
                "created_at": self.created_at, "expires_at": self.expires_at,
                "filename": self.filename, "purpose": self.purpose,
                "status": "processed", "status_details": None}


@dataclass(frozen=True)
class WebhookEvent:
    """A fine-tuning webhook event to send: a job ended."""

    id: str
    type: str
    job_id: str
    #: When the job ended, in clock seconds (the body's created_at is its whole seconds).
    ended_at: float

    def to_api(self) -> dict[str, Any]:
        """The event body (WebhookFineTuningJobSucceeded and its siblings in the spec)."""
        return {"id": self.id, "object": "event", "created_at": int(self.ended_at),
                "type": self.type, "data": {"id": self.job_id}}


@dataclass
class Milestone:
    """A point on a job's timeline, in seconds of active (unpaused) time since creation."""

    at: float
    kind: Literal["queued", "running", "epoch", "finish"]
    epoch: int = 0


@dataclass
class Job:
    """A fine-tuning job: the request as echoed, where it is on its timeline, what it produced."""

    id: str
    seq: int
    created_at: float
    request: dict[str, Any]
    method: dict[str, Any]
    hyperparameters: dict[str, Any]
    seed: int
    duration: float
    failure: JobFailure | None
    model_name: str
    training_bytes: int
    training_lines: int
    timeline: list[Milestone]
    phase: str = "validating_files"
    outcome: str | None = None  # a terminal status once reached
    base_elapsed: float = 0.0  # active seconds accumulated before the current run segment
    run_from: float | None = None  # clock time the current run segment starts; None while paused
    reached: int = 0  # milestones already applied
    finished_at: int | None = None
    ended_at: float | None = None  # finished_at to the clock's precision
    error: dict[str, Any] | None = None
    result_files: list[str] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    checkpoints: list[dict[str, Any]] = field(default_factory=list)

    def elapsed(self, now: float) -> float:
        """Active seconds so far (the clock stops while paused or re-queued)."""
        if self.run_from is None:
            return self.base_elapsed
        return self.base_elapsed + max(0.0, now - self.run_from)

    def status(self, now: float) -> str:
        """The status the API reports at `now`."""
        if self.outcome is not None:
            return self.outcome
        if self.run_from is None:
            return "paused"
        return "queued" if now < self.run_from else self.phase

    def ends_at(self) -> float | None:
        """The clock time the job will end at, while it runs (None when ended or paused)."""
        if self.outcome is not None or self.run_from is None:
            return None
        return self.run_from + self.duration - self.base_elapsed

    @property
    def n_epochs(self) -> int:
        """Epochs the timeline trains for ("auto" resolved)."""
        return int(_resolved(self.hyperparameters["n_epochs"], "n_epochs"))

    @property
    def steps_per_epoch(self) -> int:
        """Optimizer steps per epoch, from the training file's line count and the batch size."""
        batch = int(_resolved(self.hyperparameters["batch_size"], "batch_size"))
        return max(1, math.ceil(self.training_lines / batch))

    def to_api(self, now: float) -> dict[str, Any]:
        """The FineTuningJob object at `now`."""
        status = self.status(now)
        running = status == "running"
        return {
            "object": "fine_tuning.job",
            "id": self.id,
            "model": self.request["model"],
            "created_at": int(self.created_at),
            "error": self.error,
            "fine_tuned_model": self.model_name if status == "succeeded" else None,
            "finished_at": self.finished_at,
            "hyperparameters": dict(self.hyperparameters),
            "organization_id": ORGANIZATION_ID,
            "result_files": self.result_files,
            "status": status,
            "trained_tokens": self.trained_tokens if status == "succeeded" else None,
            "training_file": self.request["training_file"],
            "validation_file": self.request.get("validation_file"),
            "integrations": self.request.get("integrations"),
            "seed": self.seed,
            "estimated_finish": (
                math.ceil(now + self.duration - self.elapsed(now)) if running else None
            ),
            "method": copy.deepcopy(self.method),
            "metadata": self.request.get("metadata"),
        }

    @property
    def trained_tokens(self) -> int:
        """Billable tokens: about four bytes of training data per token, once per epoch."""
        return max(1, self.training_bytes // 4) * self.n_epochs


def _resolved(value: Any, name: str) -> Any:
    return AUTO_VALUES[name] if value == "auto" else value


def _resolve_all(hyperparameters: dict[str, Any]) -> dict[str, Any]:
    return {key: _resolved(value, key) if key in AUTO_VALUES else value
            for key, value in hyperparameters.items()}


def _timeline(duration: float, n_epochs: int, fails: bool) -> list[Milestone]:
    """Validating 10 %, queued 10 %, then training with one checkpoint per epoch (80 %).

    A failing job stops before its last epoch's checkpoint.
    """
    start = duration * (VALIDATING_SHARE + QUEUED_SHARE)
    epochs = range(1, n_epochs if fails else n_epochs + 1)
    return [
        Milestone(duration * VALIDATING_SHARE, "queued"),
        Milestone(start, "running"),
        # min(): float rounding must not put the last epoch after the finish
        *(Milestone(min(duration, start + (duration - start) * k / n_epochs), "epoch", k)
          for k in epochs),
        Milestone(duration, "finish"),
    ]


def _epoch_metrics(epoch: int, n_epochs: int, step: int, validated: bool) -> dict[str, float]:
    """Deterministic, plausibly improving metrics for the end of `epoch`."""
    progress = epoch / n_epochs
    metrics = {"step": float(step), "train_loss": round(1.6 - 1.2 * progress, 4),
               "train_mean_token_accuracy": round(0.55 + 0.4 * progress, 4)}
    if validated:
        metrics |= {"valid_loss": round(1.7 - 1.1 * progress, 4),
                    "valid_mean_token_accuracy": round(0.5 + 0.4 * progress, 4),
                    "full_valid_loss": round(1.7 - 1.1 * progress, 4),
                    "full_valid_mean_token_accuracy": round(0.5 + 0.4 * progress, 4)}
    return metrics


# --- Store -----------------------------------------------------------------------------------

_T = TypeVar("_T")


def page(items: list[_T], key: Callable[[_T], str], after: str | None, limit: int,
         seq_of: dict[str, int], newest_first: bool = True) -> tuple[list[_T], bool]:
    """One cursor page of `items` (already in list order): those after id `after`, and has_more.

    `seq_of` remembers every id ever issued, so a cursor stays valid after its object is deleted.
    """
    if after is not None:
        if after not in seq_of:
            raise ApiError(400, f"Invalid 'after': no object with id {after!r}", param="after")
        cursor = seq_of[after]
        items = [item for item in items
                 if (seq_of[key(item)] < cursor if newest_first else seq_of[key(item)] > cursor)]
    return items[:limit], len(items) > limit


class Store(FaultStore[Scenario]):
    """Files, jobs, request counters and the Scenario, behind one lock."""

    #: Called (under the lock) when webhooks may have become due: a job was created or
    #: ended, or the scenario changed; the webhook sender sets it.
    on_change: Callable[[], None] | None = None

    def _reset(self) -> None:
        super()._reset()
        self._files: dict[str, StoredFile] = {}
        self._jobs: dict[str, Job] = {}
        self._seq_of: dict[str, int] = {}
        self._webhooks: list[WebhookEvent] = []
        self._webhook_counts: Counter[str] = Counter()

    def _changed(self) -> None:
        if self.on_change is not None and self._scenario.webhooks is not None:
            self.on_change()

    def replace_scenario(self, scenario: Scenario) -> None:
        """Swap the whole scenario."""
        super().replace_scenario(scenario)
        with self._lock:
            self._changed()

    def take_webhooks(self) -> tuple[WebhookTarget | None, list[WebhookEvent], float | None]:
        """The webhook target, the events to send now (taken), and the clock time the next
        running job ends at (when the sender should look again)."""
        with self._lock:
            self._now()
            events, self._webhooks = self._webhooks, []
            ends = [t for j in self._jobs.values() if (t := j.ends_at()) is not None]
            return self._scenario.webhooks, events, min(ends, default=None)

    def count_webhook(self, outcome: str) -> None:
        """Count one delivery attempt of a webhook ("delivered" or "failed")."""
        with self._lock:
            self._webhook_counts[outcome] += 1

    def ended_jobs(self) -> list[dict[str, Any]]:
        """Every job with its status and, once it ended, when (clock seconds, unrounded)."""
        with self._lock:
            now = self._now()
            return [{"id": j.id, "status": j.status(now), "created_at": j.created_at,
                     "ended_at": j.ended_at} for j in self._jobs.values()]

    def _ended(self, job: Job, at: float) -> None:
        """Record when a job ended and queue its webhook, if webhooks are on."""
        job.ended_at = at
        if self._scenario.webhooks is not None:
            event_id, _ = self._issue("evt_")
            self._webhooks.append(WebhookEvent(event_id, f"fine_tuning.job.{job.outcome}",
                                               job.id, at))
            self._changed()

    def _issue(self, prefix: str, length: int = 24) -> tuple[str, int]:
        object_id = new_id(prefix, length)
        self._seq_of[object_id] = len(self._seq_of)
        return object_id, self._seq_of[object_id]

    def stats(self) -> dict[str, Any]:
        """Live objects, jobs by status, requests per route and faults injected."""
        with self._lock:
            now = self._now()
            return {"files": len(self._live_files(now)), "jobs": len(self._jobs),
                    "jobs_by_status": dict(Counter(j.status(now) for j in self._jobs.values())),
                    "webhooks": {"queued": len(self._webhooks),
                                 "delivered": self._webhook_counts["delivered"],
                                 "failed": self._webhook_counts["failed"]},
                    **self.fault_stats()}

    def _now(self) -> float:
        """The clock's time, with every job advanced to it."""
        now = self._clock()
        for job in self._jobs.values():
            self._advance(job, now)
        return now

    # Files

    def _live_files(self, now: float) -> list[StoredFile]:
        return [f for f in self._files.values() if f.expires_at is None or f.expires_at > now]

    def _file(self, file_id: str, now: float) -> StoredFile:
        stored = self._files.get(file_id)
        if stored is None or (stored.expires_at is not None and stored.expires_at <= now):
            raise ApiError(404, f"No such File object: {file_id}", param="id")
        return stored

    def _add_file(self, filename: str, purpose: str, content: bytes, created_at: int,
                  expires_after_s: int | None) -> StoredFile:
        file_id, seq = self._issue("file-")
        if expires_after_s is None and purpose == "batch":
            expires_after_s = BATCH_FILE_TTL_S
        expires_at = None if expires_after_s is None else created_at + expires_after_s
        stored = StoredFile(file_id, seq, filename, purpose, content, created_at, expires_at)
        self._files[file_id] = stored
        return stored

    def create_file(self, filename: str, purpose: str, content: bytes,
                    expires_after_s: int | None) -> dict[str, Any]:
        """Store an upload (already checked by the caller) and return its OpenAIFile."""
        with self._lock:
            now = self._now()
            return self._add_file(filename, purpose, content, int(now), expires_after_s).to_api()

    def list_files(self, purpose: str | None, limit: int, order: str,
                   after: str | None) -> dict[str, Any]:
        """A ListFilesResponse."""
        with self._lock:
            files = sorted(self._live_files(self._now()), key=lambda f: f.seq,
                           reverse=order == "desc")
            if purpose is not None:
                files = [f for f in files if f.purpose == purpose]
            chosen, more = page(files, lambda f: f.id, after, limit, self._seq_of,
                                newest_first=order == "desc")
            return {"object": "list", "data": [f.to_api() for f in chosen],
                    "first_id": chosen[0].id if chosen else None,
                    "last_id": chosen[-1].id if chosen else None, "has_more": more}

    def get_file(self, file_id: str) -> dict[str, Any]:
        """An OpenAIFile."""
        with self._lock:
            return self._file(file_id, self._now()).to_api()

    def file_content(self, file_id: str) -> bytes:
        """A file's bytes."""
        with self._lock:
            return self._file(file_id, self._now()).content

    def delete_file(self, file_id: str) -> dict[str, Any]:
        """Delete a file; a DeleteFileResponse."""
        with self._lock:
            del self._files[self._file(file_id, self._now()).id]
            return {"id": file_id, "object": "file", "deleted": True}

    # Jobs

    def _job(self, job_id: str) -> Job:
        job = self._jobs.get(job_id)
        if job is None:
            raise ApiError(404, f"No fine-tuning job found with id {job_id}",
                           param="fine_tuning_job_id")
        return job

    def _training_file(self, file_id: str, param: str, now: float) -> StoredFile:
        stored = self._files.get(file_id)
        if stored is None or (stored.expires_at is not None and stored.expires_at <= now):
            raise ApiError(400, f"Invalid {param}: no file with id {file_id}", param=param)
        if stored.purpose != "fine-tune":
            raise ApiError(400, f"Invalid {param}: file {file_id} has purpose "
                                f"'{stored.purpose}', fine-tuning needs 'fine-tune'", param=param)
        return stored

    def create_job(self, request: dict[str, Any]) -> dict[str, Any]:
        """Create a job from a request that already passed the spec's schema.

        Raises:
            ApiError: a field is inconsistent, or a file is missing or not for fine-tuning.
        """
        method = echoed_method(request)
        duration, failure = job_overrides(request.get("metadata"))
        with self._lock:
            now = self._now()
            training = self._training_file(request["training_file"], "training_file", now)
            if request.get("validation_file") is not None:
                self._training_file(request["validation_file"], "validation_file", now)
            job_id, seq = self._issue("ftjob-")
            section = method[method["type"]]
            seed = request.get("seed")
            failure = failure or self._scenario.fail_jobs
            duration = self._scenario.job_duration_s if duration is None else duration
            job = Job(
                id=job_id, seq=seq, created_at=now, request=copy.deepcopy(request), method=method,
                hyperparameters={k: section["hyperparameters"][k] for k in JOB_HYPERPARAMETERS},
                seed=secrets.randbelow(2**31) if seed is None else seed,
                duration=duration, failure=failure,
                model_name=(f"ft:{request['model']}:{ORGANIZATION_NAME}:"
                            f"{request.get('suffix') or ''}:{new_id('', 8)}"),
                training_bytes=len(training.content),
                training_lines=sum(1 for line in training.content.splitlines() if line.strip()),
                timeline=[], run_from=now,
            )
            job.timeline = _timeline(duration, job.n_epochs, failure is not None)
            self._jobs[job_id] = job
            files = request["training_file"]
            if request.get("validation_file"):
                files += f" and validation file: {request['validation_file']}"
            self._event(job, now, f"Created fine-tuning job: {job_id}")
            self._event(job, now, f"Validating training file: {files}")
            self._changed()
            return job.to_api(now)

    def list_jobs(self, after: str | None, limit: int,
                  metadata: dict[str, str] | None, no_metadata: bool) -> dict[str, Any]:
        """A ListPaginatedFineTuningJobsResponse, newest first, filtered by metadata."""
        with self._lock:
            now = self._now()
            jobs = sorted(self._jobs.values(), key=lambda j: j.seq, reverse=True)
            if no_metadata:
                jobs = [j for j in jobs if not j.request.get("metadata")]
            if metadata:
                jobs = [j for j in jobs
                        if all((j.request.get("metadata") or {}).get(k) == v
                               for k, v in metadata.items())]
            chosen, more = page(jobs, lambda j: j.id, after, limit, self._seq_of)
            return {"object": "list", "data": [j.to_api(now) for j in chosen], "has_more": more}

    def get_job(self, job_id: str) -> dict[str, Any]:
        """A FineTuningJob."""
        with self._lock:
            now = self._now()
            return self._job(job_id).to_api(now)

    def cancel_job(self, job_id: str) -> dict[str, Any]:
        """Cancel a job that has not finished."""
        with self._lock:
            now = self._now()
            job = self._job(job_id)
            if job.outcome is not None:
                raise ApiError(400, f"Job {job_id} has already {job.outcome}; it cannot be "
                                    "cancelled", param="fine_tuning_job_id")
            job.base_elapsed, job.run_from = job.elapsed(now), None
            job.outcome, job.finished_at = "cancelled", int(now)
            self._event(job, now, "Fine-tuning job cancelled")
            self._ended(job, now)
            return job.to_api(now)

    def pause_job(self, job_id: str) -> dict[str, Any]:
        """Pause a job that is neither finished nor paused: its clock stops."""
        with self._lock:
            now = self._now()
            job = self._job(job_id)
            status = job.status(now)
            if status in TERMINAL or status == "paused":
                raise ApiError(400, f"Job {job_id} is {status}; only a job in progress can be "
                                    "paused", param="fine_tuning_job_id")
            job.base_elapsed, job.run_from = job.elapsed(now), None
            self._event(job, now, "Fine-tuning job paused")
            return job.to_api(now)

    def resume_job(self, job_id: str) -> dict[str, Any]:
        """Resume a paused job: it is queued again for a while, then carries on where it stopped."""
        with self._lock:
            now = self._now()
            job = self._job(job_id)
            if job.status(now) != "paused":
                raise ApiError(400, f"Job {job_id} is {job.status(now)}; only a paused job can be "
                                    "resumed", param="fine_tuning_job_id")
            job.run_from = now + job.duration * QUEUED_SHARE
            self._event(job, now, "Fine-tuning job resumed")
            self._changed()
            return job.to_api(now)

    def list_events(self, job_id: str, after: str | None, limit: int) -> dict[str, Any]:
        """A ListFineTuningJobEventsResponse, newest first."""
        with self._lock:
            self._now()
            events = self._job(job_id).events[::-1]
            chosen, more = page(events, lambda e: e["id"], after, limit, self._seq_of)
            return {"object": "list", "data": chosen, "has_more": more}

    def list_checkpoints(self, job_id: str, after: str | None, limit: int) -> dict[str, Any]:
        """A ListFineTuningJobCheckpointsResponse, newest first."""
        with self._lock:
            self._now()
            checkpoints = self._job(job_id).checkpoints[::-1]
            chosen, more = page(checkpoints, lambda c: c["id"], after, limit, self._seq_of)
            return {"object": "list", "data": chosen,
                    "first_id": chosen[0]["id"] if chosen else None,
                    "last_id": chosen[-1]["id"] if chosen else None, "has_more": more}

    # Lifecycle

    def _event(self, job: Job, at: float, message: str, *, level: str = "info",
               data: dict[str, Any] | None = None) -> None:
        event_id, _ = self._issue("ftevent-")
        job.events.append({"object": "fine_tuning.job.event", "id": event_id,
                           "created_at": int(at), "level": level, "message": message,
                           "type": "metrics" if data else "message", "data": data or {}})

    def _advance(self, job: Job, now: float) -> None:
        """Apply every milestone the job's active time has passed, stamped when it was passed."""
        if job.outcome is not None or job.run_from is None or now < job.run_from:
            return
        elapsed = job.elapsed(now)
        while job.reached < len(job.timeline) and job.timeline[job.reached].at <= elapsed:
            milestone = job.timeline[job.reached]
            job.reached += 1
            self._reach(job, milestone, job.run_from + milestone.at - job.base_elapsed)

    def _reach(self, job: Job, milestone: Milestone, at: float) -> None:
        if milestone.kind == "queued":
            job.phase = "queued"
            self._event(job, at, "Files validated, moving job to queued state")
        elif milestone.kind == "running":
            job.phase = "running"
            job.hyperparameters = _resolve_all(job.hyperparameters)
            section = job.method[job.method["type"]]
            section["hyperparameters"] = _resolve_all(section["hyperparameters"])
            self._event(job, at, "Fine-tuning job started")
        elif milestone.kind == "epoch":
            self._checkpoint(job, milestone.epoch, at)
        elif job.failure is not None:
            job.outcome, job.finished_at = "failed", int(at)
            job.error = job.failure.model_dump()
            self._event(job, at, f"Fine-tuning job failed: {job.failure.message}", level="error")
            self._ended(job, at)
        else:
            self._succeed(job, at)
            self._ended(job, at)

    def _checkpoint(self, job: Job, epoch: int, at: float) -> None:
        step, total = epoch * job.steps_per_epoch, job.n_epochs * job.steps_per_epoch
        metrics = _epoch_metrics(epoch, job.n_epochs, step,
                                 job.request.get("validation_file") is not None)
        data = {**metrics, "step": step, "total_steps": total}
        self._event(job, at, f"Step {step}/{total}: training loss={metrics['train_loss']:.4f}",
                    data=data)
        checkpoint_id, _ = self._issue("ftckpt_")
        job.checkpoints.append({
            "object": "fine_tuning.job.checkpoint", "id": checkpoint_id, "created_at": int(at),
            "fine_tuned_model_checkpoint": f"{job.model_name}:ckpt-step-{step}",
            "fine_tuning_job_id": job.id, "step_number": step, "metrics": metrics,
        })

    def _succeed(self, job: Job, at: float) -> None:
        rows = [",".join(str(c["metrics"].get(k, "")) for k in _RESULT_COLUMNS)
                for c in job.checkpoints]
        content = "\n".join([",".join(_RESULT_COLUMNS), *rows]).encode() + b"\n"
        results = self._add_file("step_metrics.csv", "fine-tune-results", content, int(at), None)
        job.result_files = [results.id]
        job.outcome, job.finished_at = "succeeded", int(at)
        self._event(job, at, f"New fine-tuned model created: {job.model_name}")
        self._event(job, at, "The job has successfully completed")


_RESULT_COLUMNS = ("step", "train_loss", "train_mean_token_accuracy", "valid_loss",
                   "valid_mean_token_accuracy")


def echoed_method(request: dict[str, Any]) -> dict[str, Any]:
    """The `method` a job echoes: the requested one (legacy `hyperparameters` become supervised),
    with every hyperparameter not given set to "auto".

    Raises:
        ApiError: `method` contradicts itself or is combined with `hyperparameters`.
    """
    method, legacy = request.get("method"), request.get("hyperparameters")
    if method is not None and legacy is not None:
        raise ApiError(400, "'hyperparameters' is deprecated and cannot be combined with 'method'; "
                            "pass them in method.<type>.hyperparameters", param="hyperparameters")
    if method is None:
        method = {"type": "supervised", "supervised": {"hyperparameters": legacy or {}}}
    kind = method["type"]
    for other in METHOD_DEFAULTS:
        if other != kind and other in method:
            raise ApiError(400, f"method.{other} is set but method.type is '{kind}'",
                           param=f"method.{other}")
    section = dict(method.get(kind) or {})
    if kind == "reinforcement" and "grader" not in section:
        raise ApiError(400, "Missing required parameter: 'method.reinforcement.grader'.",
                       param="method.reinforcement.grader")
    section["hyperparameters"] = {**METHOD_DEFAULTS[kind], **(section.get("hyperparameters") or {})}
    return {"type": kind, kind: section}


def job_overrides(metadata: dict[str, str] | None) -> tuple[float | None, JobFailure | None]:
    """Check metadata against the API's limits; return the per-job duration and failure it asks for.

    `emulator_duration_s` (seconds, as a string) and `emulator_fail` (an error code) override the
    scenario for this one job.

    Raises:
        ApiError: over 16 pairs, a key over 64 or a value over 512 characters, a bad override.
    """
    metadata = metadata or {}
    if len(metadata) > MAX_METADATA_PAIRS:
        raise ApiError(400, f"metadata can hold at most {MAX_METADATA_PAIRS} pairs, "
                            f"got {len(metadata)}", param="metadata")
    for key, value in metadata.items():
        if len(key) > MAX_METADATA_KEY:
            raise ApiError(400, f"metadata key {key[:20]!r}... is longer than "
                                f"{MAX_METADATA_KEY} characters", param="metadata")
        if len(value) > MAX_METADATA_VALUE:
            raise ApiError(400, f"metadata[{key!r}] is longer than {MAX_METADATA_VALUE} "
                                "characters", param="metadata")
    duration = None
    if "emulator_duration_s" in metadata:
        try:
            duration = float(metadata["emulator_duration_s"])
        except ValueError:
            duration = -1.0
        if not 0 <= duration < math.inf:
            raise ApiError(400, "metadata['emulator_duration_s'] must be a number of seconds >= 0",
                           param="metadata")
    code = metadata.get("emulator_fail")
    failure = JobFailure(code=code, message=f"Emulated failure: {code}") if code else None
    return duration, failure
