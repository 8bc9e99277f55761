"""Local paths as a storage backend: atomic writes, ``flock``-guarded conditional writes."""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
from pathlib import Path

from kftune.errors import DataError
from kftune.storage.atomic import atomic_file
from kftune.storage.backend import CHUNK, Backend, ObjectInfo, PreconditionFailed
from kftune.storage.checksums import FileDigest, sha256_of


class LocalBackend(Backend):
    """Files under ``/``; keys are absolute paths without the leading slash.

    Writes go through a temporary name and a rename; conditional writes hold an exclusive
    ``flock`` on the target's directory, so they are enforced between processes on one host
    (and on file systems that honour ``flock``, e.g. most NFS v4 mounts).
    """

    scheme = "file"
    bucket = ""

    def __init__(self, root: str | os.PathLike[str] = "/"):
        #: Directories emptied by :meth:`delete` are removed up to (not including) this one.
        self.root = Path(root)

    def path(self, key: str) -> Path:
        return Path("/" + key.strip("/"))

    def check(self, prefix: str = "") -> None:
        return None

    def list(self, prefix: str) -> list[ObjectInfo]:
        base = self.path(prefix) if prefix.endswith("/") else self.path(prefix).parent
        if not base.is_dir():
            return []
        found = []
        for root, dirs, files in os.walk(base):
            dirs[:] = [d for d in dirs if ".partial-" not in d]
            for name in files:
                full = Path(root) / name
                key = str(full).lstrip("/")
                if key.startswith(prefix.lstrip("/")) and ".partial-" not in name:
                    found.append(self._info(full, key))
        return sorted(found, key=lambda o: o.key)

    def _info(self, path: Path, key: str) -> ObjectInfo:
        st = path.stat()
        return ObjectInfo(key, st.st_size, f"{st.st_mtime_ns}-{st.st_size}", None, st.st_mtime)

    def stat(self, key: str) -> ObjectInfo | None:
        path = self.path(key)
        return self._info(path, key.strip("/")) if path.is_file() else None

    def download(self, key: str, path: Path) -> int:
        source = self.path(key)
        if not source.is_file():
            raise DataError(f"no such file: {source}")
        with open(source, "rb") as src, atomic_file(Path(path)) as dst:
            shutil.copyfileobj(src, dst, CHUNK)
        return Path(path).stat().st_size

    def upload(self, path: Path, key: str) -> ObjectInfo:
        target = self.path(key)
        with open(path, "rb") as src, atomic_file(target) as dst:
            shutil.copyfileobj(src, dst, CHUNK)
        return self._info(target, key)

    def read_bytes(self, key: str) -> bytes | None:
        try:
            return self.path(key).read_bytes()
        except (FileNotFoundError, IsADirectoryError):
            return None

    @contextlib.contextmanager
    def _locked(self, directory: Path):
        directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(directory, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def write_bytes(self, key: str, data: bytes, *, if_absent: bool = False, if_match: str | None = None) -> None:
        target = self.path(key)
        with self._locked(target.parent):
            current = self.stat(key)
            if if_absent and current is not None:
                raise PreconditionFailed(f"{target}: already exists")
            if if_match is not None and (current is None or current.token != if_match):
                raise PreconditionFailed(f"{target}: changed since it was read")
            with atomic_file(target) as f:
                f.write(data)

    def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path(key).unlink()
        # Drop directories left empty below the root (a removed version leaves no empty v<N>/).
        parent = self.path(key).parent
        with contextlib.suppress(OSError):
            while parent != self.root and self.root in parent.parents and not any(parent.iterdir()):
                parent.rmdir()
                parent = parent.parent

    def verify(self, key: str, digest: FileDigest) -> bool:
        path = self.path(key)
        return path.is_file() and path.stat().st_size == digest.size and sha256_of(path) == digest.sha256
