"""Content-addressed storage for submitted datasets.

``tunectl submit`` (and the API) copy each dataset here under its SHA-256, so a job never
depends on the user's file staying put or unchanged, and equal datasets are stored (and
uploaded) once. The store is a local directory by default; with ``TUNECTL_BLOB_URL`` it is
an object store reached through fsspec (``s3://…``, ``gs://…``) that every machine shares,
and the local directory becomes a cache of it. Either way a blob is whole or absent: local
writes go to a temporary file that is renamed into place, object stores write an object
whole, and a blob read from an object store is checked against its hash before use.
"""

from __future__ import annotations

import hashlib
import os
import stat
import tempfile
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, TypeVar

from orchestrator.errors import BlobStoreError, DatasetError, one_line

if TYPE_CHECKING:
    from orchestrator.config import Settings

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


def is_sha256(value: str) -> bool:
    """Whether ``value`` is a lower-case hex SHA-256 digest."""
    return len(value) == 64 and all(c in "0123456789abcdef" for c in value)


class BlobStore:
    """Blobs named by their SHA-256: a local directory, or the local cache of an object
    store at ``url`` (any fsspec URL; ``storage_options`` go to its filesystem)."""

    def __init__(self, root: Path, url: str = "",
                 storage_options: Mapping[str, Any] | None = None) -> None:
        self.root, self.url = root, url.rstrip("/")
        self._options = dict(storage_options or {})
        self._fs: Any = None
        self._base = ""

    @classmethod
    def from_settings(cls, settings: Settings) -> BlobStore:
        """The store the settings name (``blob_dir``, ``blob_url``, ``blob_storage_options``)."""
        return cls(settings.blob_dir, settings.blob_url, settings.blob_storage_options)

    def path(self, sha256: str) -> Path:
        """Where the blob with this hash lives (or is cached) locally."""
        if not is_sha256(sha256):
            raise ValueError(f"not a sha256 hex digest: {sha256!r}")
        return self.root / sha256[:2] / sha256

    def put_file(self, source: Path) -> str:
        """Copy ``source`` in (hashing while copying); return its SHA-256."""
        try:
            src = source.open("rb")
        except OSError as exc:
            raise DatasetError(f"{source}: cannot read the dataset ({exc.strerror})") from exc
        with src:
            if not stat.S_ISREG(os.fstat(src.fileno()).st_mode):
                raise DatasetError(f"{source}: not a regular file; give the path of a "
                                   "dataset file")
            return self.put_stream(src, str(source))

    def put_stream(self, src: BinaryIO, label: str, *, limit: int = MAX_BLOB_BYTES) -> str:
        """Store everything ``src`` yields, at most ``limit`` bytes (DatasetError naming
        ``label`` beyond that); return its SHA-256."""
        self.root.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".incoming-")
        try:
            with os.fdopen(fd, "wb") as out:
                size = 0
                while chunk := src.read(_CHUNK):
                    size += len(chunk)
                    if size > limit:
                        raise DatasetError(f"{label}: larger than {_size(limit)}; "
                                           + ("no provider accepts a dataset this big"
                                              if limit == MAX_BLOB_BYTES else
                                              "upload a smaller dataset"))
                    digest.update(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            sha = digest.hexdigest()
            final = self.path(sha)
            final.parent.mkdir(exist_ok=True)
            os.replace(tmp, final)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self._publish(sha, final)
        return sha

    def exists(self, sha256: str) -> bool:
        """Whether the blob is stored (locally, or in the object store)."""
        if self.path(sha256).is_file():
            return True
        remote = self._remote()
        if remote is None:
            return False
        try:
            return bool(remote[0].exists(self._key(sha256)))
        except Exception as exc:
            raise BlobStoreError(f"cannot reach {self.url}: {one_line(exc)}") from exc

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
        finally:
            scratch.unlink(missing_ok=True)
        self._publish(sha, final)
        return sha, result

    def _publish(self, sha: str, local: Path) -> None:
        """Copy a blob just stored locally to the object store, if there is one."""
        remote = self._remote()
        if remote is None:
            return
        fs, key = remote[0], self._key(sha)
        try:
            if not fs.exists(key):
                fs.put_file(str(local), key)
        except Exception as exc:
            raise BlobStoreError(f"cannot store dataset {sha} at {self.url}: "
                                 f"{one_line(exc)}") from exc

    def open_path(self, sha256: str) -> Path:
        """The local path of a stored blob (fetched from the object store into the cache
        first, if need be); raises DatasetError if it is gone."""
        path = self.path(sha256)
        if path.is_file():
            return path
        if not self.exists(sha256):
            where = self.url or str(self.root)
            raise DatasetError(f"dataset blob {sha256} is missing from {where}; "
                               "resubmit the job (the blob store was cleaned or not shared)")
        self._fetch(sha256, path)
        return path

    def _fetch(self, sha256: str, path: Path) -> None:
        fs = self._remote_fs()
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".fetching-")
        os.close(fd)
        try:
            try:
                fs.get_file(self._key(sha256), tmp)
            except Exception as exc:
                raise BlobStoreError(f"cannot fetch dataset {sha256} from {self.url}: "
                                     f"{one_line(exc)}") from exc
            if sha256_file(Path(tmp)) != sha256:
                raise BlobStoreError(f"dataset {sha256} at {self.url} does not match its "
                                     "hash; the object was changed or truncated")
            os.replace(tmp, path)
        finally:
            Path(tmp).unlink(missing_ok=True)

    def _remote(self) -> tuple[Any, str] | None:
        if not self.url:
            return None
        if self._fs is None:
            import fsspec

            try:
                self._fs, self._base = fsspec.core.url_to_fs(self.url, **self._options)
            except (ImportError, ValueError) as exc:
                raise BlobStoreError(f"TUNECTL_BLOB_URL={self.url}: {one_line(exc)}") from exc
        return self._fs, self._base

    def _remote_fs(self) -> Any:
        remote = self._remote()
        assert remote is not None
        return remote[0]

    def _key(self, sha256: str) -> str:
        return f"{self._base.rstrip('/')}/{sha256[:2]}/{sha256}"


def _size(n: int) -> str:
    return f"{n >> 30} GiB" if n >= 1 << 30 else f"{n >> 20} MiB" if n >= 1 << 20 \
        else f"{n} bytes"

