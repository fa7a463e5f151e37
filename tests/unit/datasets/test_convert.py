"""Conversion: round trips keep the content, every loss and refusal is reported on its
line, and what is written validates for the target provider."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orchestrator.datasets import validate_file
from orchestrator.datasets.convert import convert_file
from orchestrator.errors import UserError
from tests.unit.datasets import strategies as gen

GOLDEN = Path(__file__).parent / "golden"
SETTINGS = settings(max_examples=40, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow,
                                           HealthCheck.function_scoped_fixture])
MODELS = {"openai": "gpt-4o-mini-2024-07-18", "dashscope": "qwen3-8b",
          "vertex": "gemini-2.5-flash"}


def write(directory: Path, name: str, records: list[dict[str, Any]]) -> Path:
    path = directory / name
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def read(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_bytes().split(b"\n") if line]


def texts(record: Any) -> list[str]:
    """Every piece of text in a record of any format, in order."""
    if isinstance(record, dict):
        out = []
        for key, value in record.items():
            if key in ("content", "text") and isinstance(value, str):
                out.append(value)
            else:
                out.extend(texts(value))
        return out
    if isinstance(record, list):
        return [t for item in record for t in texts(item)]
    return []


def plain(record: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI chat record without what DashScope cannot hold (names, weights)."""
    return {"messages": [{"role": m["role"], "content": m["content"]}
                         for m in record["messages"]]}


class TestRoundTrips:
    @SETTINGS
    @given(records=st.lists(gen.openai_chat(tools=False, extras=False), min_size=1,
                            max_size=5))
    def test_openai_to_dashscope_to_openai_is_the_identity(
            self, records: list[dict[str, Any]]) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            directory = Path(tmp)
            source = write(directory, "a.jsonl", records)
            there = convert_file(source, "dashscope", directory / "b.jsonl")
            back = convert_file(directory / "b.jsonl", "openai", directory / "c.jsonl")

            assert there.converted == back.converted == len(records)
            assert read(directory / "c.jsonl") == [plain(r) for r in records]

    @SETTINGS
    @given(records=st.lists(gen.openai_chat(), min_size=1, max_size=5))
    def test_openai_to_gemini_keeps_the_content_and_validates(
            self, records: list[dict[str, Any]]) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            directory = Path(tmp)
            source = write(directory, "a.jsonl", records)
            report = convert_file(source, "vertex", directory / "b.jsonl")
            back = convert_file(directory / "b.jsonl", "openai", directory / "c.jsonl")
            converted = read(directory / "b.jsonl")
            checked = validate_file(directory / "b.jsonl", provider="vertex",
                                    model="gemini-2.5-flash")

            assert report.converted == len(records)
            assert [texts(c) for c in converted] == [texts(r) for r in records]
            assert [texts(c) for c in read(directory / "c.jsonl")] == \
                [texts(r) for r in records]
            assert back.converted == len(records)
            assert checked.ok, checked.error_line()

    @pytest.mark.parametrize(("name", "target"), [
        ("openai-dpo", "dashscope"), ("openai-dpo", "vertex"), ("dashscope-dpo", "openai"),
        ("dashscope-dpo", "vertex"), ("vertex-preference", "openai"),
        ("vertex-preference", "dashscope"), ("dashscope-chat", "vertex"),
        ("openai-chat", "vertex")])
    def test_golden_files_convert_whole_and_validate(self, tmp_path: Path, name: str,
                                                     target: str) -> None:
        out = tmp_path / "out.jsonl"
        report = convert_file(GOLDEN / f"{name}-good.jsonl", target, out)
        checked = validate_file(out, provider=target, model=MODELS[target])

        assert report.skipped == 0 and report.converted == report.lines
        # the 3-line fixtures are under OpenAI's minimum of 10; nothing else may be wrong
        assert {e.code for e in checked.log.errors} <= {"too_few_examples"}, \
            checked.error_line()
        assert [texts(r) for r in read(out)] == [
            texts(r) for r in read(GOLDEN / f"{name}-good.jsonl")]

    def test_dpo_preference_maps_to_scores(self, tmp_path: Path) -> None:
        convert_file(GOLDEN / "openai-dpo-good.jsonl", "vertex", tmp_path / "v.jsonl")

        first = read(tmp_path / "v.jsonl")[0]

        assert first["system_instruction"] == {"parts": [{"text": "Be kind."}]}
        assert first["contents"] == [{"role": "user", "parts": [{"text": "Q0"}]}]
        assert [(c["score"], c["completion"]["parts"][0]["text"])
                for c in first["completions"]] == [(1, "Helpful 0"), (0, "Rude 0")]


class TestWhatCannotConvert:
    def test_tool_messages_for_dashscope_are_skipped_and_reported(self, tmp_path: Path) -> None:
        out = tmp_path / "out.jsonl"
        report = convert_file(GOLDEN / "openai-chat-good.jsonl", "dashscope", out)

        assert (report.converted, report.skipped) == (10, 2)
        assert [(e.line, e.code) for e in report.log.errors] == [
            (11, "not_convertible"), (12, "not_convertible")]
        assert "no tool messages" in report.log.errors[0].message
        assert len(read(out)) == 10

    def test_losses_are_warnings_on_their_line(self, tmp_path: Path) -> None:
        record = {"messages": [{"role": "user", "content": "q", "name": "ann"},
                               {"role": "assistant", "content": "a", "weight": 0},
                               {"role": "user", "content": "q2"},
                               {"role": "assistant", "content": "a2"}]}
        source = write(tmp_path, "a.jsonl", [record])

        report = convert_file(source, "vertex", tmp_path / "b.jsonl")

        assert report.converted == 1
        assert [(w.line, w.code) for w in report.log.warnings] == [(1, "lossy"), (1, "lossy")]
        assert "name dropped" in report.log.warnings[0].message
        assert "weight 0" in report.log.warnings[1].message

    def test_a_cloud_storage_file_cannot_go_to_openai(self, tmp_path: Path) -> None:
        report = convert_file(GOLDEN / "vertex-gemini-good.jsonl", "openai", tmp_path / "o.jsonl")

        assert (report.converted, report.skipped) == (3, 1)
        assert report.log.errors[0].line == 4
        assert "https URL only" in report.log.errors[0].message

    def test_an_inline_image_cannot_go_to_gemini(self, tmp_path: Path) -> None:
        record = {"messages": [{"role": "user", "content": [
            {"type": "text", "text": "what is it"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0K"}}]},
            {"role": "assistant", "content": "a cat"}]}
        source = write(tmp_path, "a.jsonl", [record])

        report = convert_file(source, "vertex", tmp_path / "b.jsonl")

        assert report.skipped == 1 and "Cloud Storage" in report.log.errors[0].message

    def test_an_invalid_source_line_is_reported_not_converted(self, tmp_path: Path) -> None:
        source = tmp_path / "a.jsonl"
        source.write_text('{"messages": [{"role": "user", "content": "q"}]}\nnot json\n')

        report = convert_file(source, "vertex", tmp_path / "b.jsonl")

        assert [(e.line, e.code) for e in report.log.errors] == [
            (1, "no_assistant_message"), (2, "invalid_json")]
        assert all(e.message.startswith("not converted: ") for e in report.log.errors)
        assert (tmp_path / "b.jsonl").read_text() == ""

    def test_a_zip_or_unknown_file_is_a_user_error(self, tmp_path: Path) -> None:
        zipped = tmp_path / "a.zip"
        zipped.write_bytes(b"PK\x03\x04rest")
        unknown = write(tmp_path, "u.jsonl", [{"prompt": "p", "completion": "c"}])

        with pytest.raises(UserError, match="is a zip"):
            convert_file(zipped, "openai", tmp_path / "o.jsonl")
        with pytest.raises(UserError, match="not a known dataset format"):
            convert_file(unknown, "openai", tmp_path / "o.jsonl")
        assert not (tmp_path / "o.jsonl").exists()
