"""Shared plumbing for the benchmarks: a throwaway PostgreSQL database, child processes in
their own process groups, and waiting on their logs. Not a benchmark itself."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from orchestrator.db.engine import make_engine
from orchestrator.db.migrate import upgrade

VENV_BIN = Path(sys.executable).parent
DEFAULT_PG_ADMIN_URL = os.environ.get("TUNECTL_TEST_PG_URL",
                                      "postgresql://postgres@127.0.0.1:5432/test")


@contextlib.contextmanager
def temp_postgres_database(admin_url: str, prefix: str = "tunectl_bench") -> Iterator[str]:
    """Create and migrate a fresh database next to ``admin_url``'s; drop it afterwards."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin = make_engine(admin_url).execution_options(isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    url = sa.engine.make_url(admin_url).set(database=name).render_as_string(False)
    try:
        engine = make_engine(url)
        upgrade(engine)
        engine.dispose()
        yield url
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


def run_in_temp_dir(
    args: argparse.Namespace,
    run: Callable[[argparse.Namespace, Path, contextlib.ExitStack], dict[str, Any]],
    report: Callable[[argparse.Namespace, dict[str, Any]], None],
) -> int:
    """Run a benchmark in a fresh temp directory (kept with ``args.keep``), undo everything
    it set up, then print its figures."""
    tmp = Path(tempfile.mkdtemp(prefix="tunectl-bench-"))
    try:
        with contextlib.ExitStack() as exits:
            figures = run(args, tmp, exits)
        report(args, figures)
    finally:
        if args.keep:
            print(f"logs kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


def stack_urls(stack: str, tmp: Path, exits: contextlib.ExitStack, *, pg_url: str,
               redis_url: str) -> tuple[str, str]:
    """(database URL, broker URL) of a bench run: on ``production`` a fresh PostgreSQL
    database and the Redis DB of ``redis_url`` (flushed before and after); on ``embedded``
    SQLite files in ``tmp``."""
    if stack != "production":
        return f"sqlite:///{tmp / 'tunectl.db'}", f"sqla+sqlite:///{tmp / 'broker.db'}"
    database_url = exits.enter_context(temp_postgres_database(pg_url))
    import redis

    def flush() -> None:
        with redis.Redis.from_url(redis_url) as client:
            client.flushdb()

    flush()
    exits.callback(flush)
    return database_url, redis_url


def write_spec(directory: Path, name: str = "bench") -> Path:
    """An OpenAI job spec and its small, valid dataset (12 examples) in ``directory``."""
    lines = [json.dumps({"messages": [{"role": "user", "content": f"question {i}"},
                                      {"role": "assistant", "content": f"answer {i}"}]})
             for i in range(12)]
    dataset = directory / "train.jsonl"
    dataset.write_text("\n".join(lines) + "\n")
    spec = directory / f"{name}.json"
    spec.write_text(json.dumps({"name": name, "provider": "openai",
                                "base_model": "gpt-4o-mini-2024-07-18",
                                "training_file": dataset.name}))
    return spec


def tunectl_argv(*args: str) -> list[str]:
    """The installed ``tunectl`` command line."""
    script = VENV_BIN / "tunectl"
    return [str(script), *args] if script.exists() else [
        sys.executable, "-m", "orchestrator.cli", *args]


class Child:
    """A process in its own process group, with its output in a log file."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log: Path) -> None:
        self.name, self.log = name, log
        with log.open("ab") as sink:
            self.popen = subprocess.Popen(argv, env=env, stdout=sink, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL, start_new_session=True)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, needle: str, timeout: float = 60) -> None:
        """Wait until ``needle`` is in the log; raise (with the log tail) otherwise."""
        deadline = time.monotonic() + timeout
        while needle not in self.output():
            if self.popen.poll() is not None or time.monotonic() > deadline:
                tail = "\n".join(self.output().splitlines()[-30:])
                raise RuntimeError(f"{self.name} did not log {needle!r}:\n{tail}")
            time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL the whole process group."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=15)


def starter(stack: contextlib.ExitStack, env: dict[str, str], logs: Path
            ) -> Callable[[str, list[str]], Child]:
    """A function that starts a named ``Child`` with ``env``, logging to ``logs/NAME.log``;
    every child it started is killed, newest first, when ``stack`` closes."""
    children: list[Child] = []
    stack.callback(lambda: [c.kill() for c in reversed(children)])

    def start(name: str, argv: list[str]) -> Child:
        child = Child(name, argv, env, logs / f"{name}.log")
        children.append(child)
        return child

    return start
