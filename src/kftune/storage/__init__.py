"""Object storage behind one small interface: S3 (AWS or MinIO), Google Cloud Storage, local paths.

Every place that takes a path also takes a URI:

- ``s3://bucket/prefix`` through the ``minio`` client, so MinIO (Kubeflow's own object store,
  ``http://minio-service.kubeflow:9000``) and AWS S3 work alike;
- ``gs://bucket/prefix`` through ``google-cloud-storage``;
- a local path, or ``file:///abs/path``.

Configuration and credentials come from the environment only (in a cluster: Kubernetes
Secrets mapped to environment variables by ``kftune.pipelines.secrets``), never from pipeline
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
local file's size and checksums (``kftune.storage.checksums``).

Modules: ``uri`` (parsing, :func:`is_remote`), ``retry`` (the policy and its loop),
``backend`` (the interface), ``s3``, ``gcs``, ``local`` (the backends), ``location``
(:func:`open_location`, :func:`fetch`). Callers import from this package.
"""


from kftune.storage.backend import Backend, ObjectInfo, PreconditionFailed
from kftune.storage.gcs import GcsBackend
from kftune.storage.local import LocalBackend
from kftune.storage.location import Location, fetch, format_bytes, open_backend, open_location
from kftune.storage.retry import RetryPolicy, StorageUnavailable, with_retries
from kftune.storage.s3 import S3Backend, S3Settings
from kftune.storage.uri import StorageUri, is_remote, parse_uri

__all__ = [
    "Backend",
    "GcsBackend",
    "LocalBackend",
    "Location",
    "ObjectInfo",
    "PreconditionFailed",
    "RetryPolicy",
    "S3Backend",
    "S3Settings",
    "StorageUnavailable",
    "StorageUri",
    "fetch",
    "format_bytes",
    "is_remote",
    "open_backend",
    "open_location",
    "parse_uri",
    "with_retries",
]
