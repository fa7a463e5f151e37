"""Content-addressed storage for submitted datasets.

``tunectl submit`` copies each dataset here under its SHA-256, so a job never depends on
the user's file staying put or unchanged, and equal datasets are stored (and uploaded) once.
Writes go to a temporary file that is renamed into place: a blob is whole or absent.
"""

from __future__ import annotations

import hashlib
import os
import stat
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from orchestrator.errors import DatasetError

_CHUNK = 1 << 20
#: No provider takes a dataset anywhere near this big (the largest limit is 1 GB).
MAX_BLOB_BYTES = 4 << 30
T = TypeVar("T")


def sha256_file(path: Path) -> str:
    """The hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


class BlobStore:
    """A directory of blobs named by their SHA-256."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, sha256: str) -> Path:
        """Where the blob with this hash lives."""
        if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
            raise ValueError(f"not a sha256 hex digest: {sha256!r}")
        return self.root / sha256[:2] / sha256

    def put_file(self, source: Path) -> str:
        """Copy ``source`` in (hashing while copying); return its SHA-256."""
        self.root.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        try:
            src = source.open("rb")
        except OSError as exc:
            raise DatasetError(f"{source}: cannot read the dataset ({exc.strerror})") from exc
        if not stat.S_ISREG(os.fstat(src.fileno()).st_mode):
            src.close()
            raise DatasetError(f"{source}: not a regular file; give the path of a dataset file")
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".incoming-")
        try:
            with src, os.fdopen(fd, "wb") as out:
                size = 0
                while chunk := src.read(_CHUNK):
                    size += len(chunk)
                    if size > MAX_BLOB_BYTES:
                        raise DatasetError(f"{source}: larger than {MAX_BLOB_BYTES >> 30} GiB; "
                                           "no provider accepts a dataset this big")
                    digest.update(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            sha = digest.hexdigest()
            final = self.path(sha)
            final.parent.mkdir(exist_ok=True)
            os.replace(tmp, final)
            return sha
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def put_written(self, write: Callable[[Path], T]) -> tuple[str, T]:
        """Store the file ``write(path)`` writes (a converted dataset); return its SHA-256
        and what ``write`` returned. Nothing is left behind if ``write`` raises."""
        self.root.mkdir(parents=True, exist_ok=True)
        scratch = self.root / f".written-{uuid.uuid4().hex}"
        try:
            result = write(scratch)
            sha = sha256_file(scratch)
            final = self.path(sha)
            final.parent.mkdir(exist_ok=True)
            os.replace(scratch, final)
            return sha, result
        finally:
            scratch.unlink(missing_ok=True)

    def open_path(self, sha256: str) -> Path:
        """The path of a stored blob; raises DatasetError if it is gone."""
        path = self.path(sha256)
        if not path.is_file():
            raise DatasetError(f"dataset blob {sha256} is missing from {self.root}; "
                               "resubmit the job (the blob store was cleaned or not shared)")
        return path
