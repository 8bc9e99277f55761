"""The interface every storage backend implements, and what it returns."""

from __future__ import annotations

import tempfile
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

from kftune.errors import KftuneError
from kftune.storage.checksums import FileDigest, sha256_of
from kftune.storage.uri import StorageUri

# Block size for streamed downloads and local copies.
CHUNK = 2**20


class PreconditionFailed(KftuneError):
    """A conditional write lost: the object exists (create-if-absent) or changed (replace-if-unchanged)."""


@dataclass(frozen=True)
class ObjectInfo:
    """One stored object. ``token`` identifies this version of it for conditional writes
    (S3 ETag, GCS generation, local mtime+size); ``checksum`` is what the server reports."""

    key: str
    size: int
    token: str | None = None
    checksum: str | None = None
    modified: float | None = None


class Backend(ABC):
    """Objects in one bucket (or under ``/`` for local paths), addressed by ``/``-separated keys."""

    scheme: str
    bucket: str
    #: Whether ``write_bytes(if_absent=..., if_match=...)`` is enforced by the store itself.
    conditional_writes: bool = True

    def uri(self, key: str) -> str:
        return str(StorageUri(self.scheme, self.bucket, key.strip("/")))

    @abstractmethod
    def check(self, prefix: str = "") -> None:
        """Fail with a clear error unless the bucket exists and is readable with these credentials."""

    @abstractmethod
    def list(self, prefix: str) -> list[ObjectInfo]:
        """Every object whose key starts with ``prefix`` (recursive), sorted by key."""

    @abstractmethod
    def stat(self, key: str) -> ObjectInfo | None:
        """The object at ``key``, or None."""

    def exists(self, key: str) -> bool:
        return self.stat(key) is not None

    @abstractmethod
    def download(self, key: str, path: Path) -> int:
        """Write the object to ``path`` (atomically: a temporary name, then a rename); return its size."""

    @abstractmethod
    def upload(self, path: Path, key: str) -> ObjectInfo:
        """Store the local file ``path`` at ``key``."""

    @abstractmethod
    def read_bytes(self, key: str) -> bytes | None:
        """A small object's content, or None if there is none."""

    def read_with_token(self, key: str) -> tuple[bytes, str] | None:
        """A small object's content and version token (for a later ``if_match``), or None."""
        info = self.stat(key)
        if info is None:
            return None
        data = self.read_bytes(key)
        return None if data is None else (data, info.token or "")

    @abstractmethod
    def write_bytes(self, key: str, data: bytes, *, if_absent: bool = False, if_match: str | None = None) -> None:
        """Store a small object. ``if_absent``: only if no object is there; ``if_match``: only if
        the object still has that version token. A lost condition raises :class:`PreconditionFailed`."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove the object (no error if it is already gone)."""

    def verify(self, key: str, digest: FileDigest) -> bool:
        """Whether the object at ``key`` has the local file's size and content.

        The size always comes from the store; the content is compared through the checksum the
        store computed itself where there is one to compare, else the object is read back and
        its sha256 compared.
        """
        info = self.stat(key)
        if info is None or info.size != digest.size:
            return False
        if self.checksum_matches(info, digest):
            return True
        with tempfile.TemporaryDirectory(prefix="kftune-verify-") as tmp:
            copy = Path(tmp) / "object"
            self.download(key, copy)
            return sha256_of(copy) == digest.sha256

    def checksum_matches(self, info: ObjectInfo, digest: FileDigest) -> bool:
        """Whether the checksum the store reports for ``info`` proves it holds ``digest``'s content."""
        return False
