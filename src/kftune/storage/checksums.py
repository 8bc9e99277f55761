"""Checksums of local files: the one sha256 helper, and the set an upload is verified against.

``sha256_of`` is what manifests (published models, training checkpoints) and pinned files (the
bundled model's weights) record. ``digest_file`` hashes a file once for every checksum an
object store may report for it, so an upload can be verified without reading it back.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

# S3 multipart part size. The expected multipart ETag depends on it, so the S3 backend uploads
# with this same size (reading it at call time) and digest_file computes the ETag with it.
S3_PART_SIZE = 64 * 2**20
_CHUNK = 2**20


def sha256_of(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of the file at ``path``, read in blocks (never whole into memory)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


@dataclass(frozen=True)
class FileDigest:
    """Size and checksums of a local file: sha256, md5, and the ETag S3 gives it when uploaded
    in parts of :data:`S3_PART_SIZE` (plain md5 for a single part)."""

    size: int
    sha256: str
    md5: str
    s3_etag: str


def digest_file(path: str | os.PathLike[str], part_size: int | None = None) -> FileDigest:
    """Hash ``path`` once for every checksum an upload is verified against (``part_size``:
    the S3 multipart part size, :data:`S3_PART_SIZE` by default)."""
    part_size = part_size or S3_PART_SIZE
    sha, md5, part_md5 = hashlib.sha256(), hashlib.md5(), hashlib.md5()
    parts: list[bytes] = []
    size = in_part = 0
    with open(path, "rb") as f:
        while block := f.read(min(_CHUNK, part_size - in_part)):
            sha.update(block)
            md5.update(block)
            part_md5.update(block)
            size += len(block)
            in_part += len(block)
            if in_part == part_size:
                parts.append(part_md5.digest())
                part_md5, in_part = hashlib.md5(), 0
    if in_part or not parts:
        parts.append(part_md5.digest())
    if len(parts) == 1:
        etag = md5.hexdigest()
    else:
        etag = f"{hashlib.md5(b''.join(parts)).hexdigest()}-{len(parts)}"
    return FileDigest(size=size, sha256=sha.hexdigest(), md5=md5.hexdigest(), s3_etag=etag)
