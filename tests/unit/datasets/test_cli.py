"""``tunectl dataset validate|convert`` as a user runs them: tables, JSON, exit statuses."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from orchestrator import cli
from orchestrator.config import get_settings

GOLDEN = Path(__file__).parent / "golden"
EXAMPLES = Path(cli.__file__).parent / "examples"


@pytest.fixture(autouse=True)
def _env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TUNECTL_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("COLUMNS", "200")


def tunectl(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    get_settings.cache_clear()
    sys.argv = ["tunectl", *args]
    try:
        cli.main()
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


OPENAI = ("--provider", "openai", "--model", "gpt-4o-mini-2024-07-18")


class TestValidate:
    def test_a_broken_dataset_prints_the_problem_and_exits_1(
            self, capsys: pytest.CaptureFixture[str]) -> None:
        code, out, _ = tunectl(capsys, "dataset", "validate", str(EXAMPLES / "broken.jsonl"),
                               *OPENAI)

        assert code == 1
        assert "1 error" in out and "broken.jsonl:8" in out and "no_assistant_message" in out
        assert "tokens per example" in out and "estimated training cost" in out

    def test_a_valid_dataset_prints_statistics_and_cost_and_exits_0(
            self, capsys: pytest.CaptureFixture[str]) -> None:
        code, out, _ = tunectl(capsys, "dataset", "validate",
                               str(EXAMPLES / "support-train.jsonl"), *OPENAI, "--epochs", "3")

        assert code == 0
        assert "valid" in out and "3 (hyperparameters.n_epochs)" in out
        assert "at $3.00 per 1M tokens" in out

    def test_json_output_is_the_whole_report(self, capsys: pytest.CaptureFixture[str]) -> None:
        code, out, _ = tunectl(capsys, "dataset", "validate", str(GOLDEN / "traps.jsonl"),
                               *OPENAI, "--json", "--max-errors", "3")
        report = json.loads(out)

        assert code == 1
        assert report["error_count"] == 12 and len(report["errors"]) == 4  # 3 + file-level
        assert report["errors"][0] == {"severity": "error", "code": "nan_or_infinity",
                                       "line": 2, "message": report["errors"][0]["message"]}
        assert report["codes"]["nan_or_infinity"] == 2
        assert report["tokens"]["encoding"] == "o200k_base"
        assert report["rules"]["min_examples"] == 10

    def test_no_tokens_skips_counting(self, capsys: pytest.CaptureFixture[str]) -> None:
        code, out, _ = tunectl(capsys, "dataset", "validate",
                               str(GOLDEN / "vertex-gemini-good.jsonl"), "--provider",
                               "vertex", "--model", "gemini-2.5-flash", "--no-tokens", "--json")

        report = json.loads(out)
        assert code == 0 and report["tokens"] is None and report["billed_tokens"] is None

    def test_the_data_dir_price_table_is_used(self, capsys: pytest.CaptureFixture[str],
                                              tmp_path: Path) -> None:
        (tmp_path / "data").mkdir()
        (tmp_path / "data" / "prices.yaml").write_text(
            "dashscope:\n  source: our quote\n  models:\n    - {match: 'qwen3-*', "
            "usd_per_million: 2}\n")

        code, out, _ = tunectl(capsys, "dataset", "validate",
                               str(GOLDEN / "dashscope-chat-good.jsonl"), "--provider",
                               "dashscope", "--model", "qwen3-8b", "--json")

        report = json.loads(out)
        assert code == 0 and report["cost"]["usd_per_million"] == 2.0
        assert "our quote" in report["cost"]["source"]

    @pytest.mark.parametrize(("args", "message"), [
        pytest.param(("nope.jsonl", *OPENAI), "nope.jsonl: no such file", id="missing file"),
        pytest.param((str(GOLDEN / "traps.jsonl"), "--provider", "x", "--model", "m"),
                     "unknown provider 'x'", id="unknown provider"),
        pytest.param((str(GOLDEN / "traps.jsonl"), *OPENAI, "--method", "rlhf"),
                     "unknown method 'rlhf'", id="unknown method"),
    ])
    def test_usage_errors_are_one_line_with_status_2(
            self, capsys: pytest.CaptureFixture[str], args: tuple[str, ...],
            message: str) -> None:
        code, _, err = tunectl(capsys, "dataset", "validate", *args)

        assert code == 2 and err.startswith("error: ") and message in err
        assert err.count("\n") == 1


class TestConvert:
    def test_convert_writes_beside_the_input_and_reports(
            self, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
        source = tmp_path / "chat.jsonl"
        source.write_bytes((GOLDEN / "openai-chat-good.jsonl").read_bytes())

        code, out, _ = tunectl(capsys, "dataset", "convert", str(source), "--to", "vertex")

        assert code == 0
        assert (tmp_path / "chat.vertex.jsonl").exists()
        assert "12 converted, 0 not converted" in " ".join(out.split())

    def test_lines_that_cannot_convert_exit_1_and_an_existing_output_needs_force(
            self, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
        out_path = tmp_path / "out.jsonl"
        args = ("dataset", "convert", str(GOLDEN / "openai-chat-good.jsonl"), "--to",
                "dashscope", "-o", str(out_path), "--json")

        code, out, _ = tunectl(capsys, *args)
        again, _, err = tunectl(capsys, *args)
        forced, _, _ = tunectl(capsys, *args, "--force")

        assert code == 1 and json.loads(out)["skipped"] == 2
        assert again == 2 and "pass --force" in err
        assert forced == 1
