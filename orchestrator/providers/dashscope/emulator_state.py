"""In-memory state of the DashScope emulator: the Scenario, files, fine-tune jobs and
deployments, each driven by a clock.

Nothing here knows HTTP (emulator.py maps it onto routes). Objects advance lazily: a job's
or deployment's status is computed from its creation time and the clock, so an injected
clock makes a whole lifecycle deterministic without a background thread. Every public
Store method holds the lock.

What the real service does and the emulator copies is in docs/providers/dashscope.md, with
what could not be confirmed (QUEUING and CANCELING, the wording of most messages, the
shape of a deployed model's id, a failed deployment's reason) marked there.
"""

from __future__ import annotations

import fnmatch
import hashlib
import secrets
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from orchestrator.providers.emulation import (
    FaultScenario,
    FaultStore,
    Latency,
    ServerErrors,
    Throttle,
)

#: Where the fault knobs apply unless a scenario says otherwise: the whole API.
API_ROUTES = r"^/api/v1/"
WORKSPACE_ID = "llm-emulator"
USER_ID = "1000000000000000"
#: Base models the emulator fine-tunes (DashScope's training-type support matrix lists these
#: families); a fine-tuned model (a job's finetuned_output) can be tuned further too.
FINE_TUNABLE = ("qwen-turbo*", "qwen-plus*", "qwen2-*", "qwen2.5-*", "qwen3-*", "qwen-vl-*",
                "qwen2-vl-*", "qwen2.5-vl-*")
TRAINING_TYPES = ("sft", "efficient_sft", "cpt", "dpo_full", "dpo_lora")
LORA_TYPES = frozenset({"efficient_sft", "dpo_lora"})
DEFAULT_HYPER_PARAMETERS: dict[str, Any] = {
    "n_epochs": 1, "batch_size": 16, "learning_rate": "1.6e-5", "split": 0.8,
    "max_length": 2048, "lr_scheduler_type": "linear", "warmup_ratio": 0.05,
}
LORA_DEFAULTS: dict[str, Any] = {"lora_rank": 8, "lora_alpha": 32, "lora_dropout": 0.1}
INT_HYPER_PARAMETERS = frozenset({"n_epochs", "batch_size", "max_length", "eval_steps",
                                  "logging_steps", "save_total_limit", "eval_epochs",
                                  "max_split_val_dataset_sample", "lora_rank", "lora_alpha"})
MAX_FILE_BYTES = 300 * 1024 * 1024
MAX_TOTAL_BYTES = 5 * 1024 * 1024 * 1024
MAX_FILES = 100
UPLOAD_PURPOSES = ("fine-tune", "file-extract", "batch")
BASE_CAPACITY = 1
#: Shares of a job's duration spent PENDING and QUEUING before it trains.
PENDING_SHARE, QUEUING_SHARE = 0.1, 0.1
#: Share of a job's duration a cancel takes (CANCELING), and of a deployment's its deletion.
CANCEL_SHARE, DELETE_SHARE = 0.1, 0.1
JOB_LIVE = frozenset({"PENDING", "QUEUING", "RUNNING", "CANCELING"})


class ApiError(Exception):
    """A failure reported as {"code", "message", "request_id"} with HTTP `status`."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message

    def body(self, request_id: str) -> dict[str, Any]:
        """The DashScope error body."""
        return {"code": self.code, "message": self.message, "request_id": request_id}


class OpenAIShapedError(Exception):
    """A failure the files endpoint reports in OpenAI's shape {"error": {…}} (seen in a
    captured 400 for a bad ``purpose``)."""

    def __init__(self, status: int, message: str, param: str | None) -> None:
        super().__init__(message)
        self.status, self.message, self.param = status, message, param

    def body(self) -> dict[str, Any]:
        """The OpenAI-style error body."""
        return {"error": {"message": self.message, "type": "invalid_request_error",
                          "param": self.param, "code": None}}


def not_found(what: str) -> ApiError:
    """DashScope's 404."""
    return ApiError(404, "NotFound", f"Not Found! ({what})")


def invalid(message: str) -> ApiError:
    """DashScope's 400 for a bad or missing parameter."""
    return ApiError(400, "InvalidParameter", message)


def unsupported(message: str) -> ApiError:
    """DashScope's 400 for an operation the object's state does not allow."""
    return ApiError(400, "UnsupportedOperation", message)


# --- Scenario ---------------------------------------------------------------------------------


class Failure(BaseModel):
    """How a failed job or deployment explains itself."""

    model_config = ConfigDict(extra="forbid")

    code: str
    message: str


class FailedUploads(BaseModel):
    """The next `count` uploaded files land in ``failed_uploads`` (HTTP 200) with this code."""

    model_config = ConfigDict(extra="forbid")

    count: int = Field(0, ge=0)
    code: str = "BadRequest.TooMany"
    message: str = "Exceeded the maximum number of files allowed."


class Scenario(FaultScenario):
    """How the emulator behaves; the defaults are a well-behaved server."""

    job_duration_s: float = Field(3.0, ge=0)  # 0: SUCCEEDED on the first read after creation
    fail_jobs: Failure | None = None  # every new job ends FAILED with this reason
    deployment_duration_s: float = Field(3.0, ge=0)  # 0: RUNNING on the first read
    fail_deployments: Failure | None = None  # every new deployment ends FAILED
    failed_uploads: FailedUploads = Field(default_factory=FailedUploads)
    #: Put a UTF-8 byte order mark before every JSON body (some gateways do).
    utf8_bom: bool = False
    throttle: Throttle = Field(default_factory=lambda: Throttle(routes=API_ROUTES))
    server_errors: ServerErrors = Field(default_factory=lambda: ServerErrors(routes=API_ROUTES))
    latency: Latency = Field(default_factory=lambda: Latency(routes=API_ROUTES))


# --- Objects ----------------------------------------------------------------------------------


def _stamp(at: float) -> str:
    """DashScope's "2024-10-29 16:53:53"."""
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _iso(at: float) -> str:
    """A deployment's "2025-06-17T11:00:38"."""
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:%M:%S")


@dataclass
class StoredFile:
    """An uploaded file and its bytes."""

    file_id: str
    seq: int
    name: str
    description: str
    purpose: str
    content: bytes
    created_at: float

    def to_api(self) -> dict[str, Any]:
        """The file object of GET /files/{file_id}."""
        return {"id": self.seq, "file_id": self.file_id, "name": self.name,
                "description": self.description, "purpose": self.purpose,
                "size": len(self.content), "md5": hashlib.md5(self.content).hexdigest(),
                "region": "cn-beijing", "url": f"oss://emulator/{self.file_id}",
                "user_id": USER_ID, "api_key_id": "ak-emulator",
                "gmt_create": _stamp(self.created_at)}


@dataclass
class Job:
    """A fine-tune job: the request as echoed and where it is on its timeline."""

    job_id: str
    seq: int
    job_name: str
    model: str
    training_type: str
    training_file_ids: list[str]
    validation_file_ids: list[str]
    hyper_parameters: dict[str, Any]
    output_name: str
    created_at: float
    duration: float
    failure: Failure | None
    training_bytes: int
    cancel_at: float | None = None
    cancel_duration: float = 0.0

    def status(self, now: float) -> str:
        """The status the API reports at `now`."""
        if self.cancel_at is not None:
            return "CANCELED" if now >= self.cancel_at + self.cancel_duration else "CANCELING"
        elapsed = now - self.created_at
        if elapsed >= self.duration:
            return "FAILED" if self.failure else "SUCCEEDED"
        if elapsed < self.duration * PENDING_SHARE:
            return "PENDING"
        if elapsed < self.duration * (PENDING_SHARE + QUEUING_SHARE):
            return "QUEUING"
        return "RUNNING"

    def ended_at(self, now: float) -> float | None:
        """When the job reached a final status, if it has."""
        status = self.status(now)
        if status == "CANCELED":
            assert self.cancel_at is not None
            return self.cancel_at + self.cancel_duration
        if status in ("SUCCEEDED", "FAILED"):
            return self.created_at + self.duration
        return None

    @property
    def n_epochs(self) -> int:
        """Epochs the timeline trains for."""
        return max(1, int(self.hyper_parameters.get("n_epochs", 1)))

    def to_api(self, now: float) -> dict[str, Any]:
        """The fine-tune job object at `now`."""
        status = self.status(now)
        ended = self.ended_at(now)
        data: dict[str, Any] = {
            "job_id": self.job_id, "job_name": self.job_name, "status": status,
            "model": self.model, "base_model": self.model,
            "training_file_ids": list(self.training_file_ids),
            "validation_file_ids": list(self.validation_file_ids),
            "hyper_parameters": dict(self.hyper_parameters),
            "training_type": self.training_type, "create_time": _stamp(self.created_at),
            "workspace_id": WORKSPACE_ID, "user_identity": USER_ID, "modifier": USER_ID,
            "creator": USER_ID, "group": "llm",
        }
        if status == "SUCCEEDED":
            data["finetuned_output"] = self.output_name
            data["usage"] = max(1, self.training_bytes // 4) * self.n_epochs
        if ended is not None:
            data["end_time"] = _stamp(ended)
        if status == "FAILED" and self.failure is not None:
            data["code"], data["message"] = self.failure.code, self.failure.message
        return data

    def logs(self, now: float) -> list[str]:
        """The training log lines written by `now`."""
        lines: list[tuple[float, str]] = [
            (self.created_at, f"[{self.job_id}] fine-tune job created: model {self.model}, "
                              f"training_type {self.training_type}"),
            (self.created_at + self.duration * PENDING_SHARE,
             f"[{self.job_id}] resources requested, job queuing"),
        ]
        start = self.created_at + self.duration * (PENDING_SHARE + QUEUING_SHARE)
        lines.append((start, f"[{self.job_id}] training started: {self.n_epochs} epochs, "
                             f"hyper_parameters {self.hyper_parameters}"))
        end = self.created_at + self.duration
        epochs = range(1, self.n_epochs if self.failure else self.n_epochs + 1)
        for k in epochs:
            at = min(end, start + (end - start) * k / self.n_epochs)
            loss = round(1.6 - 1.2 * k / self.n_epochs, 4)
            lines.append((at, f"[{self.job_id}] epoch {k}/{self.n_epochs} finished, "
                              f"train_loss={loss}"))
        if self.failure is not None:
            lines.append((end, f"[{self.job_id}] training failed: {self.failure.code}: "
                               f"{self.failure.message}"))
        else:
            lines.append((end, f"[{self.job_id}] model {self.output_name} saved ##FT_COMPLETE##"))
        cancelled = self.cancel_at
        written = [text for at, text in lines
                   if at <= now and (cancelled is None or at <= cancelled)]
        if cancelled is not None and cancelled <= now:
            written.append(f"[{self.job_id}] job cancelled")
        return written


@dataclass
class Deployment:
    """A deployment of a fine-tuned model: PENDING → DEPLOYING → RUNNING (or FAILED)."""

    deployed_model: str
    seq: int
    model_name: str
    base_model: str
    capacity: int
    plan: str
    created_at: float
    duration: float
    failure: Failure | None
    modified_at: float
    deleted_at: float | None = None
    delete_duration: float = 0.0

    def status(self, now: float) -> str:
        """The status the API reports at `now` ("GONE" once deleted: no longer listed)."""
        if self.deleted_at is not None:
            return "GONE" if now >= self.deleted_at + self.delete_duration else "DELETING"
        elapsed = now - self.created_at
        if elapsed >= self.duration:
            return "FAILED" if self.failure else "RUNNING"
        return "PENDING" if elapsed < self.duration * 0.1 else "DEPLOYING"

    def to_api(self, now: float) -> dict[str, Any]:
        """The deployment object at `now`."""
        status = self.status(now)
        data: dict[str, Any] = {
            "deployed_model": self.deployed_model, "gmt_create": _iso(self.created_at),
            "gmt_modified": _iso(self.modified_at), "status": status,
            "model_name": self.model_name, "base_model": self.base_model,
            "base_capacity": BASE_CAPACITY, "capacity": self.capacity,
            "ready_capacity": self.capacity if status == "RUNNING" else 0,
            "workspace_id": WORKSPACE_ID, "charge_type": "post_paid", "plan": self.plan,
            "creator": USER_ID, "modifier": USER_ID,
        }
        if status == "FAILED" and self.failure is not None:
            data["code"], data["message"] = self.failure.code, self.failure.message
        return data


# --- Store ------------------------------------------------------------------------------------


def _page(items: list[Any], page_no: int, page_size: int) -> list[Any]:
    start = (page_no - 1) * page_size
    return items[start:start + page_size]


class Store(FaultStore[Scenario]):
    """Files, jobs, deployments, request counters and the Scenario, behind one lock."""

    def _reset(self) -> None:
        super()._reset()
        self._files: dict[str, StoredFile] = {}
        self._jobs: dict[str, Job] = {}
        self._deployments: dict[str, Deployment] = {}
        self._seq = 0
        self._deployments_created: Counter[str] = Counter()

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def bom(self) -> bool:
        """Whether JSON bodies get a UTF-8 byte order mark."""
        with self._lock:
            return self._scenario.utf8_bom

    def stats(self) -> dict[str, Any]:
        """Objects, statuses, deployments ever created per model, requests and faults."""
        with self._lock:
            now = self._clock()
            live = [d for d in self._deployments.values() if d.status(now) != "GONE"]
            return {
                "files": len(self._files), "jobs": len(self._jobs),
                "jobs_by_status": dict(Counter(j.status(now) for j in self._jobs.values())),
                "deployments": len(live),
                "deployments_by_status": dict(Counter(d.status(now) for d in live)),
                "deployments_created": dict(self._deployments_created),
                "deployments_deleted": sum(1 for d in self._deployments.values()
                                           if d.deleted_at is not None),
                **self.fault_stats(),
            }

    # Files

    def upload(self, items: list[tuple[str, bytes]], descriptions: list[str],
               purpose: str | None) -> dict[str, Any]:
        """Store uploaded files; those over a quota land in ``failed_uploads`` (still 200).

        Raises:
            OpenAIShapedError: ``purpose`` is not one DashScope knows.
            ApiError: no file was sent.
        """
        if purpose is not None and purpose not in UPLOAD_PURPOSES:
            raise OpenAIShapedError(400, f"'purpose' must be one of {list(UPLOAD_PURPOSES)}",
                                    "purpose")
        if not items:
            raise invalid("Missing files: send one or more multipart parts named 'files'")
        uploaded, failed = [], []
        with self._lock:
            now = self._clock()
            knob = self._scenario.failed_uploads
            for i, (name, content) in enumerate(items):
                total = sum(len(f.content) for f in self._files.values())
                problem = None
                if knob.count > 0:
                    knob.count -= 1
                    problem = (knob.code, knob.message)
                elif len(content) > MAX_FILE_BYTES:
                    problem = ("BadRequest.TooLarge",
                               f"File size exceeds the limit of {MAX_FILE_BYTES} bytes.")
                elif len(self._files) >= MAX_FILES:
                    problem = ("BadRequest.TooMany", f"Exceeded the maximum number of files "
                                                     f"allowed ({MAX_FILES}).")
                elif total + len(content) > MAX_TOTAL_BYTES:
                    problem = ("BadRequest.TooLarge", "Total file size exceeds the quota of "
                                                      f"{MAX_TOTAL_BYTES} bytes.")
                if problem is not None:
                    failed.append({"name": name, "code": problem[0], "message": problem[1]})
                    continue
                stored = StoredFile(str(uuid.uuid4()), self._next_seq(), name,
                                    descriptions[i] if i < len(descriptions) else "",
                                    purpose or "fine-tune", content, now)
                self._files[stored.file_id] = stored
                uploaded.append({"file_id": stored.file_id, "name": name})
        return {"uploaded_files": uploaded, "failed_uploads": failed}

    def list_files(self, page_no: int, page_size: int) -> dict[str, Any]:
        """One page of files, newest first."""
        with self._lock:
            files = sorted(self._files.values(), key=lambda f: f.seq, reverse=True)
            return {"total": len(files), "page_no": page_no, "page_size": page_size,
                    "files": [f.to_api() for f in _page(files, page_no, page_size)]}

    def get_file(self, file_id: str) -> dict[str, Any]:
        """One file."""
        with self._lock:
            return self._file(file_id).to_api()

    def delete_file(self, file_id: str) -> None:
        """Delete a file."""
        with self._lock:
            del self._files[self._file(file_id).file_id]

    def _file(self, file_id: str) -> StoredFile:
        stored = self._files.get(file_id)
        if stored is None:
            raise not_found(f"file {file_id}")
        return stored

    # Fine-tunes

    def create_job(self, body: dict[str, Any]) -> dict[str, Any]:
        """Create a fine-tune job from a POST /fine-tunes body.

        Raises:
            ApiError: a missing or invalid field, an unknown model or file.
        """
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise invalid("Missing parameter: model")
        training = _id_list(body, "training_file_ids")
        if not training:
            raise invalid("Missing training files")
        validation = _id_list(body, "validation_file_ids")
        training_type = body.get("training_type") or "sft"
        if training_type not in TRAINING_TYPES:
            raise invalid(f"training_type must be one of {', '.join(TRAINING_TYPES)}, "
                          f"got {training_type!r}")
        hyper = _hyper_parameters(body.get("hyper_parameters"), training_type)
        job_name = body.get("job_name")
        if job_name is not None and (not isinstance(job_name, str) or len(job_name) > 128):
            raise invalid("job_name must be a string of at most 128 characters")
        suffix = body.get("finetuned_output_suffix")
        if suffix is not None and (not isinstance(suffix, str) or len(suffix) > 64):
            raise invalid("finetuned_output_suffix must be a string of at most 64 characters")
        with self._lock:
            now = self._clock()
            tuned = {j.output_name for j in self._jobs.values() if j.status(now) == "SUCCEEDED"}
            if model not in tuned and not any(fnmatch.fnmatchcase(model, p)
                                              for p in FINE_TUNABLE):
                raise invalid(f"Model {model} does not support fine-tuning")
            for file_id in training + validation:
                if file_id not in self._files:
                    raise invalid(f"File {file_id} not found")
            stamp = datetime.fromtimestamp(now, UTC).strftime("%Y%m%d%H%M")
            job_id = f"ft-{stamp}-{secrets.token_hex(2)}"
            output = body.get("finetuned_output") or "-".join(
                p for p in (model, suffix, job_id) if p)
            job = Job(
                job_id=job_id, seq=self._next_seq(), job_name=job_name or job_id, model=model,
                training_type=training_type, training_file_ids=training,
                validation_file_ids=validation, hyper_parameters=hyper, output_name=output,
                created_at=now, duration=self._scenario.job_duration_s,
                failure=self._scenario.fail_jobs,
                training_bytes=sum(len(self._files[f].content) for f in training),
            )
            self._jobs[job_id] = job
            return job.to_api(now)

    def list_jobs(self, page_no: int, page_size: int, model: str | None) -> dict[str, Any]:
        """One page of jobs, newest first, optionally of one base model."""
        with self._lock:
            now = self._clock()
            jobs = sorted(self._jobs.values(), key=lambda j: j.seq, reverse=True)
            if model:
                jobs = [j for j in jobs if j.model == model]
            return {"page_no": page_no, "page_size": page_size, "total": len(jobs),
                    "jobs": [j.to_api(now) for j in _page(jobs, page_no, page_size)]}

    def get_job(self, job_id: str) -> dict[str, Any]:
        """One job at now."""
        with self._lock:
            return self._job(job_id).to_api(self._clock())

    def cancel_job(self, job_id: str) -> None:
        """Cancel a job that has not ended: CANCELING for a while, then CANCELED."""
        with self._lock:
            now = self._clock()
            job = self._job(job_id)
            status = job.status(now)
            if status not in JOB_LIVE or status == "CANCELING":
                raise unsupported(f"Job {job_id} is {status} and cannot be cancelled")
            job.cancel_at, job.cancel_duration = now, job.duration * CANCEL_SHARE

    def delete_job(self, job_id: str) -> None:
        """Delete a job that has ended."""
        with self._lock:
            job = self._job(job_id)
            status = job.status(self._clock())
            if status in JOB_LIVE:
                raise unsupported(f"Job {job_id} is {status}; cancel it before deleting it")
            del self._jobs[job_id]

    def job_logs(self, job_id: str, offset: int, line: int) -> dict[str, Any]:
        """``line`` log lines after the first ``offset``, and how many there are."""
        with self._lock:
            logs = self._job(job_id).logs(self._clock())
            return {"total": len(logs), "logs": logs[offset:offset + line]}

    def _job(self, job_id: str) -> Job:
        job = self._jobs.get(job_id)
        if job is None:
            raise not_found(f"fine-tune job {job_id}")
        return job

    # Deployments

    def create_deployment(self, body: dict[str, Any]) -> dict[str, Any]:
        """Deploy a fine-tuned model (PENDING at first).

        Raises:
            ApiError: a missing or invalid field, a model that is not a finished fine-tune,
                or a deployment with that name already.
        """
        model = body.get("model_name")
        if not isinstance(model, str) or not model:
            raise invalid("Missing parameter: model_name")
        capacity = body.get("capacity")
        if not isinstance(capacity, int) or isinstance(capacity, bool) or capacity < 1:
            raise invalid("capacity must be a positive integer")
        if capacity % BASE_CAPACITY:
            raise invalid(f"capacity must be a multiple of base_capacity {BASE_CAPACITY}")
        suffix = body.get("suffix")
        if suffix is not None and (not isinstance(suffix, str) or not suffix.isidentifier()):
            raise invalid("suffix must be letters, digits and '_'")
        plan = body.get("plan") or "mu"
        if plan not in ("mu", "ptu", "lora"):
            raise invalid(f"plan must be mu, ptu or lora, got {plan!r}")
        with self._lock:
            now = self._clock()
            source = next((j for j in self._jobs.values()
                           if j.output_name == model and j.status(now) == "SUCCEEDED"), None)
            if source is None:
                raise invalid(f"Model {model} is not a fine-tuned model that can be deployed")
            name = f"{model}-{suffix or secrets.token_hex(3)}"
            existing = self._deployments.get(name)
            if existing is not None and existing.status(now) != "GONE":
                raise ApiError(409, "Conflict", f"Deployment {name} already exists")
            deployment = Deployment(
                deployed_model=name, seq=self._next_seq(), model_name=model,
                base_model=source.model, capacity=capacity, plan=plan, created_at=now,
                duration=self._scenario.deployment_duration_s,
                failure=self._scenario.fail_deployments, modified_at=now)
            self._deployments[name] = deployment
            self._deployments_created[model] += 1
            return deployment.to_api(now)

    def list_deployments(self, page_no: int, page_size: int) -> dict[str, Any]:
        """One page of deployments not yet deleted, newest first."""
        with self._lock:
            now = self._clock()
            live = sorted((d for d in self._deployments.values() if d.status(now) != "GONE"),
                          key=lambda d: d.seq, reverse=True)
            return {"page_no": page_no, "page_size": page_size, "total": len(live),
                    "deployments": [d.to_api(now) for d in _page(live, page_no, page_size)]}

    def get_deployment(self, deployed_model: str) -> dict[str, Any]:
        """One deployment at now."""
        with self._lock:
            now = self._clock()
            return self._deployment(deployed_model, now).to_api(now)

    def scale_deployment(self, deployed_model: str, capacity: Any) -> dict[str, Any]:
        """Change a serving deployment's capacity."""
        if not isinstance(capacity, int) or isinstance(capacity, bool) or capacity < 1:
            raise invalid("capacity must be a positive integer")
        if capacity % BASE_CAPACITY:
            raise invalid(f"capacity must be a multiple of base_capacity {BASE_CAPACITY}")
        with self._lock:
            now = self._clock()
            deployment = self._deployment(deployed_model, now)
            status = deployment.status(now)
            if status != "RUNNING":
                raise unsupported(f"Deployment {deployed_model} is {status}; only a RUNNING "
                                  "deployment can be scaled")
            deployment.capacity, deployment.modified_at = capacity, now
            return deployment.to_api(now)

    def delete_deployment(self, deployed_model: str) -> None:
        """Delete a deployment: DELETING for a while, then gone."""
        with self._lock:
            now = self._clock()
            deployment = self._deployment(deployed_model, now)
            if deployment.deleted_at is None:
                deployment.deleted_at, deployment.modified_at = now, now
                deployment.delete_duration = deployment.duration * DELETE_SHARE

    def _deployment(self, deployed_model: str, now: float) -> Deployment:
        deployment = self._deployments.get(deployed_model)
        if deployment is None or deployment.status(now) == "GONE":
            raise not_found(f"deployment {deployed_model}")
        return deployment


def _id_list(body: dict[str, Any], name: str) -> list[str]:
    value = body.get(name)
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise invalid(f"{name} must be a list of file ids")
    return list(value)


def _hyper_parameters(value: Any, training_type: str) -> dict[str, Any]:
    """The hyper_parameters a job echoes: the given ones over the defaults, checked."""
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise invalid("hyper_parameters must be an object")
    for key in INT_HYPER_PARAMETERS & set(value):
        item = value[key]
        if not isinstance(item, int) or isinstance(item, bool) or item < 1:
            raise invalid(f"hyper_parameters.{key} must be a positive integer, got {item!r}")
    rate = value.get("learning_rate")
    if rate is not None:
        try:
            ok = float(rate) > 0
        except (TypeError, ValueError):
            ok = False
        if not ok or isinstance(rate, bool):
            raise invalid(f"hyper_parameters.learning_rate must be a positive number, "
                          f"got {rate!r}")
    defaults = {**DEFAULT_HYPER_PARAMETERS,
                **(LORA_DEFAULTS if training_type in LORA_TYPES else {})}
    return {**defaults, **value}
