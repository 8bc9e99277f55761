"""Publish a model directory to object storage so that readers see a whole version or none of it.

Layout under the target URI (``s3://``, ``gs://`` or a local path)::

    <uri>/v1/config.json ...          the files of version 1
    <uri>/v1/_MANIFEST.json           written last: its presence is what makes v1 exist
    <uri>/v2/_PUBLISHING.json         claim of a publish under way, or one that was interrupted
    <uri>/v2/config.json              (no manifest: readers do not see v2)
    <uri>/latest                      {"version": "v1", ...}: what readers get by default

Object stores have no rename, so a version is not staged elsewhere and copied (that would
double the traffic of a multi-gigabyte model and still need a marker); its files are
uploaded straight into ``v<N>/`` and the manifest, written last, is the commit:

1. Hash the local files (size, sha256, and the checksums the store will report).
2. List ``<uri>/`` and take N = 1 + the highest version number present, complete or not, so
   the number of an interrupted upload is never reused.
3. Claim ``v<N>`` by creating ``v<N>/_PUBLISHING.json`` only if it is absent (a conditional
   write: S3 ``If-None-Match: *``, GCS ``ifGenerationMatch=0``, an ``flock`` locally). A
   publisher that loses the race moves on to N+1.
4. Upload every file into ``v<N>/``, logging each with its size.
5. Verify: list ``v<N>/``; every file must be there with its size and the checksum the store
   computed (S3 ETag, GCS md5), or, where the store has none to compare (SSE-KMS, composite
   objects), a read-back sha256; no object may be there that this publisher did not write,
   and the claim must still be its own.
6. Write ``v<N>/_MANIFEST.json`` (files, sizes, sha256), again create-if-absent.
7. Move ``latest`` to v<N> with a compare-and-swap (S3 ``If-Match``, GCS generation), and
   never backwards: if a newer version got there first, ``latest`` stays on it.
8. Remove the claim, and the leftovers of interrupted publishes older than ``stale_after_s``.

A publish interrupted anywhere before step 6 leaves a version without a manifest: readers
ignore it, ``latest`` still names the previous version, and a later publish skips its number
and eventually deletes it. Interrupted between 6 and 7, the new version is complete but not
``latest`` yet; the next publish moves ``latest`` past it.

Readers (:func:`resolve_published`, :func:`download_published`, :func:`list_versions`) trust
only versions whose manifest parses, names its own version and matches the objects listed
(names and sizes); downloads are checked against the manifest's sha256 and land atomically.
``latest`` is followed when present; if it is missing (a first publish interrupted between
steps 6 and 7) the highest complete version is used.

Concurrency: two publishers racing for the same number cannot both win where the store
enforces conditional writes (AWS S3, MinIO, GCS, local files). Where it silently ignores them
(some S3-compatible servers, the GCS emulator) the claim is read back and re-checked before
the manifest is written, which narrows the race to a few milliseconds but cannot close it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import socket
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from kftune.errors import ConfigError, DataError, KftuneError
from kftune.storage import (
    Backend,
    Location,
    PreconditionFailed,
    RetryPolicy,
    format_bytes,
    open_location,
)
from kftune.storage.atomic import atomic_directory
from kftune.storage.checksums import FileDigest, digest_file, sha256_of

log = logging.getLogger("kftune.publish")

MANIFEST = "_MANIFEST.json"
CLAIM = "_PUBLISHING.json"
LATEST = "latest"
FORMAT = "kftune-model-version/1"
RESERVED = {MANIFEST, CLAIM}
_VERSION = re.compile(r"^v([1-9][0-9]*)$")
_CLAIM_TRIES = 20
_LATEST_TRIES = 10


@dataclass
class _Scan:
    """What is under a publish URI: complete and incomplete versions, by number."""

    complete: dict[int, list]
    partial: dict[int, list]

    @property
    def highest(self) -> int:
        return max([0, *self.complete, *self.partial])


def _scan(loc: Location) -> _Scan:
    base = loc.key()
    prefix = f"{base}/" if base else ""
    versions: dict[int, list] = {}
    for info in loc.backend.list(prefix):
        head, _, rest = info.key[len(prefix) :].partition("/")
        match = _VERSION.match(head)
        if match and rest:
            versions.setdefault(int(match.group(1)), []).append(info)
    complete = {n: objs for n, objs in versions.items() if any(o.key.endswith(f"/{MANIFEST}") for o in objs)}
    partial = {n: objs for n, objs in versions.items() if n not in complete}
    return _Scan(complete, partial)


def _local_files(local_dir: Path) -> list[tuple[str, Path]]:
    if not local_dir.is_dir():
        raise DataError(f"nothing to publish: {local_dir} is not a directory")
    files = []
    for path in sorted(local_dir.rglob("*")):
        if path.is_dir():
            continue
        rel = path.relative_to(local_dir).as_posix()
        if not path.is_file():
            raise DataError(f"cannot publish {path}: not a regular file")
        if rel in RESERVED:
            raise DataError(f"cannot publish {path}: {rel} is reserved for the version's own bookkeeping")
        files.append((rel, path))
    if not files:
        raise DataError(f"nothing to publish: {local_dir} is empty")
    return files


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _json(data: dict) -> bytes:
    return (json.dumps(data, indent=2, sort_keys=True) + "\n").encode("utf-8")


def _claim(loc: Location, start: int, token: str) -> int:
    """Claim the first free version number from ``start``; return it."""
    b = loc.backend
    claim = _json({"token": token, "started": _now(), "host": socket.gethostname()})
    n = start
    for _ in range(_CLAIM_TRIES):
        key = loc.key(f"v{n}", CLAIM)
        try:
            b.write_bytes(key, claim, if_absent=True)
        except PreconditionFailed:
            pass  # taken, unless an earlier attempt of ours went through and only its answer was lost
        if _claim_token(b, key) == token:
            return n
        log.info("v%d is being published by someone else; trying v%d", n, n + 1)
        n += 1
    raise KftuneError(f"could not claim a version under {loc.uri} after {_CLAIM_TRIES} tries")


def _claim_token(b: Backend, key: str) -> str | None:
    data = b.read_bytes(key)
    try:
        return json.loads(data)["token"] if data else None
    except (ValueError, KeyError, TypeError):
        return None


def _version_number(version: str | int) -> int:
    text = str(version).strip()
    match = _VERSION.match(text) or _VERSION.match(f"v{text}")
    if not match:
        raise ConfigError(f"bad version {version!r}: expected 'latest', 'v<N>' or <N>")
    return int(match.group(1))


def _read_latest(b: Backend, key: str) -> tuple[int | None, str | None]:
    """(version number named by ``latest``, its token for a compare-and-swap) - (None, None) if absent."""
    got = b.read_with_token(key)
    if got is None:
        return None, None
    data, token = got
    try:
        return _version_number(json.loads(data)["version"]), token
    except (ValueError, KeyError, TypeError, KftuneError):
        raise DataError(f"{b.uri(key)} is not a kftune latest pointer") from None


def _move_latest(loc: Location, n: int, manifest_sha256: str) -> int:
    """Point ``latest`` at v<n> unless it already names a newer version; return the version it names."""
    b, key = loc.backend, loc.key(LATEST)
    pointer = _json({"version": f"v{n}", "manifest_sha256": manifest_sha256, "updated": _now()})
    for _ in range(_LATEST_TRIES):
        current, token = _read_latest(b, key)
        if current is not None and current >= n:
            log.info("latest stays at v%d (newer than v%d)", current, n)
            return current
        try:
            if current is None:
                b.write_bytes(key, pointer, if_absent=True)
            else:
                b.write_bytes(key, pointer, if_match=token)
            return n
        except PreconditionFailed:
            log.info("latest changed while it was being moved; reading it again")
    raise KftuneError(f"could not move {loc.child_uri(LATEST)} after {_LATEST_TRIES} tries")


def _remove_stale(loc: Location, scan: _Scan, below: int, stale_after_s: float) -> list[str]:
    """Delete incomplete versions below ``below`` whose newest object is older than ``stale_after_s``."""
    removed = []
    now = time.time()
    for n, objects in sorted(scan.partial.items()):
        if n >= below:
            continue
        newest = max((o.modified or now) for o in objects)
        if now - newest < stale_after_s:
            continue
        # The claim goes last, so a cleanup interrupted half way still leaves an incomplete version.
        for info in sorted(objects, key=lambda o: o.key.endswith(f"/{CLAIM}")):
            loc.backend.delete(info.key)
        log.info("removed v%d, left incomplete by an interrupted publish (%d objects)", n, len(objects))
        removed.append(f"v{n}")
    return removed


def publish_model(local_dir: str | os.PathLike[str], uri: str, *, stale_after_s: float = 24 * 3600,
                  retry: RetryPolicy | None = None, backend: Backend | None = None) -> dict:
    """Publish every file under ``local_dir`` as the next version under ``uri``; see the module docstring.

    ``stale_after_s``: incomplete versions (interrupted publishes) whose newest object is older
    than this are deleted after a successful publish; it must exceed the longest time a publish
    can take. ``backend`` replaces the one the URI's scheme would open (tests wrap it).

    Returns ``{"uri", "version", "version_uri", "files", "bytes", "latest", "removed", "manifest"}``.
    """
    local = Path(local_dir)
    files = _local_files(local)
    loc = open_location(uri, retry, backend)
    b = loc.backend
    b.check(loc.key())
    digests: dict[str, FileDigest] = {rel: digest_file(path) for rel, path in files}
    total = sum(d.size for d in digests.values())
    log.info("publishing %d files, %s, from %s to %s", len(files), format_bytes(total), local, loc.uri)

    if not b.conditional_writes:
        log.warning("%s does not enforce conditional writes: do not run two publishes to it at once", loc.uri)
    scan = _scan(loc)
    token = uuid.uuid4().hex
    n = _claim(loc, scan.highest + 1, token)
    version = f"v{n}"
    log.info("claimed %s", loc.child_uri(version))
    try:
        for i, (rel, path) in enumerate(files, 1):
            b.upload(path, loc.key(version, rel))
            size = format_bytes(digests[rel].size)
            log.info("uploaded %d/%d %s (%s)", i, len(files), loc.child_uri(version, rel), size)
        _verify_upload(loc, version, digests, token)
        manifest = {
            "format": FORMAT,
            "version": version,
            "created": _now(),
            "files": [{"path": rel, "size": d.size, "sha256": d.sha256} for rel, d in digests.items()],
            "file_count": len(digests),
            "total_bytes": total,
        }
        manifest_bytes = _json(manifest)
        try:
            b.write_bytes(loc.key(version, MANIFEST), manifest_bytes, if_absent=True)
        except PreconditionFailed:
            # Ours, if an earlier attempt went through and only its answer was lost.
            if b.read_bytes(loc.key(version, MANIFEST)) != manifest_bytes:
                raise KftuneError(f"{loc.child_uri(version)} was completed by another publisher") from None
    except BaseException:
        log.error("%s left incomplete (no manifest): readers ignore it; latest is unchanged", loc.child_uri(version))
        raise
    log.info("committed %s (%d files, %s)", loc.child_uri(version), len(digests), format_bytes(total))

    latest = _move_latest(loc, n, hashlib.sha256(manifest_bytes).hexdigest())
    b.delete(loc.key(version, CLAIM))
    removed = _remove_stale(loc, scan, n, stale_after_s)
    return {
        "uri": str(loc.uri),
        "version": version,
        "version_uri": loc.child_uri(version),
        "files": len(digests),
        "bytes": total,
        "latest": f"v{latest}",
        "removed": removed,
        "manifest": manifest,
    }


def _verify_upload(loc: Location, version: str, digests: dict[str, FileDigest], token: str) -> None:
    b = loc.backend
    prefix = loc.key(version) + "/"
    listed = {info.key[len(prefix) :]: info for info in b.list(prefix)}
    foreign = sorted(set(listed) - set(digests) - {CLAIM})
    if foreign:
        raise KftuneError(
            f"{loc.child_uri(version)} holds objects this publish did not write ({', '.join(foreign[:5])}): "
            "another publisher is writing the same version; nothing was committed"
        )
    for rel, digest in digests.items():
        info = listed.get(rel)
        if info is None:
            raise KftuneError(f"uploaded {loc.child_uri(version, rel)} but the store does not list it")
        if info.size != digest.size:
            raise KftuneError(f"{loc.child_uri(version, rel)} has {info.size} bytes in the store, {digest.size} here")
        if not b.checksum_matches(info, digest) and not b.verify(info.key, digest):
            raise KftuneError(f"{loc.child_uri(version, rel)} does not match the local file's checksum")
    if _claim_token(b, loc.key(version, CLAIM)) != token:
        raise KftuneError(f"{loc.child_uri(version)} was claimed by another publisher meanwhile; nothing was committed")
    log.info("verified %d files of %s (sizes and checksums)", len(digests), loc.child_uri(version))


# --------------------------------------------------------------------------------------------
# Readers


@dataclass(frozen=True)
class Published:
    """A complete, verified version: its number, URI and manifest."""

    version: str
    uri: str
    manifest: dict


def _load_version(loc: Location, n: int, listing: list | None = None) -> Published:
    """Version n, if its manifest is valid and matches the listed objects; else DataError."""
    b, version = loc.backend, f"v{n}"
    where = loc.child_uri(version)
    data = b.read_bytes(loc.key(version, MANIFEST))
    if data is None:
        raise DataError(f"{where} is not a complete version (no {MANIFEST})")
    try:
        manifest = json.loads(data)
        entries = {e["path"]: int(e["size"]) for e in manifest["files"]}
        ok = manifest.get("format") == FORMAT and manifest.get("version") == version
    except (ValueError, KeyError, TypeError):
        ok = False
    if not ok:
        raise DataError(f"{where}/{MANIFEST} is not a valid manifest for {version}")
    prefix = loc.key(version) + "/"
    objects = listing if listing is not None else b.list(prefix)
    sizes = {o.key[len(prefix) :]: o.size for o in objects}
    for rel, size in entries.items():
        if sizes.get(rel) != size:
            found = "missing" if rel not in sizes else f"{sizes[rel]} bytes"
            raise DataError(f"{where} does not match its manifest: {rel} should have {size} bytes, {found}")
    return Published(version, where, manifest)


def list_versions(uri: str, *, retry: RetryPolicy | None = None, backend: Backend | None = None) -> list[str]:
    """The complete versions under ``uri`` (those with a manifest), oldest first."""
    return [f"v{n}" for n in sorted(_scan(open_location(uri, retry, backend)).complete)]


def open_published(uri: str, version: str | int = "latest", *, retry: RetryPolicy | None = None,
                   backend: Backend | None = None) -> Published:
    """The verified version ``version`` ('latest', 'v3' or 3) published under ``uri``."""
    loc = open_location(uri, retry, backend)
    b = loc.backend
    b.check(loc.key())
    if str(version) != "latest":
        n = _version_number(version)
        return _load_version(loc, n)
    n, _ = _read_latest(b, loc.key(LATEST))
    if n is not None:
        return _load_version(loc, n)
    scan = _scan(loc)
    for n in sorted(scan.complete, reverse=True):
        try:
            published = _load_version(loc, n, scan.complete[n])
        except DataError as exc:
            log.warning("skipping %s", exc)
            continue
        log.warning("%s has no latest pointer; using the highest complete version, %s", loc.uri, published.version)
        return published
    raise DataError(f"nothing published at {loc.uri} (no complete version)")


def resolve_published(uri: str, version: str | int = "latest", *, retry: RetryPolicy | None = None,
                      backend: Backend | None = None) -> str:
    """The URI of the verified version ``version`` under ``uri`` (e.g. ``s3://models/sentiment/v3``)."""
    return open_published(uri, version, retry=retry, backend=backend).uri


def download_published(uri: str, dest: str | os.PathLike[str], version: str | int = "latest", *,
                       retry: RetryPolicy | None = None, backend: Backend | None = None) -> dict:
    """Download a published version into ``dest`` (which must not exist or be empty).

    Every file is checked against the manifest's size and sha256; ``dest`` appears only when
    all of them have. Returns the manifest with ``uri`` (the version's) added.
    """
    target = Path(dest)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise ConfigError(f"cannot download into {target}: it exists and is not an empty directory")
    published = open_published(uri, version, retry=retry, backend=backend)
    loc = open_location(published.uri, retry, backend)
    files = published.manifest["files"]
    with atomic_directory(target) as tmp:
        for i, entry in enumerate(files, 1):
            rel = entry["path"]
            parts = rel.split("/")
            if any(p in ("", ".", "..") for p in parts):
                raise DataError(f"{published.uri}/{MANIFEST} names an unsafe path {rel!r}")
            target = tmp.joinpath(*parts)
            loc.backend.download(loc.key(rel), target)
            if target.stat().st_size != entry["size"] or sha256_of(target) != entry["sha256"]:
                raise DataError(f"{published.uri}/{rel} does not match its manifest (size or sha256)")
            log.info("downloaded %d/%d %s (%s)", i, len(files), f"{published.uri}/{rel}", format_bytes(entry["size"]))
    return {**published.manifest, "uri": published.uri}
