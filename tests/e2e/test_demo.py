"""``tunectl demo`` end to end: emulator + daemon + the example jobs, in a subprocess.

The demo always runs on the embedded default (SQLite + Celery's SQLAlchemy transport) in
``$TUNECTL_DATA_DIR/demo``; the test points that, and ``XDG_DATA_HOME``, into tmp_path so
nothing touches the real home.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from tests.e2e.checks import LIFECYCLE
from tests.e2e.processes import Procs, tunectl_argv

#: A transition line of the demo's watch: "12:00:01.234  support-bot  queued → validating …"
#: or, for a change of provider status, "12:00:01.234  support-bot  training (running) …".
TRANSITION = re.compile(r"^\d\d:\d\d:\d\d\.\d{3}\s+(?P<job>[\w-]+)\s+(?:(?P<src>[a-z]+)\s+)?"
                        r"(?:→\s+(?P<dst>[a-z]+)|(?P<same>[a-z]+)\s)")


def visited_by(output: str, job: str) -> list[str]:
    """The distinct states the demo printed for ``job``, in order."""
    visited = []
    for line in output.splitlines():
        match = TRANSITION.match(line)
        if match and match["job"] == job:
            visited.append(match["dst"] or match["same"])
    return [s for i, s in enumerate(visited) if i == 0 or s != visited[i - 1]]


def test_demo_shows_every_state_of_the_support_bot_job(tmp_path: Path, procs: Procs) -> None:
    """The demo exits 0 and prints the support-bot job going queued … succeeded, the
    DashScope job going on through deploying to succeeded with a deployed model, and the
    Vertex job succeeding, after which its tuned endpoint answers from its dataset, and the
    verified webhook of each job's outcome."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("TUNECTL_", "OPENAI_", "GOOGLE_", "VERTEXAI_"))}
    env.update(TUNECTL_DATA_DIR=str(tmp_path / "data"), XDG_DATA_HOME=str(tmp_path / "xdg"),
               HOME=str(tmp_path / "home"), COLUMNS="200", PYTHONUNBUFFERED="1",
               # A shell set up for real work: none of it may reach the demo's jobs.
               VERTEXAI_PROJECT="someone-elses-project", TUNECTL_GCS_BUCKET="someone-elses",
               TUNECTL_GCS_PREFIX="elsewhere/",
               TUNECTL_WEBHOOKS='[{"url": "http://127.0.0.1:9/elsewhere", "events": ["all"]}]')
    # In its own process group: teardown kills the demo's emulator and daemon too.
    demo = procs.start("demo", tunectl_argv("demo", "--job-duration", "1", "--timeout", "150"),
                       env)
    returncode = demo.popen.wait(timeout=240)
    output = demo.output()
    assert returncode == 0, f"demo exited {returncode}:\n{output}"

    distinct = visited_by(output, "support-bot")
    assert distinct == LIFECYCLE, f"support-bot went {distinct}:\n{output}"
    assert re.search(r"support-bot\s+│\s+succeeded", output), output
    qwen = visited_by(output, "qwen-support")
    assert qwen == [*LIFECYCLE[:-1], "deploying", "succeeded"], f"qwen-support went {qwen}"
    assert re.search(r"qwen-support\s+│\s+succeeded\s+│\s+qwen-turbo-.*│\s+qwen-turbo-", output)
    assert visited_by(output, "gemini-support") == LIFECYCLE
    assert re.search(r"gemini-support\s+│\s+succeeded\s+│\s+projects/tunectl-emulator/locations/"
                     r"us-central1/models/\d+@1", output), output
    assert re.search(r"gemini-support's tuned model \(vertex_ai/gemini/\d+\) answers 'How do "
                     r"I reset my password\?':\n  Open Settings → Security → Reset password",
                     output), output
    # Every outcome reached the demo's receiver, signed: it verified each one.
    assert "webhooks: 6 of 6 jobs notified, every signature verified" in output
    for event in ("job.succeeded for support-bot", "job.failed for broken-dataset",
                  "job.deployed for qwen-support"):
        assert re.search(rf"webhook\s+{event} \(webhook-id msg_\w+\), signature verified",
                         output), f"no {event} line:\n{output}"
    assert (tmp_path / "data" / "demo" / "tunectl.db").exists(), "demo ran somewhere else"
    assert not (tmp_path / "home").exists(), "the demo wrote into HOME"
