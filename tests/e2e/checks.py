"""What the end-to-end tests assert, in one place: gapless histories, and "one file, one
provider job" as the official OpenAI SDK sees the emulator."""

from __future__ import annotations

import itertools
import json
import secrets
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tests.e2e.processes import Emulator

LIFECYCLE = ["queued", "validating", "uploading", "submitting", "training", "finalizing",
             "succeeded"]


def write_job(directory: Path, name: str, *, examples: int = 12,
              token: str | None = None) -> tuple[Path, bytes]:
    """A spec and its own dataset (unique content unless ``token`` is shared); returns
    (spec path, dataset bytes)."""
    directory.mkdir(parents=True, exist_ok=True)
    token = token or secrets.token_hex(6)
    lines = [json.dumps({"messages": [
        {"role": "user", "content": f"[{token}] question {i}"},
        {"role": "assistant", "content": f"answer {i}"}]}) for i in range(examples)]
    dataset = directory / f"{name}.jsonl"
    dataset.write_text("\n".join(lines) + "\n")
    spec = directory / f"{name}.json"
    spec.write_text(json.dumps({"name": name, "provider": "openai",
                                "base_model": "gpt-4o-mini-2024-07-18",
                                "training_file": dataset.name}))
    return spec, dataset.read_bytes()


def assert_gapless(history: list[dict[str, Any]], *, job_id: str = "") -> None:
    """``seq`` runs 1..n without a gap or repeat, and each row starts where the last ended."""
    seqs = [row["seq"] for row in history]
    assert seqs == list(range(1, len(history) + 1)), f"job {job_id}: seq {seqs} has gaps"
    assert history[0]["from"] is None and history[0]["to"] == "queued", history[0]
    for before, row in itertools.pairwise(history):
        assert row["from"] == before["to"], (
            f"job {job_id}: seq {row['seq']} moves from {row['from']}, "
            f"but seq {before['seq']} left it in {before['to']}")


def assert_full_lifecycle(history: list[dict[str, Any]], *, job_id: str = "") -> None:
    """Gapless, and the distinct states in order are exactly queued … succeeded."""
    assert_gapless(history, job_id=job_id)
    visited = [row["to"] for row in history]
    distinct = [s for i, s in enumerate(visited) if i == 0 or s != visited[i - 1]]
    assert distinct == LIFECYCLE, f"job {job_id}: went {distinct}"


def provider_files(emulator: Emulator) -> list[tuple[str, str, bytes]]:
    """Every file at the emulator as (id, purpose, content), through the official SDK."""
    with emulator.sdk() as client:
        return [(f.id, f.purpose, client.files.content(f.id).read())
                for f in client.files.list()]


def provider_jobs_by_tunectl_id(emulator: Emulator) -> Counter[str | None]:
    """How many provider jobs carry each ``tunectl_job_id`` metadata (None: no metadata)."""
    with emulator.sdk() as client:
        return Counter((job.metadata or {}).get("tunectl_job_id")
                       for job in client.fine_tuning.jobs.list(limit=100))


def assert_one_file_per_dataset(emulator: Emulator, datasets: Iterable[bytes]) -> None:
    """Each dataset is at the provider exactly once, and no other training file is."""
    wanted = Counter(datasets)
    training = [content for _, purpose, content in provider_files(emulator)
                if purpose == "fine-tune"]
    found = Counter(training)
    for content in wanted:
        assert found[content] == 1, (
            f"expected one training file with this dataset, found {found[content]}")
    assert len(training) == len(wanted), (
        f"{len(training)} training files at the provider for {len(wanted)} datasets")


def assert_one_provider_job_each(emulator: Emulator, job_ids: Iterable[str]) -> None:
    """Each tunectl job has exactly one provider job, and there are no others."""
    ids = list(job_ids)
    seen = provider_jobs_by_tunectl_id(emulator)
    twice = {k: n for k, n in seen.items() if n != 1}
    assert not twice, f"provider jobs per tunectl job, where not exactly one: {twice}"
    assert set(seen) == set(ids), (
        f"missing at the provider: {sorted(set(ids) - set(seen))[:5]}; "
        f"unexpected: {sorted(map(str, set(seen) - set(ids)))[:5]}")
