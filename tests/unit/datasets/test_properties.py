"""Properties: the validator never raises on arbitrary bytes and every error has a line
(or is a whole-file problem); generated valid datasets of every format validate cleanly."""

from __future__ import annotations

import io
import json
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from orchestrator.datasets import validate_file
from orchestrator.datasets.issues import FILE_CODES
from tests.unit.datasets import strategies as gen

TARGETS = [("openai", "gpt-4o-mini-2024-07-18"), ("dashscope", "qwen3-8b"),
           ("vertex", "gemini-2.5-flash")]
CLEAN = {"few_examples"}
SETTINGS = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


def write(data: bytes) -> Path:
    handle = tempfile.NamedTemporaryFile(suffix=".jsonl", delete=False)  # noqa: SIM115
    with handle:
        handle.write(data)
    return Path(handle.name)


def jsonl(records: list[dict[str, Any]]) -> bytes:
    # ensure_ascii: a raw U+2028 in a line is (rightly) an error
    return "".join(json.dumps(r) + "\n" for r in records).encode()


# Lines of JSON-ish fragments find the parser's corners faster than uniform bytes.
fragments = st.lists(st.sampled_from([
    b"{", b"}", b"[", b"]", b'"messages"', b":", b",", b'"role"', b'"user"', b'"assistant"',
    b'"content"', b'"x"', b"NaN", b"1e999", b"-0", b"null", b"true", b"\\ud800", b"\xff",
    b"\xef\xbb\xbf", b"\xe2\x80\xa8", b"\n", b"\r\n", b" ", b"\"", b"\\", b'"input"',
    b'"contents"', b'"parts"', b'"text"', b'"model"', b'"chosen"', b"PK\x03\x04"]), max_size=60)


class TestArbitraryInput:
    @SETTINGS
    @given(data=st.one_of(st.binary(max_size=2000), fragments.map(b"".join)),
           target=st.sampled_from(TARGETS), method=st.sampled_from([None, "sft", "dpo"]))
    def test_never_raises_and_every_error_has_a_line(self, data: bytes,
                                                     target: tuple[str, str],
                                                     method: str | None) -> None:
        path = write(data)
        try:
            report = validate_file(path, provider=target[0], model=target[1], method=method)
        finally:
            path.unlink()

        for issue in report.log.errors + report.log.warnings:
            if issue.line is None:
                assert issue.code in FILE_CODES, issue
            else:
                assert 1 <= issue.line <= report.lines, issue
        assert report.ok == (report.log.error_count == 0)


def _images() -> dict[str, bytes]:
    out = {}
    for name, fmt in (("a.png", "PNG"), ("b.jpg", "JPEG")):
        buffer = io.BytesIO()
        Image.new("RGB", (4, 3), (200, 10, 10)).save(buffer, fmt)
        out[name] = buffer.getvalue()
    return out


IMAGES = _images()


class TestGeneratedValidDatasets:
    @SETTINGS
    @pytest.mark.parametrize(("strategy", "provider", "model", "method", "minimum"), [
        pytest.param(gen.openai_chat(), "openai", "gpt-4o-mini-2024-07-18", "sft", 10,
                     id="openai chat"),
        pytest.param(gen.openai_dpo(), "openai", "gpt-4o-mini-2024-07-18", "dpo", 10,
                     id="openai dpo"),
        pytest.param(gen.dashscope_chat(), "dashscope", "qwen2.5-7b-instruct", "sft", 1,
                     id="dashscope chatml"),
        pytest.param(gen.dashscope_dpo(), "dashscope", "qwen3-8b", "dpo", 1,
                     id="dashscope dpo"),
        pytest.param(gen.vertex_gemini(), "vertex", "gemini-2.5-flash", "sft", 1,
                     id="vertex gemini"),
        pytest.param(gen.vertex_preference(), "vertex", "gemini-2.5-flash", "dpo", 1,
                     id="vertex preference"),
    ])
    @given(data=st.data())
    def test_validates_cleanly(self, data: st.DataObject, strategy: Any, provider: str,
                               model: str, method: str, minimum: int) -> None:
        records = data.draw(st.lists(strategy, min_size=minimum, max_size=minimum + 5))
        path = write(jsonl(records))
        try:
            report = validate_file(path, provider=provider, model=model, method=method)
        finally:
            path.unlink()

        assert report.ok, report.error_line()
        assert set(report.log.codes) <= CLEAN, report.log.warnings
        assert report.examples == len(records)
        assert report.tokens is not None and report.tokens.count == len(records)

    @SETTINGS
    @given(records=st.lists(gen.dashscope_image(tuple(IMAGES)), min_size=1, max_size=5))
    def test_a_generated_image_zip_validates_cleanly(self, records: list[dict[str, Any]]) -> None:
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            archive.writestr("data/train.jsonl", jsonl(records))
            for name, content in IMAGES.items():
                archive.writestr(f"data/{name}", content)
        path = write(buffer.getvalue())
        try:
            report = validate_file(path, provider="dashscope", model="qwen2.5-vl-7b-instruct")
        finally:
            path.unlink()

        assert report.ok, report.error_line()
        assert report.format == "dashscope-image" and report.examples == len(records)
