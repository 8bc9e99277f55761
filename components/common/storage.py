"""Object storage behind one small interface: S3 (AWS or MinIO), Google Cloud Storage, local paths.

Every place that takes a path also takes a URI:

- ``s3://bucket/prefix`` through the ``minio`` client, so MinIO (Kubeflow's own object store,
  ``http://minio-service.kubeflow:9000``) and AWS S3 work alike;
- ``gs://bucket/prefix`` through ``google-cloud-storage``;
- a local path, or ``file:///abs/path``.

Configuration and credentials come from the environment only (in a cluster: Kubernetes
Secrets mapped to environment variables, see :func:`use_s3_secret`), never from pipeline
parameters, so they never reach compiled pipeline YAML, run parameters or logs:

- ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``: S3 credentials. Without
  them: web identity (IRSA, ``AWS_WEB_IDENTITY_TOKEN_FILE``) or container credentials where
  those are set, else anonymous requests (public buckets).
- ``AWS_ENDPOINT_URL_S3``, else ``AWS_ENDPOINT_URL``, else ``S3_ENDPOINT``: the S3 endpoint, e.g.
  ``http://minio-service.kubeflow:9000``; unset means AWS S3. Its scheme decides TLS:
  ``http://`` off, ``https://`` (or no scheme) on.
- ``AWS_REGION``, else ``AWS_DEFAULT_REGION``: the region (saves a bucket-location request;
  MinIO's is ``us-east-1``).
- ``AWS_CA_BUNDLE``, else ``SSL_CERT_FILE``: CA bundle for an endpoint with a private CA.
- ``GOOGLE_APPLICATION_CREDENTIALS``: GCS service-account key file; unset means Application
  Default Credentials (GKE Workload Identity). ``GOOGLE_CLOUD_PROJECT``: the client's project.
- ``STORAGE_EMULATOR_HOST``: a GCS emulator (``http://127.0.0.1:9023``), anonymous requests.
- ``KFTUNE_STORAGE_ATTEMPTS`` (5) and ``KFTUNE_STORAGE_RETRY_DELAY`` (0.5 s, doubling, capped at
  8 s): the retry policy for transient errors.

Addressing style: the minio client uses path-style requests (``http://host/bucket/key``) for
every endpoint that is not AWS (MinIO, Ceph, moto, ...), and virtual-hosted style on AWS.

Errors. Transient failures (connection refused or reset, timeouts, HTTP 5xx, 429, S3
``SlowDown``/``RequestTimeout``/``InternalError``) are retried with exponential backoff and
jitter; when the attempts run out :class:`StorageUnavailable` names the URI and the last
error. Permanent ones fail at once: a missing bucket, access denied, unknown access key or a
bad signature raise :class:`ConfigError`; a missing object raises :class:`DataError`.
Messages name the URI and the endpoint, never a credential: settings objects hide their
secrets from ``repr``, endpoint URLs with user info are refused, and this module logs only
URIs, object keys and byte counts. The clients' own retries are switched off so that the
policy here is the only one.

Backends implement a deliberately small interface (:class:`Backend`): list a prefix, stat,
download, upload, read/write small objects (optionally conditional: create-if-absent or
replace-if-unchanged, which publishing uses), delete, and verify an upload against the
local file's size and checksums (``kftune.components.common.checksums``).
"""

from __future__ import annotations

import base64
import contextlib
import errno
import fcntl
import io
import logging
import os
import random
import re
import shutil
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from kftune.components.common import checksums
from kftune.components.common.checksums import FileDigest, sha256_of
from kftune.components.common.errors import ConfigError, DataError, KftuneError

log = logging.getLogger("kftune.storage")

T = TypeVar("T")

SCHEMES = ("s3", "gs", "file")
_CHUNK = 2**20

_S3_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_GCS_BUCKET = re.compile(r"^[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]$")
_LOOKS_LIKE_URI = re.compile(r"^(s3|s3a|s3n|gs|gcs|file):/?[^/]", re.IGNORECASE)


class StorageUnavailable(KftuneError):
    """A storage request kept failing with transient errors until the attempts ran out."""


class PreconditionFailed(KftuneError):
    """A conditional write lost: the object exists (create-if-absent) or changed (replace-if-unchanged)."""


# --------------------------------------------------------------------------------------------
# URIs


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


# --------------------------------------------------------------------------------------------
# Retries


@dataclass(frozen=True)
class RetryPolicy:
    """Attempts and backoff for transient errors, and per-request timeouts (seconds)."""

    attempts: int = 5
    initial_delay: float = 0.5
    max_delay: float = 8.0
    connect_timeout: float = 10.0
    read_timeout: float = 120.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> RetryPolicy:
        env = os.environ if env is None else env
        try:
            attempts = int(env.get("KFTUNE_STORAGE_ATTEMPTS", cls.attempts))
            delay = float(env.get("KFTUNE_STORAGE_RETRY_DELAY", cls.initial_delay))
        except ValueError as exc:
            raise ConfigError(f"KFTUNE_STORAGE_ATTEMPTS / KFTUNE_STORAGE_RETRY_DELAY: {exc}") from None
        if attempts < 1 or delay < 0:
            raise ConfigError("KFTUNE_STORAGE_ATTEMPTS must be >= 1 and KFTUNE_STORAGE_RETRY_DELAY >= 0")
        return cls(attempts=attempts, initial_delay=delay)

    def delay(self, attempt: int) -> float:
        """Sleep before attempt ``attempt + 1`` (``attempt`` counts from 1): exponential, jittered."""
        base = min(self.max_delay, self.initial_delay * 2 ** (attempt - 1))
        return base * (0.5 + random.random() / 2)


class _Transient(Exception):
    """Internal: a classified transient failure, with a short description."""


def with_retries(call: Callable[[], T], what: str, policy: RetryPolicy, classify: Callable[[BaseException], None]) -> T:
    """Run ``call``; retry it on transient errors, as ``classify`` decides.

    ``classify(exc)`` raises a :class:`KftuneError` for a permanent failure, raises
    :class:`_Transient` for a transient one, and returns for anything else (re-raised as is).
    """
    for attempt in range(1, policy.attempts + 1):
        try:
            return call()
        except KftuneError:
            raise
        except Exception as exc:
            try:
                classify(exc)
            except _Transient as transient:
                if attempt == policy.attempts:
                    raise StorageUnavailable(
                        f"{what}: still failing after {policy.attempts} attempts: {transient}"
                    ) from None
                pause = policy.delay(attempt)
                log.warning("%s: %s; retrying in %.1f s (attempt %d/%d)", what, transient, pause,
                            attempt + 1, policy.attempts)
                time.sleep(pause)
                continue
            raise
    raise AssertionError("unreachable")


# --------------------------------------------------------------------------------------------
# Sizes


def format_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


# --------------------------------------------------------------------------------------------
# The backend interface


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


# --------------------------------------------------------------------------------------------
# S3 (and MinIO) through the minio client


@dataclass(frozen=True)
class S3Settings:
    """S3 connection settings from the environment; secrets are kept out of ``repr``."""

    endpoint: str = "s3.amazonaws.com"
    secure: bool = True
    region: str | None = None
    access_key: str | None = field(default=None, repr=False)
    secret_key: str | None = field(default=None, repr=False)
    session_token: str | None = field(default=None, repr=False)
    ca_bundle: str | None = None

    @property
    def endpoint_url(self) -> str:
        return f"{'https' if self.secure else 'http'}://{self.endpoint}"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> S3Settings:
        env = os.environ if env is None else env
        raw = ""
        for name in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "S3_ENDPOINT"):
            if env.get(name, "").strip():
                raw, source = env[name].strip(), name
                break
        endpoint, secure = "s3.amazonaws.com", True
        if raw:
            endpoint, secure = _parse_endpoint(raw, source)
        access, secret = env.get("AWS_ACCESS_KEY_ID") or None, env.get("AWS_SECRET_ACCESS_KEY") or None
        if bool(access) != bool(secret):
            missing = "AWS_SECRET_ACCESS_KEY" if access else "AWS_ACCESS_KEY_ID"
            raise ConfigError(f"S3 credentials incomplete: {missing} is not set (set both or neither)")
        return cls(
            endpoint=endpoint,
            secure=secure,
            region=env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or None,
            access_key=access,
            secret_key=secret,
            session_token=env.get("AWS_SESSION_TOKEN") or None,
            ca_bundle=env.get("AWS_CA_BUNDLE") or env.get("SSL_CERT_FILE") or None,
        )


def _parse_endpoint(raw: str, source: str) -> tuple[str, bool]:
    """``host[:port]`` and TLS on/off from an endpoint setting."""
    scheme, sep, rest = raw.partition("://")
    if not sep:
        scheme, rest = "https", raw
    scheme = scheme.lower()
    if scheme not in ("http", "https"):
        raise ConfigError(f"{source}: endpoint scheme must be http:// or https://, got {scheme}://")
    if "@" in rest:
        raise ConfigError(
            f"{source}: the endpoint must not carry credentials; use AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY"
        )
    host, _, path = rest.partition("/")
    if path.strip("/"):
        raise ConfigError(f"{source}: endpoint {scheme}://{host}/{path} has a path; give only scheme://host[:port]")
    if not host:
        raise ConfigError(f"{source}: endpoint has no host")
    return host, scheme == "https"


# S3 error codes, sorted by what they mean for the caller.
_S3_TRANSIENT = {"SlowDown", "RequestTimeout", "InternalError", "ServiceUnavailable", "RequestTimeTooSkewed",
                 "OperationAborted", "ServerBusy", "XMinioServerNotInitialized"}
_S3_CREDENTIALS = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken",
                   "TokenRefreshRequired", "AuthorizationHeaderMalformed", "InvalidClientTokenId"}


class S3Backend(Backend):
    """Objects in one S3 bucket, through the ``minio`` client."""

    scheme = "s3"

    def __init__(self, bucket: str, settings: S3Settings | None = None, retry: RetryPolicy | None = None):
        import urllib3
        from minio import Minio

        self.bucket = bucket
        self.settings = settings or S3Settings.from_env()
        self.retry = retry or RetryPolicy.from_env()
        s = self.settings
        # Our own pool: urllib3's retries off (this module retries), bounded timeouts.
        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=self.retry.connect_timeout, read=self.retry.read_timeout),
            retries=False,
            maxsize=10,
            cert_reqs="CERT_REQUIRED",
            ca_certs=s.ca_bundle or _certifi_bundle(),
        )
        credentials = None
        if not s.access_key:
            credentials = _ambient_aws_credentials()
            if credentials is None:
                log.info("no S3 credentials in the environment: anonymous requests to %s", s.endpoint_url)
        self.client = Minio(
            s.endpoint,
            access_key=s.access_key,
            secret_key=s.secret_key,
            session_token=s.session_token,
            secure=s.secure,
            region=s.region,
            http_client=http,
            credentials=credentials,
        )

    def _where(self, key: str | None) -> str:
        return f"{self.uri(key or '')} (endpoint {self.settings.endpoint_url})"

    def _call(self, what: str, key: str | None, call: Callable[[], T]) -> T:
        return with_retries(call, f"{what} {self._where(key)}", self.retry, lambda exc: self._classify(exc, key))

    def _classify(self, exc: BaseException, key: str | None) -> None:
        import urllib3
        from minio.error import InvalidResponseError, S3Error, ServerError

        where = self._where(key)
        if isinstance(exc, S3Error):
            code = exc.code or ""
            status = getattr(exc.response, "status", 0) or 0
            if code in ("PreconditionFailed", "ConditionalRequestConflict") or status == 412:
                raise PreconditionFailed(f"{self.uri(key or '')}: conditional write lost ({code or status})")
            if code == "NoSuchBucket":
                raise ConfigError(f"no such bucket: {where}")
            if code in _S3_CREDENTIALS:
                raise ConfigError(
                    f"S3 rejected the credentials ({code}) for {where}: check AWS_ACCESS_KEY_ID / "
                    "AWS_SECRET_ACCESS_KEY (or the Kubernetes Secret they come from)"
                )
            if code in ("AccessDenied", "AllAccessDisabled", "AccountProblem") or status == 403:
                raise ConfigError(
                    f"access denied ({code or status}) to {where}: check the credentials and bucket policy"
                )
            if code in ("NoSuchKey", "NoSuchUpload"):
                raise DataError(f"no such object: {where}")
            if code in _S3_TRANSIENT or status >= 500 or status == 429:
                raise _Transient(f"S3 {code or status}")
            raise KftuneError(f"S3 request failed for {where}: {code or status} {exc.message or ''}".rstrip())
        if isinstance(exc, ServerError):
            if exc.status_code >= 500 or exc.status_code == 429:
                raise _Transient(f"HTTP {exc.status_code}")
            raise KftuneError(f"S3 request failed for {where}: HTTP {exc.status_code}")
        if isinstance(exc, InvalidResponseError):
            status = getattr(exc, "_code", 0) or 0
            if status >= 500 or status == 429:
                raise _Transient(f"HTTP {status} (non-S3 response)")
            raise ConfigError(f"{where} did not answer like an S3 server (HTTP {status}); check the endpoint")
        if isinstance(exc, urllib3.exceptions.SSLError):
            raise ConfigError(
                f"TLS failed talking to {where}; for an endpoint without TLS write http://..., "
                "for a private CA set AWS_CA_BUNDLE"
            )
        if isinstance(exc, urllib3.exceptions.LocationParseError):
            raise ConfigError(f"bad S3 endpoint {self.settings.endpoint_url}")
        if isinstance(exc, urllib3.exceptions.HTTPError | ConnectionError | TimeoutError):
            raise _Transient(_short_error(exc))
        if isinstance(exc, OSError) and exc.errno in (errno.ECONNRESET, errno.ECONNREFUSED, errno.EPIPE):
            raise _Transient(_short_error(exc))

    def check(self, prefix: str = "") -> None:
        def first():
            for _ in self.client.list_objects(self.bucket, prefix=prefix or None):
                break

        self._call("list", prefix, first)

    def list(self, prefix: str) -> list[ObjectInfo]:
        def run():
            return [
                ObjectInfo(o.object_name, o.size or 0, (o.etag or "").strip('"'), (o.etag or "").strip('"'),
                           o.last_modified.timestamp() if o.last_modified else None)
                for o in self.client.list_objects(self.bucket, prefix=prefix or None, recursive=True)
                if not o.is_dir
            ]

        return sorted(self._call("list", prefix, run), key=lambda o: o.key)

    def stat(self, key: str) -> ObjectInfo | None:
        def run():
            o = self.client.stat_object(self.bucket, key)
            etag = (o.etag or "").strip('"')
            return ObjectInfo(key, o.size or 0, etag, etag, o.last_modified.timestamp() if o.last_modified else None)

        try:
            return self._call("stat", key, run)
        except DataError:
            return None

    def download(self, key: str, path: Path) -> int:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)

        def run():
            response = self.client.get_object(self.bucket, key)
            try:
                with _atomic_file(path) as f:
                    for block in response.stream(_CHUNK):
                        f.write(block)
            finally:
                response.close()
                response.release_conn()
            return path.stat().st_size

        return self._call("download", key, run)

    def upload(self, path: Path, key: str) -> ObjectInfo:
        def run():
            result = self.client.fput_object(self.bucket, key, str(path), part_size=checksums.S3_PART_SIZE)
            etag = (result.etag or "").strip('"')
            return ObjectInfo(key, os.path.getsize(path), etag, etag)

        return self._call("upload", key, run)

    def read_with_token(self, key: str) -> tuple[bytes, str] | None:
        def run():
            response = self.client.get_object(self.bucket, key)
            try:
                # The ETag of the very bytes read, for a later If-Match.
                return response.read(), (response.headers.get("ETag") or "").strip('"')
            finally:
                response.close()
                response.release_conn()

        try:
            return self._call("read", key, run)
        except DataError:
            return None

    def read_bytes(self, key: str) -> bytes | None:
        got = self.read_with_token(key)
        return None if got is None else got[0]

    def write_bytes(self, key: str, data: bytes, *, if_absent: bool = False, if_match: str | None = None) -> None:
        headers = {"Content-Type": "application/json"}
        if if_absent:
            headers["If-None-Match"] = "*"
        if if_match is not None:
            headers["If-Match"] = f'"{if_match}"'

        def run():
            if len(headers) == 1:
                self.client.put_object(self.bucket, key, io.BytesIO(data), len(data), content_type="application/json")
            else:
                # Conditional PutObject (AWS S3 since 2024, MinIO, moto). minio's public put_object
                # turns unknown headers into user metadata, so this goes through its PUT primitive
                # (minio==7.2.20 is pinned).
                self.client._put_object(self.bucket, key, data, dict(headers))

        self._call("write", key, run)

    def delete(self, key: str) -> None:
        self._call("delete", key, lambda: self.client.remove_object(self.bucket, key))

    def checksum_matches(self, info: ObjectInfo, digest: FileDigest) -> bool:
        # S3's ETag is the md5 of a single-part upload and the md5 of the parts' md5s for a
        # multipart one (not with SSE-KMS/SSE-C: then the object is read back).
        return bool(info.checksum) and info.checksum == digest.s3_etag


def _certifi_bundle() -> str | None:
    try:
        import certifi

        return certifi.where()
    except ImportError:  # pragma: no cover - certifi comes with minio
        return None


def _ambient_aws_credentials():
    """Credentials a pod gets without static keys: IRSA web identity or container credentials."""
    from minio.credentials import IamAwsProvider

    if any(os.environ.get(n) for n in ("AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
                                       "AWS_CONTAINER_CREDENTIALS_FULL_URI")):
        return IamAwsProvider()
    return None  # anonymous requests (public buckets)


def _short_error(exc: BaseException) -> str:
    """A one-line description of a connection-level error: its innermost cause (e.g. the
    ``NewConnectionError`` inside requests' ``ConnectionError`` inside ``MaxRetryError``)."""
    for _ in range(5):
        inner = getattr(exc, "reason", None)
        if not isinstance(inner, BaseException) and exc.args and isinstance(exc.args[0], BaseException):
            inner = exc.args[0]
        if not isinstance(inner, BaseException):
            break
        exc = inner
    text = (str(exc).splitlines() or [""])[0]
    return f"{type(exc).__name__}: {text[:200]}" if text else type(exc).__name__


# --------------------------------------------------------------------------------------------
# Google Cloud Storage


class GcsBackend(Backend):
    """Objects in one GCS bucket, through ``google-cloud-storage`` (its own retries switched off).

    ``if_absent``/``if_match`` map to ``ifGenerationMatch`` (0, or the generation read). The
    ``gcp-storage-emulator`` used in tests ignores those preconditions; real GCS enforces them.
    """

    scheme = "gs"

    def __init__(self, bucket: str, retry: RetryPolicy | None = None, client=None):
        self.bucket = bucket
        self.retry = retry or RetryPolicy.from_env()
        self.emulator = os.environ.get("STORAGE_EMULATOR_HOST") or None
        self.conditional_writes = not self.emulator
        if client is None:
            from google.auth.exceptions import DefaultCredentialsError
            from google.cloud import storage

            project = os.environ.get("GOOGLE_CLOUD_PROJECT") or ("kftune" if self.emulator else None)
            try:
                client = storage.Client(project=project)
            except DefaultCredentialsError:
                raise ConfigError(
                    f"no Google Cloud credentials for gs://{bucket}: set GOOGLE_APPLICATION_CREDENTIALS to a "
                    "service-account key file, or run with Workload Identity"
                ) from None
        self.client = client
        self._bucket = client.bucket(bucket)
        self._timeout = (self.retry.connect_timeout, self.retry.read_timeout)

    def _where(self, key: str | None) -> str:
        where = self.uri(key or "")
        return f"{where} (emulator {self.emulator})" if self.emulator else where

    def _call(self, what: str, key: str | None, call: Callable[[], T]) -> T:
        return with_retries(call, f"{what} {self._where(key)}", self.retry,
                            lambda exc: self._classify(exc, key, listing=what == "list"))

    def _classify(self, exc: BaseException, key: str | None, listing: bool = False) -> None:
        import requests
        from google.api_core import exceptions as gexc
        from google.auth import exceptions as auth_exc
        from google.cloud.storage.exceptions import DataCorruption, InvalidResponse

        where = self._where(key)
        if isinstance(exc, gexc.PreconditionFailed):
            raise PreconditionFailed(f"{self.uri(key or '')}: conditional write lost")
        if isinstance(exc, gexc.NotFound):
            # Listing a prefix with nothing under it is not an error, so a 404 there is the bucket.
            if listing or "bucket" in str(exc.message).lower():
                raise ConfigError(f"no such bucket: {where}")
            raise DataError(f"no such object: {where}")
        if isinstance(exc, gexc.Unauthorized):
            raise ConfigError(f"GCS rejected the credentials for {where}: check GOOGLE_APPLICATION_CREDENTIALS")
        if isinstance(exc, gexc.Forbidden):
            raise ConfigError(f"access denied to {where}: check the service account's permissions on the bucket")
        if isinstance(exc, gexc.TooManyRequests | gexc.ServerError):
            raise _Transient(f"GCS HTTP {exc.code}")
        if isinstance(exc, gexc.GoogleAPICallError):
            raise KftuneError(f"GCS request failed for {where}: HTTP {exc.code} {exc.message}")
        if isinstance(exc, auth_exc.RefreshError | auth_exc.DefaultCredentialsError):
            raise ConfigError(f"no usable Google Cloud credentials for {where}: {type(exc).__name__}")
        if isinstance(exc, auth_exc.TransportError | DataCorruption):
            raise _Transient(_short_error(exc))
        if isinstance(exc, InvalidResponse):
            status = getattr(getattr(exc, "response", None), "status_code", 0) or 0
            if status >= 500 or status == 429:
                raise _Transient(f"GCS HTTP {status}")
            raise KftuneError(f"GCS request failed for {where}: HTTP {status}")
        if isinstance(exc, requests.exceptions.SSLError):
            raise ConfigError(f"TLS failed talking to {where}")
        if isinstance(exc, requests.exceptions.ConnectionError | requests.exceptions.Timeout
                      | requests.exceptions.ChunkedEncodingError | ConnectionError | TimeoutError):
            raise _Transient(_short_error(exc))

    def _info(self, blob) -> ObjectInfo:
        md5 = base64.b64decode(blob.md5_hash).hex() if blob.md5_hash else None
        modified = blob.updated.timestamp() if blob.updated else None
        token = str(blob.generation) if blob.generation is not None else None
        return ObjectInfo(blob.name, int(blob.size or 0), token, md5, modified)

    def check(self, prefix: str = "") -> None:
        self._call("list", prefix, lambda: list(self.client.list_blobs(
            self._bucket, prefix=prefix or None, max_results=1, retry=None, timeout=self._timeout)))

    def list(self, prefix: str) -> list[ObjectInfo]:
        def run():
            blobs = self.client.list_blobs(self._bucket, prefix=prefix or None, retry=None, timeout=self._timeout)
            return [self._info(b) for b in blobs if not b.name.endswith("/")]

        return sorted(self._call("list", prefix, run), key=lambda o: o.key)

    def stat(self, key: str) -> ObjectInfo | None:
        def run():
            blob = self._bucket.get_blob(key, retry=None, timeout=self._timeout)
            return None if blob is None else self._info(blob)

        return self._call("stat", key, run)

    def download(self, key: str, path: Path) -> int:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)

        def run():
            with _atomic_file(path) as f:
                self._bucket.blob(key).download_to_file(f, retry=None, timeout=self._timeout)
            return path.stat().st_size

        return self._call("download", key, run)

    def upload(self, path: Path, key: str) -> ObjectInfo:
        def run():
            blob = self._bucket.blob(key)
            blob.upload_from_filename(str(path), retry=None, timeout=self._timeout)
            return self._info(blob)

        return self._call("upload", key, run)

    def read_bytes(self, key: str) -> bytes | None:
        try:
            return self._call("read", key, lambda: self._bucket.blob(key).download_as_bytes(
                retry=None, timeout=self._timeout))
        except DataError:
            return None

    def read_with_token(self, key: str) -> tuple[bytes, str] | None:
        def run():
            blob = self._bucket.get_blob(key, retry=None, timeout=self._timeout)
            if blob is None:
                return None
            # Read exactly that generation, so the token matches the content.
            generation = blob.generation
            data = blob.download_as_bytes(retry=None, timeout=self._timeout, if_generation_match=generation)
            return data, str(generation)

        try:
            return self._call("read", key, run)
        except (DataError, PreconditionFailed):
            return None

    def write_bytes(self, key: str, data: bytes, *, if_absent: bool = False, if_match: str | None = None) -> None:
        condition = 0 if if_absent else (int(if_match) if if_match is not None else None)

        def run():
            self._bucket.blob(key).upload_from_string(
                data, content_type="application/json", if_generation_match=condition, retry=None, timeout=self._timeout)

        self._call("write", key, run)

    def delete(self, key: str) -> None:
        try:
            self._call("delete", key, lambda: self._bucket.blob(key).delete(retry=None, timeout=self._timeout))
        except DataError:
            pass

    def checksum_matches(self, info: ObjectInfo, digest: FileDigest) -> bool:
        return bool(info.checksum) and info.checksum == digest.md5


# --------------------------------------------------------------------------------------------
# Local filesystem


@contextlib.contextmanager
def _atomic_file(path: Path):
    """A binary file handle whose content appears at ``path`` only when the block completes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.partial-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


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
        with open(source, "rb") as src, _atomic_file(Path(path)) as dst:
            shutil.copyfileobj(src, dst, _CHUNK)
        return Path(path).stat().st_size

    def upload(self, path: Path, key: str) -> ObjectInfo:
        target = self.path(key)
        with open(path, "rb") as src, _atomic_file(target) as dst:
            shutil.copyfileobj(src, dst, _CHUNK)
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
            with _atomic_file(target) as f:
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


# --------------------------------------------------------------------------------------------
# Opening locations, and ingest


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


# --------------------------------------------------------------------------------------------
# Kubernetes Secrets for pipeline tasks


def use_s3_secret(task, secret_name: str = "mlpipeline-minio-artifact", access_key_field: str = "accesskey",
                  secret_key_field: str = "secretkey", endpoint: str | None = None, region: str | None = None,
                  optional: bool = False):
    """Give a pipeline task S3 credentials from a Kubernetes Secret (kfp-kubernetes ``use_secret_as_env``).

    The compiled YAML holds only the Secret's name and key names; the values are injected by
    Kubernetes when the pod starts. The defaults fit Kubeflow's own MinIO Secret
    (``mlpipeline-minio-artifact`` with ``accesskey``/``secretkey``). ``endpoint`` and ``region``
    (not secrets) become ``AWS_ENDPOINT_URL`` / ``AWS_REGION``. ``optional``: the pod starts
    even where the Secret is missing (the task then runs without S3 credentials).
    """
    from kfp import kubernetes

    kubernetes.use_secret_as_env(
        task, secret_name=secret_name,
        secret_key_to_env={access_key_field: "AWS_ACCESS_KEY_ID", secret_key_field: "AWS_SECRET_ACCESS_KEY"},
        optional=optional,
    )
    if endpoint:
        _parse_endpoint(endpoint, "endpoint")
        task.set_env_variable("AWS_ENDPOINT_URL", endpoint)
    if region:
        task.set_env_variable("AWS_REGION", region)
    return task


def use_gcs_secret(task, secret_name: str, key_file: str = "key.json", mount_path: str = "/var/secrets/google",
                   optional: bool = False):
    """Give a pipeline task a GCS service-account key from a Kubernetes Secret, mounted as a file.

    (On GKE with Workload Identity no Secret is needed: bind the pod's service account instead.)
    """
    from kfp import kubernetes

    kubernetes.use_secret_as_volume(task, secret_name=secret_name, mount_path=mount_path, optional=optional)
    task.set_env_variable("GOOGLE_APPLICATION_CREDENTIALS", f"{mount_path.rstrip('/')}/{key_file}")
    return task
