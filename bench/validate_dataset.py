"""Dataset validation speed and memory on a generated 1 GB OpenAI chat file.

Generates realistic chat examples (a system prompt, one or two user/assistant turns, some
tool calls, some non-ASCII text; about 1.5 KB a line) into a temporary directory, then
validates the file in a fresh child process twice, with token counting off and on, and
prints MB/s and the child's peak RSS. Targets: >= 50 MB/s with counting off, peak RSS
under 200 MB either way. The file is deleted afterwards.

Run (from the repo root, in the venv):

    python bench/validate_dataset.py               # 1024 MB
    python bench/validate_dataset.py --size-mb 100 # quicker
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORDS = [
    "account", "billing", "invoice", "password", "reset", "settings", "security", "profile",
    "username", "team", "member", "invite", "export", "data", "plan", "cancel", "refund",
    "subscription", "order", "shipping", "address", "delivery", "tracking", "support",
    "ticket", "priority", "response", "the", "a", "to", "of", "and", "for", "with", "your",
    "you", "can", "we", "will", "please", "thanks", "sure", "here", "is", "how", "open",
    "click", "then", "select"]
ACCENTED = ["café", "naïve", "résumé", "Müller", "straße", "你好", "世界", "ありがとう",
            "спасибо", "🙂"]


def sentence(rng: random.Random, words: int) -> str:
    pool = ACCENTED if rng.random() < 0.1 else WORDS
    return " ".join(rng.choice(WORDS if rng.random() < 0.9 else pool)
                    for _ in range(words)).capitalize() + "."


def paragraph(rng: random.Random, low: int, high: int) -> str:
    return " ".join(sentence(rng, rng.randint(6, 18)) for _ in range(rng.randint(low, high)))


def example(rng: random.Random) -> dict[str, object]:
    messages: list[dict[str, object]] = [
        {"role": "system", "content": paragraph(rng, 3, 6)}]
    for _ in range(1 if rng.random() < 0.8 else 2):
        messages.append({"role": "user", "content": paragraph(rng, 1, 5)})
        if rng.random() < 0.1:
            messages.append({"role": "assistant", "tool_calls": [{
                "id": "call_1", "type": "function", "function": {
                    "name": "lookup_order",
                    "arguments": json.dumps({"order": rng.randint(1, 9**9)})}}]})
            messages.append({"role": "tool", "tool_call_id": "call_1",
                             "content": json.dumps({"status": "shipped", "eta_days": 2})})
        messages.append({"role": "assistant", "content": paragraph(rng, 2, 10)})
    return {"messages": messages}


def generate(path: Path, size: int) -> tuple[int, float]:
    """Write about ``size`` bytes of examples; return (lines, seconds)."""
    rng = random.Random(42)
    pool = [(json.dumps(example(rng), ensure_ascii=False) + "\n").encode() for _ in range(4000)]
    start, written, lines = time.perf_counter(), 0, 0
    with path.open("wb", buffering=8 << 20) as out:
        while written < size:
            chunk = b"".join(rng.choice(pool) for _ in range(1000))
            out.write(chunk)
            written += len(chunk)
            lines += 1000
    return lines, time.perf_counter() - start


def child(path: Path, tokens: bool) -> None:
    """Validate ``path`` in this process and print one JSON line of figures."""
    from orchestrator.datasets import validate_file

    start = time.perf_counter()
    report = validate_file(path, provider="openai", model="gpt-4o-mini-2024-07-18",
                           hyperparameters={"n_epochs": 3}, count_tokens=tokens)
    seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "examples": report.examples, "lines": report.lines,
                      "errors": report.log.error_count, "warnings": report.log.warning_count,
                      "codes": dict(report.log.codes),
                      "tokens": report.tokens.total if report.tokens else None,
                      "p95": report.tokens.percentile(0.95) if report.tokens else None,
                      "cost": report.cost_usd,
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=1024)
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--tokens", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.tokens)
        return
    with tempfile.TemporaryDirectory(prefix="tunectl-bench-") as tmp:
        path = Path(tmp) / "chat.jsonl"
        lines, seconds = generate(path, args.size_mb << 20)
        size = path.stat().st_size
        print(f"python {sys.version.split()[0]}, load average {os.getloadavg()[0]:.2f}")
        print(f"generated {size / 1e6:,.0f} MB, {lines:,} examples "
              f"({size / lines:,.0f} bytes/line) in {seconds:.1f} s")
        for tokens in (False, True):
            argv = [sys.executable, __file__, "--child", str(path)]
            argv += ["--tokens"] if tokens else []
            result = json.loads(subprocess.run(argv, check=True, capture_output=True,
                                               text=True).stdout)
            rate = size / 1e6 / result["seconds"]
            label = "on " if tokens else "off"
            extra = (f", {result['tokens']:,} tokens, p95 {result['p95']:,}/example, "
                     f"est. ${result['cost']:,.2f} for 3 epochs") if tokens else ""
            print(f"token counting {label}: {result['seconds']:6.1f} s  {rate:6.1f} MB/s  "
                  f"peak RSS {result['peak_rss_mb']:5.1f} MB  ({result['examples']:,} valid "
                  f"examples{extra}; problems: {result['codes'] or 'none'})")
    print("temporary file deleted")


if __name__ == "__main__":
    main()
