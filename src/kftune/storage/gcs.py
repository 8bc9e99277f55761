"""Google Cloud Storage through ``google-cloud-storage``: one bucket's backend."""

from __future__ import annotations

import base64
import os
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from kftune.errors import ConfigError, DataError, KftuneError
from kftune.storage.atomic import atomic_file
from kftune.storage.backend import Backend, ObjectInfo, PreconditionFailed
from kftune.storage.checksums import FileDigest
from kftune.storage.retry import RetryPolicy, Transient, short_error, with_retries

T = TypeVar("T")


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
            raise Transient(f"GCS HTTP {exc.code}")
        if isinstance(exc, gexc.GoogleAPICallError):
            raise KftuneError(f"GCS request failed for {where}: HTTP {exc.code} {exc.message}")
        if isinstance(exc, auth_exc.RefreshError | auth_exc.DefaultCredentialsError):
            raise ConfigError(f"no usable Google Cloud credentials for {where}: {type(exc).__name__}")
        if isinstance(exc, auth_exc.TransportError | DataCorruption):
            raise Transient(short_error(exc))
        if isinstance(exc, InvalidResponse):
            status = getattr(getattr(exc, "response", None), "status_code", 0) or 0
            if status >= 500 or status == 429:
                raise Transient(f"GCS HTTP {status}")
            raise KftuneError(f"GCS request failed for {where}: HTTP {status}")
        if isinstance(exc, requests.exceptions.SSLError):
            raise ConfigError(f"TLS failed talking to {where}")
        if isinstance(exc, requests.exceptions.ConnectionError | requests.exceptions.Timeout
                      | requests.exceptions.ChunkedEncodingError | ConnectionError | TimeoutError):
            raise Transient(short_error(exc))

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
            with atomic_file(path) as f:
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
