"""S3 (AWS, MinIO, Ceph, ...) through the ``minio`` client: settings from the environment, one bucket's backend."""

from __future__ import annotations

import errno
import io
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from kftune.errors import ConfigError, DataError, KftuneError
from kftune.storage import checksums
from kftune.storage.atomic import atomic_file
from kftune.storage.backend import CHUNK, Backend, ObjectInfo, PreconditionFailed
from kftune.storage.checksums import FileDigest
from kftune.storage.retry import RetryPolicy, Transient, short_error, with_retries

log = logging.getLogger("kftune.storage")

T = TypeVar("T")


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
            endpoint, secure = parse_endpoint(raw, source)
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


def parse_endpoint(raw: str, source: str) -> tuple[str, bool]:
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
                raise Transient(f"S3 {code or status}")
            raise KftuneError(f"S3 request failed for {where}: {code or status} {exc.message or ''}".rstrip())
        if isinstance(exc, ServerError):
            if exc.status_code >= 500 or exc.status_code == 429:
                raise Transient(f"HTTP {exc.status_code}")
            raise KftuneError(f"S3 request failed for {where}: HTTP {exc.status_code}")
        if isinstance(exc, InvalidResponseError):
            status = getattr(exc, "_code", 0) or 0
            if status >= 500 or status == 429:
                raise Transient(f"HTTP {status} (non-S3 response)")
            raise ConfigError(f"{where} did not answer like an S3 server (HTTP {status}); check the endpoint")
        if isinstance(exc, urllib3.exceptions.SSLError):
            raise ConfigError(
                f"TLS failed talking to {where}; for an endpoint without TLS write http://..., "
                "for a private CA set AWS_CA_BUNDLE"
            )
        if isinstance(exc, urllib3.exceptions.LocationParseError):
            raise ConfigError(f"bad S3 endpoint {self.settings.endpoint_url}")
        if isinstance(exc, urllib3.exceptions.HTTPError | ConnectionError | TimeoutError):
            raise Transient(short_error(exc))
        if isinstance(exc, OSError) and exc.errno in (errno.ECONNRESET, errno.ECONNREFUSED, errno.EPIPE):
            raise Transient(short_error(exc))

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
                with atomic_file(path) as f:
                    for block in response.stream(CHUNK):
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
