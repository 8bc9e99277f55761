"""Opening a URI on its backend, and :func:`fetch`: bring objects onto local disk for reading."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from kftune.errors import DataError
from kftune.storage.backend import Backend
from kftune.storage.gcs import GcsBackend
from kftune.storage.local import LocalBackend
from kftune.storage.retry import RetryPolicy
from kftune.storage.s3 import S3Backend, S3Settings
from kftune.storage.uri import StorageUri, parse_uri

log = logging.getLogger("kftune.storage")


def format_bytes(n: int) -> str:
    """``n`` bytes for a log line: ``512 B``, ``1.5 MiB``."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


@dataclass
class Location:
    """A URI with the backend that serves it; ``key(...)`` gives the object keys below it."""

    uri: StorageUri
    backend: Backend

    def key(self, *parts: str) -> str:
        return self.uri.child(*parts).prefix

    def child_uri(self, *parts: str) -> str:
        return str(self.uri.child(*parts))


def open_backend(uri: StorageUri, retry: RetryPolicy | None = None) -> Backend:
    """The backend for ``uri``'s bucket, configured from the environment."""
    if uri.scheme == "s3":
        return S3Backend(uri.bucket, S3Settings.from_env(), retry)
    if uri.scheme == "gs":
        return GcsBackend(uri.bucket, retry)
    return LocalBackend(root=uri.path)


def open_location(uri: str | StorageUri, retry: RetryPolicy | None = None, backend: Backend | None = None) -> Location:
    """``uri`` parsed, with ``backend`` or the one the environment configures for it."""
    parsed = uri if isinstance(uri, StorageUri) else parse_uri(uri)
    return Location(parsed, backend or open_backend(parsed, retry))


def _safe_relative(key: str, prefix: str, shown: str) -> Path:
    """The local relative path for ``key`` below ``prefix``; refuses keys that would escape it."""
    rel = key[len(prefix) :].lstrip("/") if prefix else key
    parts = rel.split("/")
    if not rel or any(p in ("", ".", "..") for p in parts):
        raise DataError(f"refusing to download {shown}: object key {key!r} is not a plain relative path")
    return Path(*parts)


def fetch(uri: str, dest_dir: str | os.PathLike[str], *, retry: RetryPolicy | None = None,
          backend: Backend | None = None) -> list[Path]:
    """Bring ``uri`` onto local disk for reading: one object, or every object under a prefix.

    - A local path passes through untouched: ``[Path(uri)]`` (it must exist).
    - ``s3://b/data/train.csv``: that object, downloaded to ``dest_dir/train.csv``.
    - ``s3://b/data/shards`` (or with a trailing slash): every object below the prefix, in key
      order, at the same relative paths under ``dest_dir`` (so a ``save_to_disk`` directory or a
      set of CSV/Parquet shards keeps its layout). Zero-byte "directory marker" keys are skipped.

    Returns the local files in key order. Each file is written atomically and checked
    against the size the store listed; nothing found raises :class:`DataError`.
    """
    loc = open_location(uri, retry, backend)
    if loc.uri.is_local:
        path = loc.uri.path
        if not path.exists():
            raise DataError(f"no such file or directory: {path}")
        return [path]
    dest = Path(dest_dir)
    dest.mkdir(parents=True, exist_ok=True)
    b = loc.backend
    b.check(loc.uri.prefix)
    prefix = loc.uri.prefix
    single = b.stat(prefix) if prefix and not uri.rstrip().endswith("/") else None
    if single is not None:
        targets = [(single, Path(prefix.rsplit("/", 1)[-1]))]
    else:
        listing = b.list(f"{prefix}/" if prefix else "")
        objects = [o for o in listing if not (o.key.endswith("/") and o.size == 0)]
        if not objects:
            raise DataError(f"nothing to read at {loc.uri}: no object and no objects under that prefix")
        targets = [(o, _safe_relative(o.key, prefix, str(loc.uri))) for o in objects]
    total = sum(o.size for o, _ in targets)
    log.info("fetching %d object(s), %s, from %s", len(targets), format_bytes(total), loc.uri)
    paths = []
    for i, (info, rel) in enumerate(targets, 1):
        local = dest / rel
        size = b.download(info.key, local)
        if size != info.size:
            raise DataError(f"downloaded {size} bytes of {b.uri(info.key)}, the store lists {info.size}")
        log.info("fetched %d/%d %s (%s)", i, len(targets), b.uri(info.key), format_bytes(size))
        paths.append(local)
    return paths
