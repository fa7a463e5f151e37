"""DashScope image zips: every referenced image present and decodable, and hostile
archives (traversal, symlinks, bombs, huge directories) refused before decompression."""

from __future__ import annotations

import io
import json
import struct
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from orchestrator.datasets import validate_file

DASHSCOPE = {"provider": "dashscope", "model": "qwen2.5-vl-7b-instruct"}


def png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (0, 128, 255)).save(buffer, "PNG")
    return buffer.getvalue()


def record(*images: str) -> str:
    return json.dumps({"messages": [
        {"role": "user", "content": [{"text": "what is this?"}] + [{"image": i} for i in images]},
        {"role": "assistant", "content": [{"text": "a square"}]}]})


def make_zip(path: Path, members: dict[str, bytes], *,
             method: int = zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", method) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def errors(path: Path) -> list[tuple[int | None, str, str]]:
    report = validate_file(path, **DASHSCOPE)
    return [(e.line, e.code, e.message) for e in report.log.errors]


class TestImageReferences:
    def test_a_complete_zip_is_valid(self, tmp_path: Path) -> None:
        path = make_zip(tmp_path / "ok.zip", {
            "set/train.jsonl": (record("a.png") + "\n" + record("a.png", "b.png") + "\n").encode(),
            "set/a.png": png(), "set/b.png": png(), "__MACOSX/set/._train.jsonl": b"junk"})

        report = validate_file(path, **DASHSCOPE)

        assert report.ok, report.error_line()
        assert report.format == "dashscope-image" and report.examples == 2

    def test_a_missing_image_is_reported_on_the_line_that_refers_to_it(
            self, tmp_path: Path) -> None:
        path = make_zip(tmp_path / "z.zip", {
            "train.jsonl": (record("a.png") + "\n" + record("gone.png") + "\n").encode(),
            "a.png": png()})

        (line, code, message), = errors(path)

        assert (line, code) == (2, "bad_image") and "'gone.png' is not in the zip" in message

    @pytest.mark.parametrize("reference", ["../a.png", "/etc/passwd", "a\\b.png",
                                           "https://evil.example/a.png"])
    def test_a_reference_that_escapes_the_zip_is_refused(self, tmp_path: Path,
                                                         reference: str) -> None:
        path = make_zip(tmp_path / "z.zip", {"train.jsonl": record(reference).encode(),
                                              "a.png": png()})

        (line, code, message), = errors(path)

        assert (line, code) == (1, "bad_image") and "plain relative file name" in message

    def test_a_corrupt_image_is_unreadable(self, tmp_path: Path) -> None:
        path = make_zip(tmp_path / "z.zip", {"train.jsonl": record("a.png").encode(),
                                              "a.png": png()[:40]})

        (line, code, message), = errors(path)

        assert (line, code) == (1, "bad_image") and "cannot be decoded" in message

    def test_an_image_is_decoded_once_however_often_it_is_used(self, tmp_path: Path) -> None:
        path = make_zip(tmp_path / "z.zip", {
            "train.jsonl": "\n".join([record("a.png")] * 50).encode(), "a.png": png()[:40]})

        report = validate_file(path, **DASHSCOPE)

        assert report.log.codes["bad_image"] == 50


class TestHostileArchives:
    def test_a_member_path_with_dot_dot_is_refused(self, tmp_path: Path) -> None:
        path = make_zip(tmp_path / "z.zip", {"train.jsonl": record("a.png").encode(),
                                              "../../etc/cron.d/x": b"boom"})

        (line, code, message), = errors(path)

        assert (line, code) == (None, "zip_unsafe") and "unsafe path" in message

    def test_a_symlink_member_is_refused(self, tmp_path: Path) -> None:
        path = tmp_path / "z.zip"
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("train.jsonl", record("a.png"))
            link = zipfile.ZipInfo("a.png")
            link.external_attr = (0o120777 << 16)
            archive.writestr(link, "/etc/passwd")

        assert errors(path)[0][1:] == ("zip_unsafe", errors(path)[0][2])
        assert "symbolic link" in errors(path)[0][2]

    def test_a_zip_bomb_is_refused_before_decompressing(self, tmp_path: Path) -> None:
        path = make_zip(tmp_path / "z.zip", {"train.jsonl": record("a.png").encode(),
                                              "a.png": b"\0" * (50 << 20)})

        (_, code, message), = errors(path)

        assert code == "zip_unsafe" and "zip bomb" in message

    def test_a_directory_declaring_too_many_entries_is_refused_unread(
            self, tmp_path: Path) -> None:
        path = make_zip(tmp_path / "z.zip", {"train.jsonl": record("a.png").encode()})
        data = bytearray(path.read_bytes())
        at = data.rfind(b"PK\x05\x06")
        struct.pack_into("<I", data, at + 12, 0x7FFFFFFF)  # central directory size: 2 GiB
        path.write_bytes(bytes(data))

        (_, code, message), = errors(path)

        assert code == "zip_unsafe" and "2,147,483,647-byte directory" in message

    def test_two_jsonl_files_are_ambiguous(self, tmp_path: Path) -> None:
        path = make_zip(tmp_path / "z.zip", {"a.jsonl": b"", "b.jsonl": b""})

        assert "keep exactly one" in errors(path)[0][2]

    def test_a_zip_for_another_provider_is_refused(self, tmp_path: Path) -> None:
        path = make_zip(tmp_path / "z.zip", {"train.jsonl": record("a.png").encode()})

        report = validate_file(path, provider="openai", model="gpt-4o-mini-2024-07-18")

        assert report.log.errors[0].code == "unexpected_zip"
