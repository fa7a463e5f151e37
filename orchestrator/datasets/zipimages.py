"""DashScope image-SFT zips, opened as untrusted input.

Before anything is decompressed the archive's directory is checked: entry count and
central-directory size (read from the end record, so a zip that declares millions of
entries is refused before they are loaded), unsafe names (absolute, ``..``, backslashes,
NUL), symlinks, encryption, unusual compression, duplicate names, and zip-bomb ratios and
totals. Images are then read one at a time, CRC-checked and decoded with Pillow under a
pixel cap. The caps are tunectl's own (DashScope documents none besides 300 MB per file).
"""

from __future__ import annotations

import io
import posixpath
import stat
import struct
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from PIL import Image

MAX_MEMBERS = 100_000
MAX_DIRECTORY_BYTES = 64 << 20
MAX_TOTAL_BYTES = 4 << 30
MAX_RATIO = 200
MAX_IMAGE_BYTES = 20 << 20
MAX_IMAGE_PIXELS = 40_000_000
IMAGE_FORMATS = ("JPEG", "PNG", "WEBP", "BMP")
_SAFE_METHODS = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED)


class UnsafeZip(Exception):
    """The archive is refused; the message says why and how to fix it."""


@dataclass
class ImageZip:
    """An opened, checked image zip: its JSONL member and a readable-image check."""

    archive: zipfile.ZipFile
    jsonl_name: str
    names: frozenset[str]
    checked: dict[str, str | None] = field(default_factory=dict)

    @classmethod
    def open(cls, path: Path) -> ImageZip:
        """Open and check ``path``; raises UnsafeZip with the reason."""
        _check_directory(path)
        try:
            archive = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
            raise UnsafeZip(f"not a readable zip ({exc}); re-create it with a standard zip "
                            "tool") from None
        try:
            names, jsonl = _check_members(archive)
        except UnsafeZip:
            archive.close()
            raise
        return cls(archive, jsonl, names)

    def open_jsonl(self) -> IO[bytes]:
        """The JSONL member, as a stream decompressed as it is read."""
        return self.archive.open(self.jsonl_name)

    def resolve(self, reference: str) -> str | None:
        """The member an ``{"image": ...}`` reference names, or None if it is unsafe."""
        if (not reference or reference.startswith("/") or "\\" in reference
                or "\x00" in reference or "://" in reference
                or ".." in reference.split("/")):
            return None
        return posixpath.normpath(posixpath.join(posixpath.dirname(self.jsonl_name),
                                                 reference))

    def check_image(self, reference: str, max_bytes: int | None = None) -> str | None:
        """None if the referenced image is in the zip and decodes; else how to fix it."""
        name = self.resolve(reference)
        if name is None:
            return (f"image reference {reference[:80]!r} is not a plain relative file name; "
                    "name a file next to the JSONL (no '..', '/', '\\' or URLs)")
        if name in self.checked:
            return self.checked[name]
        problem = self._read(name, reference, max_bytes)
        self.checked[name] = problem
        return problem

    def _read(self, name: str, reference: str, max_bytes: int | None) -> str | None:
        if name not in self.names:
            return (f"image {reference[:80]!r} is not in the zip next to {self.jsonl_name}; "
                    "add it or fix the name")
        info = self.archive.getinfo(name)
        cap = min(max_bytes or MAX_IMAGE_BYTES, MAX_IMAGE_BYTES)
        if info.file_size > cap:
            return f"image {reference[:80]!r} is {info.file_size:,} bytes, over {cap:,}; shrink it"
        try:
            data = self.archive.read(name)  # verifies the CRC
        except Exception as exc:  # zlib, CRC and format errors all mean "unreadable"
            return f"image {reference[:80]!r} cannot be read from the zip ({exc}); re-add it"
        return _decode(data, reference)

    def close(self) -> None:
        """Close the archive."""
        self.archive.close()


def _decode(data: bytes, reference: str) -> str | None:
    label = repr(reference[:80])
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                if image.format not in IMAGE_FORMATS:
                    return (f"image {label} is {image.format or 'an unknown format'}; use "
                            f"{', '.join(IMAGE_FORMATS)}")
                width, height = image.size
                if width * height > MAX_IMAGE_PIXELS:
                    return (f"image {label} is {width}x{height}, over tunectl's "
                            f"{MAX_IMAGE_PIXELS:,}-pixel cap; downscale it")
                image.draft("RGB", (max(1, width // 8), max(1, height // 8)))
                image.load()
    except Exception as exc:  # Pillow raises many types for broken files
        return f"image {label} cannot be decoded ({type(exc).__name__}); re-export it"
    return None


def _check_directory(path: Path) -> None:
    """Read the end-of-central-directory record: refuse huge directories unread."""
    try:
        with path.open("rb") as f:
            f.seek(0, io.SEEK_END)
            size = f.tell()
            tail_start = max(0, size - (1 << 16) - 22)
            f.seek(tail_start)
            tail = f.read()
            at = tail.rfind(b"PK\x05\x06")
            if at < 0 or len(tail) < at + 22:
                raise UnsafeZip("not a zip file (no end-of-directory record); pack the JSONL "
                                "and images with a standard zip tool")
            entries, directory = struct.unpack_from("<xxxxxxxxxxHI", tail, at)
            if entries == 0xFFFF or directory == 0xFFFFFFFF:
                entries, directory = _zip64(f, tail, at, tail_start)
    except OSError as exc:
        raise UnsafeZip(f"cannot read the zip ({exc.strerror})") from None
    if entries > MAX_MEMBERS or directory > MAX_DIRECTORY_BYTES:
        raise UnsafeZip(f"the zip declares {entries:,} entries ({directory:,}-byte "
                        f"directory); tunectl takes at most {MAX_MEMBERS:,}")


def _zip64(f: IO[bytes], tail: bytes, at: int, tail_start: int) -> tuple[int, int]:
    locator = at - 20
    if locator < 0 or tail[locator:locator + 4] != b"PK\x06\x07":
        raise UnsafeZip("broken ZIP64 end record; re-create the zip")
    (offset,) = struct.unpack_from("<Q", tail, locator + 8)
    f.seek(offset)
    record = f.read(56)
    if len(record) < 56 or record[:4] != b"PK\x06\x06":
        raise UnsafeZip("broken ZIP64 end record; re-create the zip")
    entries, directory = struct.unpack_from("<QQ", record, 32)
    return int(entries), int(directory)


def _check_members(archive: zipfile.ZipFile) -> tuple[frozenset[str], str]:
    names: set[str] = set()
    jsonl: list[str] = []
    total = 0
    for info in archive.infolist():
        name = info.filename
        if (name.startswith("/") or "\\" in name or "\x00" in name or ":" in name.split("/")[0]
                or ".." in name.split("/")):
            raise UnsafeZip(f"member {name[:80]!r} has an unsafe path; use plain relative "
                            "names")
        if name in names:
            raise UnsafeZip(f"member {name[:80]!r} appears twice; keep one")
        names.add(name)
        if stat.S_ISLNK(info.external_attr >> 16):
            raise UnsafeZip(f"member {name[:80]!r} is a symbolic link; store the file itself")
        if info.flag_bits & 0x1:
            raise UnsafeZip(f"member {name[:80]!r} is encrypted; zip without a password")
        if info.compress_type not in _SAFE_METHODS:
            raise UnsafeZip(f"member {name[:80]!r} uses compression method "
                            f"{info.compress_type}; use stored or deflate")
        ratio = info.file_size // max(1, info.compress_size)
        if info.file_size > (1 << 20) and ratio > MAX_RATIO:
            raise UnsafeZip(f"member {name[:80]!r} expands {ratio:,} times (zip bomb?); "
                            f"tunectl refuses ratios over {MAX_RATIO}")
        total += info.file_size
        if total > MAX_TOTAL_BYTES:
            raise UnsafeZip(f"the zip expands to over {MAX_TOTAL_BYTES:,} bytes; split it")
        base = posixpath.basename(name)
        if (name.lower().endswith(".jsonl") and not info.is_dir()
                and not name.startswith("__MACOSX/") and not base.startswith("._")):
            jsonl.append(name)
    if not jsonl:
        raise UnsafeZip("the zip holds no .jsonl file; put the training JSONL next to the "
                        "images")
    if len(jsonl) > 1:
        raise UnsafeZip(f"the zip holds {len(jsonl)} .jsonl files ({', '.join(jsonl[:3])}); "
                        "keep exactly one")
    return frozenset(names), jsonl[0]
