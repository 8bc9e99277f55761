"""Storage URIs: ``s3://bucket/prefix``, ``gs://bucket/prefix``, ``file:///path`` or a local path."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from kftune.errors import ConfigError

SCHEMES = ("s3", "gs", "file")
_S3_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_GCS_BUCKET = re.compile(r"^[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]$")
_LOOKS_LIKE_URI = re.compile(r"^(s3|s3a|s3n|gs|gcs|file):/?[^/]", re.IGNORECASE)


@dataclass(frozen=True)
class StorageUri:
    """A parsed storage location: ``scheme`` is s3, gs or file; ``prefix`` has no leading or trailing slash.

    For ``file`` the bucket is empty and the prefix is the absolute path without its leading slash.
    """

    scheme: str
    bucket: str
    prefix: str

    @property
    def is_local(self) -> bool:
        return self.scheme == "file"

    @property
    def path(self) -> Path:
        """The local path (``file`` URIs only)."""
        if not self.is_local:
            raise ValueError(f"{self} is not a local path")
        return Path("/" + self.prefix)

    def child(self, *parts: str) -> StorageUri:
        """The location ``parts`` below this one."""
        keys = [p.strip("/") for p in (self.prefix, *parts) if p.strip("/")]
        return StorageUri(self.scheme, self.bucket, "/".join(keys))

    def __str__(self) -> str:
        if self.is_local:
            return "/" + self.prefix
        return f"{self.scheme}://{self.bucket}/{self.prefix}" if self.prefix else f"{self.scheme}://{self.bucket}"


def is_remote(text: str) -> bool:
    """Whether ``text`` names an object store (``s3://`` or ``gs://``) rather than a local path."""
    return text.strip().lower().startswith(("s3://", "gs://"))


def _check_key(prefix: str, shown: str) -> None:
    for segment in prefix.split("/"):
        if segment in ("", ".", ".."):
            raise ConfigError(
                f"malformed storage URI {shown!r}: empty, '.' or '..' path segment; "
                "expected s3://bucket/prefix, gs://bucket/prefix or a local path"
            )


def parse_uri(text: str) -> StorageUri:
    """Parse ``s3://bucket/prefix``, ``gs://bucket/prefix``, ``file:///path`` or a local path.

    Raises :class:`ConfigError` naming what is wrong. Credentials embedded in a URI
    (``s3://key:secret@bucket``) are refused, and the error message does not repeat them.
    """
    if not isinstance(text, str) or not text.strip():
        raise ConfigError("empty storage URI; expected s3://bucket/prefix, gs://bucket/prefix or a local path")
    text = text.strip()
    if "://" not in text:
        if _LOOKS_LIKE_URI.match(text):
            scheme = text.split(":", 1)[0]
            raise ConfigError(f"malformed storage URI {text!r}: write {scheme.lower()}://bucket/prefix")
        return StorageUri("file", "", str(Path(text).expanduser().absolute()).lstrip("/"))

    scheme, rest = text.split("://", 1)
    scheme = scheme.lower()
    if scheme == "file":
        if not rest.startswith("/"):
            host = rest.split("/", 1)[0]
            if host != "localhost":
                raise ConfigError(f"malformed file URI {text!r}: expected file:///absolute/path")
            rest = rest[len(host) :]
        return StorageUri("file", "", str(Path(rest).absolute()).lstrip("/"))
    if scheme not in SCHEMES:
        hint = {"s3a": "s3", "s3n": "s3", "gcs": "gs"}.get(scheme)
        suffix = f" (did you mean {hint}://?)" if hint else ""
        raise ConfigError(
            f"unsupported storage scheme {scheme!r} in {_redact(text)!r}{suffix}; supported: s3://, gs://, local paths"
        )

    bucket, _, prefix = rest.partition("/")
    if "@" in bucket:
        raise ConfigError(
            f"storage URI {_redact(text)!r} carries credentials; credentials belong in the environment "
            "(AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or GOOGLE_APPLICATION_CREDENTIALS), not in URIs"
        )
    pattern = _S3_BUCKET if scheme == "s3" else _GCS_BUCKET
    if not bucket:
        raise ConfigError(f"malformed storage URI {text!r}: no bucket; expected {scheme}://bucket/prefix")
    if not pattern.match(bucket) or ".." in bucket:
        raise ConfigError(
            f"malformed storage URI {text!r}: {bucket!r} is not a valid bucket name "
            "(3-63 characters: lowercase letters, digits, dots, hyphens)"
        )
    prefix = prefix.rstrip("/")
    if prefix:
        _check_key(prefix, text)
    return StorageUri(scheme, bucket, prefix)


def _redact(text: str) -> str:
    """``text`` with any ``user:password@`` part of its authority replaced."""
    return re.sub(r"(://)[^/@]*@", r"\1***@", text)
