"""Storage URIs, ingest from object stores, and atomic versioned publishing, against real servers.

Servers (see tests/object_servers.py), all on 127.0.0.1 and free ports: moto's S3 server in a
thread (restartable with its state, to stop it mid-upload), moto in a subprocess with IAM
authentication on (wrong credentials), s3rver when it is installed (access-key check, a real
process crash), and gcp-storage-emulator. All I/O goes through the minio client and
google-cloud-storage, as in production.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import threading
import time
import uuid
from pathlib import Path

import pandas as pd
import pytest

from kftune import storage
from kftune.components.publish import publish as pub
from kftune.components.publish.publish import (
    download_published,
    list_versions,
    publish_model,
    resolve_published,
)
from kftune.errors import ConfigError, DataError, KftuneError
from kftune.storage import (
    PreconditionFailed,
    RetryPolicy,
    S3Settings,
    StorageUnavailable,
    checksums,
    fetch,
    open_location,
    parse_uri,
)
from kftune.storage.checksums import digest_file
from kftune.storage.retry import Transient
from tests.object_servers import GcsEmulator, MotoS3, MotoS3WithAuth, S3rver, s3rver_command
from tests.tools import need

# Distinctive fake credentials: the tests look for them in logs, errors and YAML.
FAKE_KEY = "AKIAKFTUNEFAKE7Q2XJ4"
FAKE_SECRET = "kftune-fake-secret-Zp9w3R7vQm2LxT8sNc4Hb6Yd"
FAKE_TOKEN = "kftune-fake-session-token-Jk5Vn1Wq"
FAST = {"KFTUNE_STORAGE_ATTEMPTS": "3", "KFTUNE_STORAGE_RETRY_DELAY": "0.01"}


def _set_env(monkeypatch, values: dict) -> None:
    for name in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "S3_ENDPOINT", "AWS_ACCESS_KEY_ID",
                 "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_REGION", "AWS_DEFAULT_REGION",
                 "STORAGE_EMULATOR_HOST", "KFTUNE_STORAGE_ATTEMPTS", "KFTUNE_STORAGE_RETRY_DELAY"):
        monkeypatch.delenv(name, raising=False)
    for name, value in values.items():
        monkeypatch.setenv(name, value)


def _minio(endpoint: str, access: str = FAKE_KEY, secret: str = FAKE_SECRET):
    from minio import Minio

    return Minio(endpoint.split("://")[1], access_key=access, secret_key=secret, secure=False, region="us-east-1")


# --------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="module")
def moto():
    server = MotoS3().start()
    yield server
    server.stop()


@pytest.fixture
def s3(moto, monkeypatch):
    """Environment for the moto server and a fresh bucket; returns ``s3://bucket``."""
    if not moto.running:  # a test that stops the server restarts it; be safe anyway
        moto.start()
    _set_env(monkeypatch, {"AWS_ENDPOINT_URL": moto.endpoint, "AWS_ACCESS_KEY_ID": FAKE_KEY,
                           "AWS_SECRET_ACCESS_KEY": FAKE_SECRET, "AWS_SESSION_TOKEN": FAKE_TOKEN,
                           "AWS_REGION": "us-east-1", **FAST})
    bucket = f"kftune-{uuid.uuid4().hex[:12]}"
    _minio(moto.endpoint).make_bucket(bucket)
    return f"s3://{bucket}"


@pytest.fixture(scope="module")
def gcs_server():
    server = GcsEmulator().start()
    yield server
    server.stop()


@pytest.fixture
def gcs(gcs_server, monkeypatch):
    """Environment for the GCS emulator and a fresh bucket; returns ``gs://bucket``."""
    from google.cloud import storage as gcs_storage

    _set_env(monkeypatch, {"STORAGE_EMULATOR_HOST": gcs_server.endpoint, **FAST})
    bucket = f"kftune-{uuid.uuid4().hex[:12]}"
    gcs_storage.Client(project="kftune").create_bucket(bucket)
    return f"gs://{bucket}"


def make_model_dir(path: Path, seed: int = 0, weights_kib: int = 300) -> Path:
    """A stand-in for an exported model directory: config, weights, nested tokenizer files."""
    rng = __import__("random").Random(seed)
    (path / "tokenizer").mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"model_type": "bert", "seed": seed}))
    (path / "model.safetensors").write_bytes(rng.randbytes(weights_kib * 1024))
    (path / "tokenizer" / "vocab.txt").write_text("\n".join(f"tok{i}" for i in range(500 + seed)))
    (path / "tokenizer" / "tokenizer_config.json").write_text("{}")
    return path


def tree(path: Path) -> dict[str, bytes]:
    return {p.relative_to(path).as_posix(): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


class FaultyBackend:
    """A real backend whose n-th upload first runs ``fault`` (e.g. stops the server)."""

    def __init__(self, inner, at_upload: int, fault):
        self.inner, self.at_upload, self.fault, self.uploads = inner, at_upload, fault, 0

    def upload(self, path, key):
        self.uploads += 1
        if self.uploads == self.at_upload:
            self.fault()
        return self.inner.upload(path, key)

    def __getattr__(self, name):
        return getattr(self.inner, name)


# --------------------------------------------------------------------------------------------
# URIs and settings (no server)


@pytest.mark.parametrize("text, scheme, bucket, prefix", [
    ("s3://my-bucket/models/sentiment", "s3", "my-bucket", "models/sentiment"),
    ("s3://my-bucket/models/sentiment/", "s3", "my-bucket", "models/sentiment"),
    ("s3://my.bucket", "s3", "my.bucket", ""),
    ("S3://data-1/x.csv", "s3", "data-1", "x.csv"),
    ("gs://my_bucket/a/b.parquet", "gs", "my_bucket", "a/b.parquet"),
    ("/tmp/models", "file", "", "tmp/models"),
    ("file:///tmp/models", "file", "", "tmp/models"),
    ("file://localhost/tmp/models", "file", "", "tmp/models"),
])
def test_parse_uri(text, scheme, bucket, prefix):
    uri = parse_uri(text)
    assert (uri.scheme, uri.bucket, uri.prefix) == (scheme, bucket, prefix)
    assert parse_uri(str(uri)) == uri


def test_parse_relative_path_is_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    uri = parse_uri("models/v")
    assert uri.is_local and uri.path == tmp_path / "models" / "v"


@pytest.mark.parametrize("text, message", [
    ("", "empty"),
    ("   ", "empty"),
    ("s3://", "no bucket"),
    ("s3:///models", "no bucket"),
    ("s3://ab/x", "not a valid bucket"),
    ("s3://My_Bucket/x", "not a valid bucket"),
    ("gs://-bucket/x", "not a valid bucket"),
    ("s3:bucket/x", "write s3://bucket/prefix"),
    ("s3:/bucket/x", "write s3://bucket/prefix"),
    ("gcs://bucket/x", "did you mean gs://"),
    ("s3a://bucket/x", "did you mean s3://"),
    ("https://example.com/x", "unsupported storage scheme"),
    ("s3://bucket/a//b", "empty, '.' or '..'"),
    ("s3://bucket/a/../b", "empty, '.' or '..'"),
    ("file://otherhost/x", "file:///absolute/path"),
])
def test_parse_uri_errors(text, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.").replace("(", r"\(")):
        parse_uri(text)


def test_parse_uri_refuses_credentials_without_repeating_them():
    with pytest.raises(ConfigError) as err:
        parse_uri(f"s3://{FAKE_KEY}:{FAKE_SECRET}@bucket/models")
    assert "credentials belong in the environment" in str(err.value)
    assert FAKE_SECRET not in str(err.value) and FAKE_KEY not in str(err.value)


def test_uri_child_and_str():
    base = parse_uri("s3://bucket/models")
    assert str(base.child("v3", "config.json")) == "s3://bucket/models/v3/config.json"
    assert str(parse_uri("gs://bucket").child("latest")) == "gs://bucket/latest"
    assert str(parse_uri("/srv/models").child("v1")) == "/srv/models/v1"


def test_s3_settings_from_env():
    env = {"AWS_ENDPOINT_URL": "https://s3.example.com", "S3_ENDPOINT": "http://ignored:1",
           "AWS_ACCESS_KEY_ID": FAKE_KEY, "AWS_SECRET_ACCESS_KEY": FAKE_SECRET, "AWS_DEFAULT_REGION": "eu-west-1"}
    s = S3Settings.from_env(env)
    assert (s.endpoint, s.secure, s.region) == ("s3.example.com", True, "eu-west-1")
    # The S3-specific variable wins; the endpoint's scheme sets TLS.
    s = S3Settings.from_env({**env, "AWS_ENDPOINT_URL_S3": "http://minio-service.kubeflow:9000"})
    assert (s.endpoint, s.secure, s.endpoint_url) == ("minio-service.kubeflow:9000", False,
                                                      "http://minio-service.kubeflow:9000")
    assert S3Settings.from_env({"S3_ENDPOINT": "minio:9000"}).secure is True  # no scheme: TLS on
    assert S3Settings.from_env({}).endpoint == "s3.amazonaws.com"
    assert FAKE_SECRET not in repr(S3Settings.from_env(env)) and FAKE_KEY not in repr(S3Settings.from_env(env))


@pytest.mark.parametrize("env, message", [
    ({"AWS_ACCESS_KEY_ID": FAKE_KEY}, "AWS_SECRET_ACCESS_KEY is not set"),
    ({"AWS_SECRET_ACCESS_KEY": FAKE_SECRET}, "AWS_ACCESS_KEY_ID is not set"),
    ({"AWS_ENDPOINT_URL": "ftp://host"}, "must be http:// or https://"),
    ({"AWS_ENDPOINT_URL": "http://host:9000/some/path"}, "has a path"),
    ({"AWS_ENDPOINT_URL": f"http://{FAKE_KEY}:{FAKE_SECRET}@host:9000"}, "must not carry credentials"),
])
def test_s3_settings_errors(env, message):
    with pytest.raises(ConfigError, match=message) as err:
        S3Settings.from_env(env)
    assert FAKE_SECRET not in str(err.value)


def test_retries_transient_then_succeeds_and_permanent_fails_at_once():
    calls = []

    def classify(exc):
        if isinstance(exc, ConnectionError):
            raise Transient("connection refused")

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionError("refused")
        return "ok"

    policy = RetryPolicy(attempts=3, initial_delay=0.001)
    assert storage.with_retries(flaky, "read x", policy, classify) == "ok" and len(calls) == 3
    calls.clear()
    with pytest.raises(StorageUnavailable, match="still failing after 2 attempts"):
        storage.with_retries(flaky, "read x", RetryPolicy(attempts=2, initial_delay=0.001), classify)

    def denied():
        calls.append(1)
        raise ConfigError("access denied")

    calls.clear()
    with pytest.raises(ConfigError):
        storage.with_retries(denied, "read x", policy, classify)
    assert len(calls) == 1


def test_retry_policy_from_env():
    policy = RetryPolicy.from_env({"KFTUNE_STORAGE_ATTEMPTS": "7", "KFTUNE_STORAGE_RETRY_DELAY": "0.25"})
    assert (policy.attempts, policy.initial_delay) == (7, 0.25)
    assert 0.125 <= policy.delay(1) <= 0.25 and policy.delay(20) <= policy.max_delay
    with pytest.raises(ConfigError):
        RetryPolicy.from_env({"KFTUNE_STORAGE_ATTEMPTS": "0"})


def test_digest_file_multipart_etag(tmp_path):
    data = os.urandom(2500)
    path = tmp_path / "blob"
    path.write_bytes(data)
    d = digest_file(path, part_size=1000)
    parts = [hashlib.md5(data[i : i + 1000]).digest() for i in range(0, 2500, 1000)]
    assert d.s3_etag == hashlib.md5(b"".join(parts)).hexdigest() + "-3"
    assert (d.size, d.sha256, d.md5) == (2500, hashlib.sha256(data).hexdigest(), hashlib.md5(data).hexdigest())
    assert digest_file(path, part_size=4096).s3_etag == d.md5  # one part: plain md5


# --------------------------------------------------------------------------------------------
# Ingest


def _write_shards(frame: pd.DataFrame, n: int) -> list[bytes]:
    size = -(-len(frame) // n)
    return [frame.iloc[i * size : (i + 1) * size].to_csv(index=False).encode() for i in range(n)]


def test_fetch_single_object_and_prefix_of_shards(s3, moto, bundled_frame, tmp_path):
    frame = bundled_frame.head(3000).reset_index(drop=True)
    shards = _write_shards(frame, 3)
    client, bucket = _minio(moto.endpoint), s3[5:]
    # Uploaded out of order, with a directory marker and an unrelated neighbour prefix.
    for i in (2, 0, 1):
        client.put_object(bucket, f"raw/reviews/part-{i:05d}.csv", io.BytesIO(shards[i]), len(shards[i]))
    client.put_object(bucket, "raw/reviews/", io.BytesIO(b""), 0)
    client.put_object(bucket, "raw/reviews-old/part-00000.csv", io.BytesIO(b"x"), 1)
    client.put_object(bucket, "raw/single.csv", io.BytesIO(shards[0]), len(shards[0]))

    paths = fetch(f"{s3}/raw/reviews", tmp_path / "shards")
    assert [p.name for p in paths] == ["part-00000.csv", "part-00001.csv", "part-00002.csv"]
    joined = pd.concat([pd.read_csv(p, dtype=object) for p in paths], ignore_index=True)
    pd.testing.assert_frame_equal(joined, frame.astype(object))
    assert fetch(f"{s3}/raw/reviews/", tmp_path / "again") == [tmp_path / "again" / p.name for p in paths]

    (single,) = fetch(f"{s3}/raw/single.csv", tmp_path / "one")
    assert single == tmp_path / "one" / "single.csv" and single.read_bytes() == shards[0]


def test_fetch_keeps_nested_layout_and_local_paths_pass_through(s3, moto, tmp_path):
    client, bucket = _minio(moto.endpoint), s3[5:]
    for key in ("ds/train/data-00000.arrow", "ds/train/state.json", "ds/dataset_dict.json"):
        client.put_object(bucket, key, io.BytesIO(key.encode()), len(key))
    paths = fetch(f"{s3}/ds", tmp_path / "ds")
    assert [p.relative_to(tmp_path / "ds").as_posix() for p in paths] == [
        "dataset_dict.json", "train/data-00000.arrow", "train/state.json"]
    assert (tmp_path / "ds/train/state.json").read_bytes() == b"ds/train/state.json"
    local = tmp_path / "local.csv"
    local.write_text("a\n")
    assert fetch(str(local), tmp_path / "unused") == [local]
    with pytest.raises(DataError, match="no such file"):
        fetch(str(tmp_path / "missing.csv"), tmp_path / "unused")


def test_fetch_nothing_there_and_missing_bucket(s3, tmp_path, caplog):
    with pytest.raises(DataError, match="nothing to read at s3://.*/no/such/prefix"):
        fetch(f"{s3}/no/such/prefix", tmp_path)
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="kftune.storage"):
        with pytest.raises(ConfigError, match=r"no such bucket: s3://kftune-missing-bucket/data \(endpoint http"):
            fetch("s3://kftune-missing-bucket/data", tmp_path)
    assert time.monotonic() - started < 2 and "retrying" not in caplog.text  # permanent: no retries


# --------------------------------------------------------------------------------------------
# Publish and read back (S3)


def test_publish_and_read_back(s3, tmp_path, caplog):
    model = make_model_dir(tmp_path / "model")
    with caplog.at_level(logging.INFO, logger="kftune"):
        result = publish_model(model, f"{s3}/models/sentiment")
    assert result["version"] == "v1" and result["latest"] == "v1"
    assert result["version_uri"] == f"{s3}/models/sentiment/v1"
    assert result["files"] == 4 and result["bytes"] == sum(p.stat().st_size for p in model.rglob("*") if p.is_file())
    # Progress per file, with sizes.
    assert "uploaded 4/4" in caplog.text and "300.0 KiB" in caplog.text and "verified 4 files" in caplog.text

    assert resolve_published(f"{s3}/models/sentiment") == f"{s3}/models/sentiment/v1"
    assert list_versions(f"{s3}/models/sentiment") == ["v1"]
    manifest = download_published(f"{s3}/models/sentiment", tmp_path / "back")
    assert tree(tmp_path / "back") == tree(model)
    assert manifest["uri"] == f"{s3}/models/sentiment/v1"
    assert {f["path"] for f in manifest["files"]} == set(tree(model))
    # The claim is gone; the manifest and latest pointer are there.
    loc = open_location(f"{s3}/models/sentiment")
    keys = {o.key for o in loc.backend.list(loc.key() + "/")}
    assert "models/sentiment/v1/_PUBLISHING.json" not in keys
    assert {"models/sentiment/v1/_MANIFEST.json", "models/sentiment/latest"} <= keys
    assert json.loads(loc.backend.read_bytes("models/sentiment/latest"))["version"] == "v1"


def test_versions_and_latest(s3, tmp_path):
    uri = f"{s3}/models/sentiment"
    first, second = make_model_dir(tmp_path / "m1", seed=1), make_model_dir(tmp_path / "m2", seed=2)
    assert publish_model(first, uri)["version"] == "v1"
    assert publish_model(second, uri)["version"] == "v2"
    assert list_versions(uri) == ["v1", "v2"]
    assert resolve_published(uri) == f"{uri}/v2"
    download_published(uri, tmp_path / "latest")
    download_published(uri, tmp_path / "v1", version="v1")
    download_published(uri, tmp_path / "v1-by-number", version=1)
    assert tree(tmp_path / "latest") == tree(second)
    assert tree(tmp_path / "v1") == tree(first) == tree(tmp_path / "v1-by-number")
    with pytest.raises(DataError, match="v7 is not a complete version"):
        resolve_published(uri, "v7")
    with pytest.raises(ConfigError, match="bad version"):
        resolve_published(uri, "newest")


def test_publish_to_missing_bucket_fails_at_once(s3, tmp_path, caplog):
    model = make_model_dir(tmp_path / "model")
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="kftune.storage"):
        with pytest.raises(ConfigError, match="no such bucket: s3://kftune-nobucket-here"):
            publish_model(model, "s3://kftune-nobucket-here/models")
        with pytest.raises(ConfigError, match="no such bucket"):
            resolve_published("s3://kftune-nobucket-here/models")
    assert time.monotonic() - started < 2 and "retrying" not in caplog.text


def test_nothing_published_and_bad_input(s3, tmp_path):
    with pytest.raises(DataError, match="nothing published at"):
        resolve_published(f"{s3}/empty")
    with pytest.raises(DataError, match="not a directory"):
        publish_model(tmp_path / "missing", f"{s3}/m")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="is empty"):
        publish_model(tmp_path / "empty", f"{s3}/m")
    reserved = make_model_dir(tmp_path / "reserved")
    (reserved / "_MANIFEST.json").write_text("{}")
    with pytest.raises(DataError, match="reserved"):
        publish_model(reserved, f"{s3}/m")


def test_multipart_upload_is_verified_by_etag(s3, tmp_path, monkeypatch):
    # 5 MiB parts (S3's minimum) and an 11 MiB file: a 3-part upload, verified by its
    # multipart ETag without reading it back.
    monkeypatch.setattr(checksums, "S3_PART_SIZE", 5 * 2**20)
    model = make_model_dir(tmp_path / "model", weights_kib=11 * 1024)
    read_back = []
    monkeypatch.setattr(storage.S3Backend, "verify", lambda self, key, digest: read_back.append(key) or False)
    publish_model(model, f"{s3}/big")
    assert read_back == []
    loc = open_location(f"{s3}/big")
    assert loc.backend.stat("big/v1/model.safetensors").checksum.endswith("-3")
    download_published(f"{s3}/big", tmp_path / "back")
    assert tree(tmp_path / "back") == tree(model)


def test_readers_reject_a_tampered_version(s3, moto, tmp_path):
    uri = f"{s3}/models"
    model = make_model_dir(tmp_path / "model")
    publish_model(model, uri)
    client, bucket = _minio(moto.endpoint), s3[5:]
    # Same size, different bytes: caught by the sha256 check on download; nothing lands.
    data = bytearray((model / "config.json").read_bytes())
    data[0] ^= 1
    client.put_object(bucket, "models/v1/config.json", io.BytesIO(bytes(data)), len(data))
    with pytest.raises(DataError, match="does not match its manifest"):
        download_published(uri, tmp_path / "back")
    assert not (tmp_path / "back").exists()
    # A missing file: the version no longer verifies at all.
    client.remove_object(bucket, "models/v1/tokenizer/vocab.txt")
    with pytest.raises(DataError, match="vocab.txt should have .* bytes, missing"):
        resolve_published(uri)


# --------------------------------------------------------------------------------------------
# Interruptions, retries, concurrency


def test_server_stopped_mid_upload_leaves_nothing_complete_then_retry_succeeds(s3, moto, tmp_path, caplog):
    uri = f"{s3}/models"
    first, second = make_model_dir(tmp_path / "m1", seed=1), make_model_dir(tmp_path / "m2", seed=2)
    publish_model(first, uri)

    # The server dies after the first file of the second publish has been uploaded.
    faulty = FaultyBackend(open_location(uri).backend, at_upload=2, fault=moto.stop)
    with caplog.at_level(logging.WARNING, logger="kftune"):
        with pytest.raises(StorageUnavailable, match=r"upload s3://.*/models/v2/.*still failing after 3 attempts"):
            publish_model(second, uri, backend=faulty)
    assert "left incomplete (no manifest)" in caplog.text and "Connection refused" in caplog.text

    moto.start()  # back, with what it had stored
    loc = open_location(uri)
    partial = [o.key for o in loc.backend.list("models/v2/")]
    assert partial == ["models/v2/_PUBLISHING.json", "models/v2/config.json"]  # half an upload ...
    assert list_versions(uri) == ["v1"]  # ... that does not look complete
    assert resolve_published(uri) == f"{uri}/v1"
    with pytest.raises(DataError, match="v2 is not a complete version"):
        resolve_published(uri, "v2")
    download_published(uri, tmp_path / "still-v1")
    assert tree(tmp_path / "still-v1") == tree(first)

    # A retry succeeds under a new number; the leftovers are young, so they stay for now ...
    result = publish_model(second, uri)
    assert result["version"] == "v3" and result["latest"] == "v3" and result["removed"] == []
    assert list_versions(uri) == ["v1", "v3"]
    download_published(uri, tmp_path / "v3")
    assert tree(tmp_path / "v3") == tree(second)
    # ... and go once they are older than stale_after_s.
    assert publish_model(first, uri, stale_after_s=0)["removed"] == ["v2"]
    assert loc.backend.list("models/v2/") == []
    assert list_versions(uri) == ["v1", "v3", "v4"]


def test_server_back_within_the_backoff_lets_the_same_publish_finish(s3, moto, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("KFTUNE_STORAGE_ATTEMPTS", "8")
    monkeypatch.setenv("KFTUNE_STORAGE_RETRY_DELAY", "0.1")
    uri = f"{s3}/models"
    model = make_model_dir(tmp_path / "m")

    def outage():
        moto.stop()
        threading.Timer(0.5, moto.start).start()

    faulty = FaultyBackend(open_location(uri).backend, at_upload=3, fault=outage)
    with caplog.at_level(logging.WARNING, logger="kftune.storage"):
        result = publish_model(model, uri, backend=faulty)
    assert "retrying" in caplog.text
    assert result["version"] == "v1" and resolve_published(uri) == f"{uri}/v1"
    download_published(uri, tmp_path / "back")
    assert tree(tmp_path / "back") == tree(model)


def test_publish_interrupted_before_latest_moves(s3, tmp_path, monkeypatch, caplog):
    uri = f"{s3}/models"
    model = make_model_dir(tmp_path / "m")

    def crash(*args):
        raise StorageUnavailable("gone")

    with monkeypatch.context() as patched:
        patched.setattr(pub, "_move_latest", crash)
        with pytest.raises(StorageUnavailable):
            publish_model(model, uri)
    # v1 is complete (manifest written) but no latest exists: readers take the highest complete version.
    with caplog.at_level(logging.WARNING, logger="kftune.publish"):
        assert resolve_published(uri) == f"{uri}/v1"
    assert "no latest pointer" in caplog.text
    assert publish_model(model, uri)["latest"] == "v2"


def test_conditional_writes(s3, tmp_path):
    loc = open_location(f"{s3}/c")
    b = loc.backend
    b.write_bytes("c/claim", b"first", if_absent=True)
    with pytest.raises(PreconditionFailed):
        b.write_bytes("c/claim", b"second", if_absent=True)
    data, token = b.read_with_token("c/claim")
    b.write_bytes("c/claim", b"third", if_match=token)
    with pytest.raises(PreconditionFailed):
        b.write_bytes("c/claim", b"fourth", if_match=token)
    assert b.read_bytes("c/claim") == b"third"


def test_latest_never_moves_backwards(s3, tmp_path):
    uri = f"{s3}/models"
    publish_model(make_model_dir(tmp_path / "a", seed=1), uri)
    publish_model(make_model_dir(tmp_path / "b", seed=2), uri)
    assert pub._move_latest(open_location(uri), 1, "x") == 2
    assert resolve_published(uri) == f"{uri}/v2"


def test_racing_publishers_get_distinct_versions(s3, tmp_path, monkeypatch, caplog):
    uri = f"{s3}/models"
    models = [make_model_dir(tmp_path / f"m{i}", seed=i) for i in range(3)]
    barrier = threading.Barrier(3)
    real_scan = pub._scan

    def scan_together(loc):  # every publisher sees the same "highest version" and races for the next
        result = real_scan(loc)
        barrier.wait(timeout=30)
        return result

    monkeypatch.setattr(pub, "_scan", scan_together)
    caplog.set_level(logging.INFO, logger="kftune.publish")
    results, errors = [], []

    def run(model):
        try:
            results.append((model, publish_model(model, uri)))
        except Exception as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(m,)) for m in models]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []
    assert sorted(r["version"] for _, r in results) == ["v1", "v2", "v3"]
    # They did collide: all three went for v1 and two lost the create-if-absent claim.
    assert caplog.text.count("v1 is being published by someone else") == 2
    monkeypatch.setattr(pub, "_scan", real_scan)
    assert list_versions(uri) == ["v1", "v2", "v3"]
    assert resolve_published(uri) == f"{uri}/v3"
    for model, result in results:  # each version holds exactly what its publisher uploaded
        download_published(uri, tmp_path / "back" / result["version"], version=result["version"])
        assert tree(tmp_path / "back" / result["version"]) == tree(model)


# --------------------------------------------------------------------------------------------
# Credentials


@pytest.fixture(scope="module")
def moto_auth():
    server = MotoS3WithAuth().start("kftune-auth")
    yield server
    server.stop()


def test_wrong_credentials_fail_at_once_with_a_clear_message(moto_auth, monkeypatch, tmp_path, caplog):
    model = make_model_dir(tmp_path / "model")
    base = {"AWS_ENDPOINT_URL": moto_auth.endpoint, "AWS_REGION": "us-east-1",
            "KFTUNE_STORAGE_ATTEMPTS": "5", "KFTUNE_STORAGE_RETRY_DELAY": "2"}  # a retry would show in the time
    _set_env(monkeypatch, {**base, "AWS_ACCESS_KEY_ID": moto_auth.access_key,
                           "AWS_SECRET_ACCESS_KEY": moto_auth.secret_key})
    assert publish_model(model, "s3://kftune-auth/models")["version"] == "v1"

    cases = [(moto_auth.access_key, FAKE_SECRET, "SignatureDoesNotMatch"),
             (FAKE_KEY, FAKE_SECRET, "InvalidAccessKeyId")]
    for access, secret, code in cases:
        _set_env(monkeypatch, {**base, "AWS_ACCESS_KEY_ID": access, "AWS_SECRET_ACCESS_KEY": secret})
        for action in (lambda: publish_model(model, "s3://kftune-auth/models"),
                       lambda: fetch("s3://kftune-auth/models/latest", tmp_path / "in"),
                       lambda: download_published("s3://kftune-auth/models", tmp_path / "out")):
            started = time.monotonic()
            with caplog.at_level(logging.DEBUG):
                with pytest.raises(ConfigError, match=f"S3 rejected the credentials \\({code}\\) for "
                                                      "s3://kftune-auth.*check AWS_ACCESS_KEY_ID") as err:
                    action()
            assert time.monotonic() - started < 1.5, "a permanent error must not be retried"
            assert secret not in str(err.value) and secret not in caplog.text
    assert moto_auth.secret_key not in caplog.text
    assert not (tmp_path / "out").exists()


def test_s3rver_rejects_unknown_key_and_survives_a_crash_mid_upload(tmp_path, monkeypatch):
    need(s3rver_command(), "s3rver (npm install --prefix .venv/s3rver s3rver@3.7.1)")  # CI=true: fails without it
    server = S3rver(tmp_path / "s3rver-data").start()
    try:
        _minio(server.endpoint, S3rver.ACCESS_KEY, S3rver.SECRET_KEY).make_bucket("kftune-crash")
        env = {"AWS_ENDPOINT_URL": server.endpoint, "AWS_REGION": "us-east-1", **FAST}
        _set_env(monkeypatch, {**env, "AWS_ACCESS_KEY_ID": FAKE_KEY, "AWS_SECRET_ACCESS_KEY": FAKE_SECRET})
        with pytest.raises(ConfigError, match="InvalidAccessKeyId"):
            publish_model(make_model_dir(tmp_path / "m0"), "s3://kftune-crash/models")
        _set_env(monkeypatch, {**env, "AWS_ACCESS_KEY_ID": S3rver.ACCESS_KEY,
                               "AWS_SECRET_ACCESS_KEY": S3rver.SECRET_KEY})
        uri = "s3://kftune-crash/models"
        first, second = make_model_dir(tmp_path / "m1", seed=1), make_model_dir(tmp_path / "m2", seed=2)
        publish_model(first, uri)
        # kill -9 between files: a real crash of the server process.
        faulty = FaultyBackend(open_location(uri).backend, at_upload=3, fault=server.kill)
        with pytest.raises(StorageUnavailable):
            publish_model(second, uri, backend=faulty)
        server.start()  # same data directory
        assert list_versions(uri) == ["v1"] and resolve_published(uri) == f"{uri}/v1"
        assert publish_model(second, uri)["version"] == "v3"
        download_published(uri, tmp_path / "back")
        assert tree(tmp_path / "back") == tree(second)
    finally:
        server.kill()


def test_no_credential_in_logs_or_errors(s3, moto, tmp_path, caplog, capsys, monkeypatch):
    model = make_model_dir(tmp_path / "model")
    with caplog.at_level(logging.DEBUG):  # everything: kftune, minio/urllib3, moto's server
        publish_model(model, f"{s3}/models")
        publish_model(model, f"{s3}/models")
        download_published(f"{s3}/models", tmp_path / "back", version="v1")
        fetch(f"{s3}/models/v2", tmp_path / "fetched")
        errors = []
        for action in (lambda: fetch("s3://kftune-no-bucket/x", tmp_path),
                       lambda: resolve_published(f"{s3}/nothing")):
            try:
                action()
            except KftuneError as exc:
                errors.append(str(exc))
        # A server outage, with its retries logged.
        faulty = FaultyBackend(open_location(f"{s3}/models").backend, at_upload=1, fault=moto.stop)
        try:
            publish_model(model, f"{s3}/models", backend=faulty)
        except StorageUnavailable as exc:
            errors.append(str(exc))
        finally:
            moto.start()
    out = capsys.readouterr()
    text = caplog.text + out.out + out.err + "\n".join(errors)
    assert len(errors) == 3 and "retrying" in caplog.text and "uploaded 4/4" in caplog.text
    for secret in (FAKE_KEY, FAKE_SECRET, FAKE_TOKEN):
        assert secret not in text


# --------------------------------------------------------------------------------------------
# Google Cloud Storage


@pytest.mark.parametrize("key_file", ["missing", "malformed"])
def test_gcs_bad_credentials_file(key_file, tmp_path, monkeypatch):
    path = tmp_path / "key.json"
    if key_file == "malformed":
        path.write_text(json.dumps({"type": "service_account", "private_key": FAKE_SECRET}))
    _set_env(monkeypatch, {"GOOGLE_APPLICATION_CREDENTIALS": str(path)})
    with pytest.raises(ConfigError, match="no Google Cloud credentials for gs://kftune-models") as err:
        fetch("gs://kftune-models/raw", tmp_path / "in")
    assert FAKE_SECRET not in str(err.value)


def test_gcs_publish_read_back_and_versions(gcs, tmp_path):
    uri = f"{gcs}/models/sentiment"
    first, second = make_model_dir(tmp_path / "m1", seed=1), make_model_dir(tmp_path / "m2", seed=2)
    assert publish_model(first, uri)["version"] == "v1"
    assert resolve_published(uri) == f"{uri}/v1"
    assert publish_model(second, uri)["latest"] == "v2"
    assert list_versions(uri) == ["v1", "v2"]
    download_published(uri, tmp_path / "latest")
    download_published(uri, tmp_path / "v1", version="v1")
    assert tree(tmp_path / "latest") == tree(second) and tree(tmp_path / "v1") == tree(first)


def test_gcs_fetch_prefix_and_missing_bucket(gcs, bundled_frame, tmp_path, caplog):
    from google.cloud import storage as gcs_storage

    frame = bundled_frame.head(900).reset_index(drop=True)
    bucket = gcs_storage.Client(project="kftune").bucket(gcs[5:])
    for i, shard in enumerate(_write_shards(frame, 3)):
        bucket.blob(f"raw/part-{i}.csv").upload_from_string(shard)
    paths = fetch(f"{gcs}/raw", tmp_path / "in")
    joined = pd.concat([pd.read_csv(p, dtype=object) for p in paths], ignore_index=True)
    pd.testing.assert_frame_equal(joined, frame.astype(object))
    (one,) = fetch(f"{gcs}/raw/part-1.csv", tmp_path / "one")
    assert one.read_bytes() == bucket.blob("raw/part-1.csv").download_as_bytes()

    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="kftune.storage"):
        with pytest.raises(ConfigError, match="no such bucket: gs://kftune-absent"):
            publish_model(make_model_dir(tmp_path / "m"), "gs://kftune-absent/models")
        with pytest.raises(ConfigError, match="no such bucket: gs://kftune-absent"):
            fetch("gs://kftune-absent/raw", tmp_path)
    assert time.monotonic() - started < 2 and "retrying" not in caplog.text


def test_gcs_server_stopped_mid_upload(gcs, gcs_server, tmp_path):
    uri = f"{gcs}/models"
    first, second = make_model_dir(tmp_path / "m1", seed=1), make_model_dir(tmp_path / "m2", seed=2)
    publish_model(first, uri)
    faulty = FaultyBackend(open_location(uri).backend, at_upload=2, fault=gcs_server.stop)
    try:
        with pytest.raises(StorageUnavailable, match="gs://.*/models/v2/"):
            publish_model(second, uri, backend=faulty)
    finally:
        gcs_server.start()
    assert list_versions(uri) == ["v1"] and resolve_published(uri) == f"{uri}/v1"
    assert publish_model(second, uri)["version"] == "v3"
    download_published(uri, tmp_path / "back")
    assert tree(tmp_path / "back") == tree(second)


# --------------------------------------------------------------------------------------------
# Local paths


def test_local_publish_versions_and_claims(tmp_path):
    uri = str(tmp_path / "registry" / "sentiment")
    first, second = make_model_dir(tmp_path / "m1", seed=1), make_model_dir(tmp_path / "m2", seed=2)
    assert publish_model(first, uri)["version"] == "v1"
    assert publish_model(second, f"file://{uri}")["version"] == "v2"
    assert resolve_published(uri) == f"{uri}/v2"
    download_published(uri, tmp_path / "v1", version="v1")
    assert tree(tmp_path / "v1") == tree(first)
    assert json.loads((tmp_path / "registry/sentiment/latest").read_text())["version"] == "v2"
    assert not (tmp_path / "registry/sentiment/v2/_PUBLISHING.json").exists()
    backend = open_location(uri).backend
    key = str(tmp_path / "registry/sentiment/v9/_PUBLISHING.json").lstrip("/")
    backend.write_bytes(key, b"{}", if_absent=True)
    with pytest.raises(PreconditionFailed):
        backend.write_bytes(key, b"{}", if_absent=True)
    # A half-written version (claim only) is ignored and its number skipped; once stale it goes,
    # and its emptied directory with it.
    assert list_versions(uri) == ["v1", "v2"] and publish_model(first, uri)["version"] == "v10"
    assert publish_model(first, uri, stale_after_s=0)["removed"] == ["v9"]
    assert sorted(p.name for p in (tmp_path / "registry/sentiment").iterdir()) == ["latest", "v1", "v10", "v11", "v2"]
    with pytest.raises(ConfigError, match="not an empty directory"):
        download_published(uri, tmp_path / "v1")


# --------------------------------------------------------------------------------------------
# The KFP component


def test_component_compiles_with_secret_and_no_credential_values(tmp_path, monkeypatch):
    from kfp import compiler, dsl

    from kftune.components.publish.component import publish
    from kftune.pipelines.secrets import use_s3_secret

    _set_env(monkeypatch, {"AWS_ACCESS_KEY_ID": FAKE_KEY, "AWS_SECRET_ACCESS_KEY": FAKE_SECRET})
    op = dsl.component(publish, base_image="ghcr.io/kftune/kftune-publish:test", install_kfp_package=False)

    @dsl.pipeline(name="publish-only")
    def pipeline():  # no parameters: this module's annotations are strings, which KFP cannot read
        model = dsl.importer(artifact_uri="s3://models/in", artifact_class=dsl.Model)
        task = op(model=model.output, publish_uri="s3://models/sentiment")
        use_s3_secret(task, "mlpipeline-minio-artifact", endpoint="http://minio-service.kubeflow:9000",
                      region="us-east-1")

    path = tmp_path / "publish.yaml"
    compiler.Compiler().compile(pipeline, str(path))
    text = path.read_text()
    assert "mlpipeline-minio-artifact" in text and "AWS_SECRET_ACCESS_KEY" in text
    assert "minio-service.kubeflow:9000" in text
    for secret in (FAKE_KEY, FAKE_SECRET):
        assert secret not in text


def test_preprocess_ingests_a_prefix_of_shards_and_names_the_object_on_bad_rows(s3, moto, bundled_frame, tmp_path):
    from kftune.data.labelled import read_labelled_data

    frame = bundled_frame.head(900).reset_index(drop=True)
    shards = _write_shards(frame, 3)
    client, bucket = _minio(moto.endpoint), s3[5:]
    for i, shard in enumerate(shards):
        client.put_object(bucket, f"raw/reviews/part-{i:05d}.csv", io.BytesIO(shard), len(shard))
    read = read_labelled_data(f"{s3}/raw/reviews")
    assert read["text"].tolist() == frame["text"].tolist() and read["label"].tolist() == frame["label"].tolist()
    one = read_labelled_data(f"{s3}/raw/reviews/part-00001.csv")
    assert one["text"].tolist() == frame["text"].iloc[300:600].tolist()

    bad = b"text,label\n\"unterminated,1\n"
    client.put_object(bucket, "raw/bad/part-00000.csv", io.BytesIO(bad), len(bad))
    with pytest.raises(DataError) as error:
        read_labelled_data(f"{s3}/raw/bad")
    assert f"{s3}/raw/bad/part-00000.csv" in str(error.value) and "kftune-ingest" not in str(error.value)
    with pytest.raises(DataError, match="no column 'review'"):
        read_labelled_data(f"{s3}/raw/reviews", text_column="review")


def test_no_credential_value_reaches_the_compiled_pipelines(tmp_path, monkeypatch):
    from kftune.cli.main import main

    _set_env(monkeypatch, {"AWS_ACCESS_KEY_ID": FAKE_KEY, "AWS_SECRET_ACCESS_KEY": FAKE_SECRET,
                           "AWS_SESSION_TOKEN": FAKE_TOKEN, "AWS_ENDPOINT_URL": "http://127.0.0.1:9"})
    for pipeline in ("finetune", "tune"):
        out = tmp_path / f"{pipeline}.yaml"
        assert main(["compile", "--pipeline", pipeline, "--output", str(out)]) == 0
        text = out.read_text()
        assert "s3://" in text  # the data parameter documents object-store input
        for value in (FAKE_KEY, FAKE_SECRET, FAKE_TOKEN):
            assert value not in text


def test_pretrained_model_from_s3_is_fetched_once_into_the_cache(s3, moto, tiny_model, tmp_path, monkeypatch):
    from transformers import AutoConfig, AutoTokenizer

    from kftune import storage as storage_module
    from kftune.data.bundled import resolve_model

    monkeypatch.setenv("KFTUNE_CACHE", str(tmp_path / "cache"))
    client, bucket = _minio(moto.endpoint), s3[5:]
    for path in sorted(p for p in tiny_model.rglob("*") if p.is_file()):
        client.fput_object(bucket, f"pretrained/tiny/{path.relative_to(tiny_model)}", str(path))

    local = Path(resolve_model(f"{s3}/pretrained/tiny"))
    assert local.is_relative_to(tmp_path / "cache" / "models")
    for path in (p for p in tiny_model.rglob("*") if p.is_file()):
        assert (local / path.relative_to(tiny_model)).read_bytes() == path.read_bytes(), path.name
    assert AutoConfig.from_pretrained(local).num_hidden_layers == \
        AutoConfig.from_pretrained(tiny_model).num_hidden_layers
    assert AutoTokenizer.from_pretrained(local)("a review")["input_ids"] == \
        AutoTokenizer.from_pretrained(tiny_model)("a review")["input_ids"]
    assert not [p for p in local.parent.iterdir() if p.name.startswith(".")]  # no partial download left

    def no_download(*args, **kwargs):
        raise AssertionError("the cached model was downloaded again")

    monkeypatch.setattr(storage_module, "fetch", no_download)
    assert Path(resolve_model(f"{s3}/pretrained/tiny/")) == local  # a trailing slash names the same model


def test_prefix_without_a_model_is_refused_and_nothing_is_cached(s3, moto, tmp_path, monkeypatch):
    from kftune.data.bundled import model_cache_dir, resolve_model

    monkeypatch.setenv("KFTUNE_CACHE", str(tmp_path / "cache"))
    client, bucket = _minio(moto.endpoint), s3[5:]
    client.put_object(bucket, "pretrained/broken/weights.bin", io.BytesIO(b"x" * 10), 10)
    with pytest.raises(KftuneError, match="no config.json under that prefix"):
        resolve_model(f"{s3}/pretrained/broken")
    assert not any(model_cache_dir().iterdir())


def test_multinode_and_katib_runs_stage_a_remote_pretrained_model_on_the_shared_volume(
        s3, moto, tiny_model, tmp_path, monkeypatch):
    """Worker and trial pods get no storage Secret: the launcher fetches the model and copies it to the volume."""
    from kftune.training.config import TrainConfig
    from kftune.training.staging import CONFIG_FILE, stage_run_dir

    monkeypatch.setenv("KFTUNE_CACHE", str(tmp_path / "cache"))
    client, bucket = _minio(moto.endpoint), s3[5:]
    for path in sorted(p for p in tiny_model.rglob("*") if p.is_file()):
        client.fput_object(bucket, f"pretrained/tiny/{path.relative_to(tiny_model)}", str(path))
    dataset = tmp_path / "dataset"
    dataset.mkdir()
    (dataset / "data.txt").write_text("tokenized")
    shared = tmp_path / "shared"
    run_dir = shared / "runs" / "kftune-train-abc"

    staged = stage_run_dir(TrainConfig(model=f"{s3}/pretrained/tiny"), dataset, run_dir, shared)

    assert staged.model == str(run_dir / "pretrained")
    assert json.loads((run_dir / CONFIG_FILE).read_text())["model"] == str(run_dir / "pretrained")
    for path in (p for p in tiny_model.rglob("*") if p.is_file()):
        assert (run_dir / "pretrained" / path.relative_to(tiny_model)).read_bytes() == path.read_bytes()

    broken = shared / "runs" / "kftune-train-def"
    with pytest.raises(KftuneError, match=r"nothing to read at s3://.*/pretrained/missing"):
        stage_run_dir(TrainConfig(model=f"{s3}/pretrained/missing"), dataset, broken, shared)
    assert not broken.exists()  # nothing half-staged for a worker to start from
