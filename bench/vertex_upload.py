"""Cloud Storage upload speed and memory of the Vertex adapter, against `tunectl emulator`.

Generates a Gemini-format dataset of ``--size-mb`` into a temporary directory, starts
``tunectl emulator`` on a free loopback port (its own process, with a service-account key
it makes), then uploads the file with the adapter in a fresh child process, resumable in
``--chunk-mb`` chunks, and prints MB/s and the child's peak RSS. The upload holds one chunk
in memory at a time, so the peak should stay near the interpreter's own plus a chunk or
two, whatever the file size. Everything is deleted afterwards.

Run (from the repo root, in the venv):

    python bench/vertex_upload.py                  # 200 MB in 8 MB chunks
    python bench/vertex_upload.py --size-mb 50 --chunk-mb 1
"""

from __future__ import annotations

import argparse
import hashlib
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from _support import tunectl_argv

from orchestrator.loopback import free_port

LINE = ('{"contents": [{"role": "user", "parts": [{"text": "Where is order %07d? %s"}]}, '
        '{"role": "model", "parts": [{"text": "It ships tomorrow from warehouse %d."}]}]}\n')


def generate(path: Path, size_mb: int) -> None:
    target = size_mb << 20
    padding = "please check the tracking page " * 20
    with path.open("w") as out:
        written, i = 0, 0
        while written < target:
            line = LINE % (i, padding, i % 7)
            out.write(line)
            written += len(line)
            i += 1


def child(args: argparse.Namespace) -> None:
    """Upload once and print the figures as JSON (run in a fresh process)."""
    from orchestrator.config import Settings
    from orchestrator.providers import registry

    path = Path(args.file)
    sha = hashlib.sha256(f"{path}{time.time()}".encode()).hexdigest()  # a fresh object name
    settings = Settings(data_dir=Path(args.work), vertex_base_url=args.base,
                        gcs_base_url=args.base, gcs_bucket=args.bucket, gcs_prefix="bench/",
                        gcs_resumable_threshold_bytes=8 << 20,
                        gcs_chunk_bytes=args.chunk_mb << 20, upload_timeout_s=3600,
                        lease_s=7200, broker_visibility_timeout_s=7201,
                        google_application_credentials=Path(args.key))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with httpx.Client(timeout=120) as http:
        client = registry.get("vertex").connect(settings, http)
        started = time.perf_counter()
        uploaded = client.upload_file(path, sha)
        seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"bytes": uploaded.bytes, "seconds": seconds, "rss_before_kb": before,
                      "peak_rss_kb": peak}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=200)
    parser.add_argument("--chunk-mb", type=int, default=8)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--file", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    parser.add_argument("--base", help=argparse.SUPPRESS)
    parser.add_argument("--key", help=argparse.SUPPRESS)
    parser.add_argument("--bucket", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    from orchestrator.providers.vertex.emulator import DEMO_BUCKET  # the bucket it starts with
    with tempfile.TemporaryDirectory(prefix="tunectl-bench-") as work:
        data = Path(work) / "train.jsonl"
        generate(data, args.size_mb)
        port = free_port()
        emulator = subprocess.Popen(tunectl_argv("emulator", "--port", str(port)),
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            base = f"http://127.0.0.1:{port}/google"
            deadline = time.monotonic() + 30
            while True:
                try:
                    key = httpx.post(f"{base}/_emulator/service-accounts/keys", json={})
                    break
                except httpx.TransportError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)
            key_file = Path(work) / "key.json"
            key_file.write_text(json.dumps(key.json()))
            done = subprocess.run(
                [sys.executable, __file__, "--child", "--file", str(data), "--work", work,
                 "--base", base, "--key", str(key_file), "--chunk-mb", str(args.chunk_mb),
                 "--bucket", DEMO_BUCKET],
                capture_output=True, text=True, check=True)
            figures = json.loads(done.stdout.strip().splitlines()[-1])
            stats = httpx.get(f"{base}/_emulator/stats").json()
        finally:
            emulator.terminate()
            emulator.wait(timeout=15)
    mb = figures["bytes"] / (1 << 20)
    print(f"resumable upload of {mb:.0f} MB in {args.chunk_mb} MB chunks: "
          f"{figures['seconds']:.1f} s, {mb / figures['seconds']:.0f} MB/s; uploader peak RSS "
          f"{figures['peak_rss_kb'] / 1024:.0f} MB ({figures['rss_before_kb'] / 1024:.0f} MB "
          f"before the upload); chunks sent: "
          f"{stats['requests'].get('PUT /upload/storage/v1/b/{bucket}/o', 0)}")


if __name__ == "__main__":
    main()
