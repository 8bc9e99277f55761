"""One MLflow run, recorded by every stage of a pipeline run, never at the cost of the work it records.

The train stage starts the run (:meth:`Tracker.start`) and leaves its address, ``tracking.json``, in the model it
writes; evaluate and export find the run there (:meth:`Tracker.from_artifact`), and the training worker through
MLflow's own environment variables (``MLFLOW_TRACKING_URI``, ``MLFLOW_RUN_ID``: :meth:`Tracker.from_env`).

Every record goes through :meth:`Tracker.send`: when the tracking server does not answer, the record is retried
once, then written to a spool file (one JSON line each, in order) and the work goes on; records that come while
the server is away join the spool without waiting on it, and the first record after ``retry_seconds`` tries the
server again and, when it answers, sends the spool first. What is still spooled when the stage ends is sent by
:func:`replay` (``kftune track replay DIR``), which ends the run last, so a run becomes complete.
"""

from __future__ import annotations

import getpass
import json
import logging
import math
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from kftune import __version__
from kftune.errors import KftuneError
from kftune.tracking.config import TrackingConfig

log = logging.getLogger(__name__)

TRACKING_FILE = "tracking.json"
"""In a model artifact: the tracking URI and run id of the run that made it."""
SPOOL_SUFFIX = ".tracking-pending.jsonl"
ENV_SPOOL_DIR = "KFTUNE_TRACKING_SPOOL_DIR"
ENV_URI, ENV_RUN_ID = "MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID"  # MLflow's own names
ENV_PIPELINE = "KFTUNE_PIPELINE"
"""The pipeline a stage runs in (finetune, tune): set on the train task, and by kftune run/tune for local runs."""
# Errors of the record, not of the server: sending it again would fail again.
PERMANENT_ERRORS = {"INVALID_PARAMETER_VALUE", "RESOURCE_ALREADY_EXISTS", "RESOURCE_DOES_NOT_EXIST", "INVALID_STATE",
                    "BAD_REQUEST", "PERMISSION_DENIED", "UNAUTHENTICATED"}
PARAM_VALUE_LIMIT, BATCH_LIMIT = 6000, 100  # MLflow's limits on a param's value and a log_batch's params


def _client(uri: str):
    # MLflow itself retries a failed request 7 times with exponential backoff (minutes); kftune retries once and
    # spools, so a server that is down holds no stage up.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # kftune's console says where runs are
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _permanent(error: Exception) -> bool:
    from mlflow.exceptions import MlflowException

    return isinstance(error, MlflowException) and error.error_code in PERMANENT_ERRORS


def git_commit() -> str:
    """The commit of the kftune checkout running, or "" (an installed wheel, an image)."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True,
                             timeout=5)
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""


def default_tags() -> dict[str, str]:
    """What every run says of where it came from."""
    tags = {"kftune.version": __version__, "mlflow.source.name": "kftune", "mlflow.source.type": "JOB"}
    if os.environ.get(ENV_PIPELINE):
        tags["kftune.pipeline"] = os.environ[ENV_PIPELINE]
    commit = os.environ.get("KFTUNE_GIT_COMMIT") or git_commit()
    if commit:
        tags["mlflow.source.git.commit"] = commit
    try:
        tags["mlflow.user"] = getpass.getuser()
    except (KeyError, OSError):  # a container user without a passwd entry
        pass
    return tags


def pod_image_tags(stage: str) -> dict[str, str]:
    """On a cluster, in KFP's executor pod (``KFP_POD_NAME``, which KFP sets): the image the stage runs and its
    digest, from the pod's status (``kftune.image.<stage>``, ``kftune.image_digest.<stage>``); {} elsewhere, or
    where the pod cannot be read (the pipeline's service account may not get pods)."""
    pod_name = os.environ.get("KFP_POD_NAME")
    if not pod_name:
        return {}
    try:
        from kubernetes import client

        from kftune.cluster.kube import current_namespace, kube_api_client

        api = kube_api_client()
        try:
            pod = client.CoreV1Api(api).read_namespaced_pod(pod_name, current_namespace())
        finally:
            api.close()
        statuses = pod.status.container_statuses or []
        main = next((s for s in statuses if s.name == "main"), None)  # KFP's executor container
        if main is None:
            return {}
        return {f"kftune.image.{stage}": main.image, f"kftune.image_digest.{stage}": main.image_id}
    except Exception as e:  # noqa: BLE001 -- a tag is not worth a failed stage
        log.info("tracking: could not read the image of pod %s (%s)", pod_name, _short(e))
        return {}


def _experiment_id(client, uri: str, name: str) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    location = None
    if uri.startswith("sqlite:///"):  # artifacts beside the embedded store, not in the working directory
        location = (Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts" / name).resolve().as_uri()
    try:
        return client.create_experiment(name, artifact_location=location)
    except Exception as e:  # another stage made it meanwhile
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        log.debug("experiment %s created meanwhile (%s)", name, e)
        return experiment.experiment_id


def _apply(client, run_id: str, record: dict, base: Path | None = None) -> None:
    """Send one record of the spool's format to the run."""
    from mlflow.entities import Metric, Param, RunTag

    kind = record["kind"]
    if kind == "batch":
        client.log_batch(run_id, metrics=[Metric(k, v, t, s) for k, v, t, s in record.get("metrics", [])],
                         params=[Param(k, v) for k, v in record.get("params", [])],
                         tags=[RunTag(k, v) for k, v in record.get("tags", [])], synchronous=True)
    elif kind == "artifact":
        path = Path(record["path"])
        if not path.is_absolute() and base is not None:
            path = base / path
        if path.is_dir():
            client.log_artifacts(run_id, str(path), record.get("artifact_path"))
        elif path.is_file():
            client.log_artifact(run_id, str(path), record.get("artifact_path"))
        else:
            log.warning("tracking: %s is gone; not recorded", path)
    elif kind == "text":
        client.log_text(run_id, record["text"], record["artifact_file"])
    elif kind == "dataset":
        from mlflow.entities import Dataset, DatasetInput, InputTag

        dataset = Dataset(record["name"], record["digest"], record["source_type"], record["source"],
                          profile=json.dumps(record.get("profile", {})))
        client.log_inputs(run_id, [DatasetInput(dataset, [InputTag("mlflow.data.context", record["context"])])])
    elif kind == "end":
        client.set_terminated(run_id, record["status"], end_time=record["time"])
    else:
        raise ValueError(f"unknown tracking record {kind!r}")


def flat(values: dict, prefix: str = "") -> dict[str, str]:
    """Settings as MLflow params: nested values flattened with dots, every value a string within MLflow's limit."""
    out = {}
    for key, value in values.items():
        if isinstance(value, dict) and value:
            out.update(flat(value, f"{prefix}{key}."))
        else:
            text = value if isinstance(value, str) else json.dumps(value)
            out[f"{prefix}{key}"] = text[:PARAM_VALUE_LIMIT]
    return out


class Tracker:
    """Records into the MLflow run ``run_id`` at ``uri``; what cannot reach it waits in ``spool`` (module
    docstring)."""

    def __init__(self, uri: str, run_id: str, spool: Path | None, retry_seconds: float = 30.0):
        self.uri, self.run_id, self.spool, self.retry_seconds = uri, run_id, spool, retry_seconds
        self.client = _client(uri)
        self.offline_until = 0.0

    # -- finding the run --------------------------------------------------------------------------------------

    @classmethod
    def start(cls, config: TrackingConfig, run_name: str, tags: dict, spool_dir: str | Path | None, stage: str,
              parent_run_id: str = "") -> Tracker | None:
        """A new run in ``config``'s experiment, or None where tracking is off or the server cannot be reached
        (a warning: the work goes on untracked)."""
        if not config.enabled:
            return None
        client = _client(config.tracking_uri)
        run_tags = default_tags() | pod_image_tags(stage) | {k: str(v) for k, v in tags.items()}
        if parent_run_id:
            run_tags["mlflow.parentRunId"] = parent_run_id
        for attempt in (1, 2):
            try:
                experiment_id = _experiment_id(client, config.tracking_uri, config.experiment_name)
                run = client.create_run(experiment_id, run_name=run_name, tags=run_tags)
                break
            except Exception as e:  # noqa: BLE001 -- tracking never fails the run
                if attempt == 2 or _permanent(e):
                    log.warning("tracking: could not start an MLflow run at %s (%s); this run is not tracked",
                                config.tracking_uri, _short(e))
                    return None
                time.sleep(1.0)
        tracker = cls(config.tracking_uri, run.info.run_id, spool_path(spool_dir, run.info.run_id, stage))
        log.info("tracking: MLflow run %s (%s) at %s", run.info.run_id, run_name, config.tracking_uri)
        return tracker

    @classmethod
    def from_artifact(cls, directory: str | Path, spool_dir: str | Path | None, stage: str) -> Tracker | None:
        """The run that made the artifact ``directory`` (its ``tracking.json``), or None where it was not tracked."""
        file = Path(directory) / TRACKING_FILE
        if not file.is_file():
            return None
        address = json.loads(file.read_text(encoding="utf-8"))
        return cls(address["tracking_uri"], address["run_id"], spool_path(spool_dir, address["run_id"], stage))

    @classmethod
    def from_env(cls, stage: str) -> Tracker | None:
        """The run a launcher named in MLflow's environment variables (the training worker's), or None."""
        uri, run_id = os.environ.get(ENV_URI, ""), os.environ.get(ENV_RUN_ID, "")
        if not (uri and run_id):
            return None
        return cls(uri, run_id, spool_path(os.environ.get(ENV_SPOOL_DIR), run_id, stage))

    def env(self) -> dict[str, str]:
        """The environment that lets a child process (the training worker) record into this run."""
        env = {ENV_URI: self.uri, ENV_RUN_ID: self.run_id}
        if self.spool is not None:
            env[ENV_SPOOL_DIR] = str(self.spool.parent)
        return env

    def write(self, directory: str | Path) -> None:
        """Leave this run's address in the artifact ``directory`` for the stages after."""
        (Path(directory) / TRACKING_FILE).write_text(
            json.dumps({"tracking_uri": self.uri, "run_id": self.run_id}, indent=2), encoding="utf-8")

    # -- records ----------------------------------------------------------------------------------------------

    def params(self, values: dict) -> None:
        items = sorted(flat(values).items())
        for first in range(0, len(items), BATCH_LIMIT):
            self.send({"kind": "batch", "params": items[first : first + BATCH_LIMIT]})

    def metrics(self, values: dict, step: int = 0) -> None:
        """Numeric ``values`` (others are skipped) at ``step``."""
        now = int(time.time() * 1000)
        metrics = [[k, float(v), now, int(step)] for k, v in values.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)]
        if metrics:
            self.send({"kind": "batch", "metrics": metrics})

    def tags(self, values: dict) -> None:
        if not values:
            return
        self.send({"kind": "batch", "tags": [[k, str(v)] for k, v in values.items()]})

    def artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """A file, or a directory's files, under ``artifact_path`` of the run's artifacts."""
        self.send({"kind": "artifact", "path": str(Path(path).resolve()), "artifact_path": artifact_path})

    def text(self, text: str, artifact_file: str) -> None:
        """A text file (a JSON document, say) among the run's artifacts, at ``artifact_file``."""
        self.send({"kind": "text", "text": text, "artifact_file": artifact_file})

    def dataset(self, name: str, digest: str, source: str, context: str, profile: dict | None = None) -> None:
        """The run's input dataset (MLflow's dataset inputs): ``name``, content ``digest``, where it came from."""
        self.send({"kind": "dataset", "name": name, "digest": digest, "source_type": "local" if "://" not in source
                   else source.split("://")[0], "source": json.dumps({"uri": source}), "context": context,
                   "profile": profile or {}})

    def finish(self, status: str = "FINISHED") -> None:
        """End the run: FINISHED, FAILED or KILLED."""
        self.send({"kind": "end", "status": status, "time": int(time.time() * 1000)})

    def send(self, record: dict) -> None:
        """Record now, or spool it (module docstring). Never raises."""
        if time.monotonic() < self.offline_until or (self.pending() and not self.flush()):
            self._spool(record)
            return
        for attempt in (1, 2):
            try:
                _apply(self.client, self.run_id, record)
                return
            except Exception as e:  # noqa: BLE001 -- tracking never fails the work
                if _permanent(e):
                    log.warning("tracking: MLflow refused a %s record (%s); not recorded", record["kind"], _short(e))
                    return
                if attempt == 2:
                    self.offline_until = time.monotonic() + self.retry_seconds
                    self._spool(record)
                    log.warning("tracking: MLflow at %s does not answer (%s); records wait in %s and go when it "
                                "answers again (or: kftune track replay %s)", self.uri, _short(e), self.spool,
                                self.spool.parent if self.spool else "DIR")
                    return
                time.sleep(1.0)

    # -- the spool --------------------------------------------------------------------------------------------

    def pending(self) -> bool:
        return self.spool is not None and self.spool.is_file()

    def _spool(self, record: dict) -> None:
        if self.spool is None:
            return
        self.spool.parent.mkdir(parents=True, exist_ok=True)
        new = not self.spool.exists()
        with self.spool.open("a", encoding="utf-8") as f:
            if new:
                f.write(json.dumps({"kind": "run", "tracking_uri": self.uri, "run_id": self.run_id}) + "\n")
            f.write(json.dumps(record) + "\n")

    def flush(self) -> bool:
        """Send the spool (ends of runs last); True when it is all sent and gone."""
        try:
            send_spool(self.spool, self.client, ends=True)
        except _Unreachable:
            self.offline_until = time.monotonic() + self.retry_seconds
            return False
        return True


class _Unreachable(Exception):
    pass


def _short(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return text[0][:200] if text else type(error).__name__


def _records(spool: Path) -> tuple[dict, list[dict]]:
    lines = [json.loads(line) for line in spool.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not lines or lines[0].get("kind") != "run":
        raise KftuneError(f"{spool}: not a kftune tracking spool (its first line must name the run)")
    return lines[0], lines[1:]


def send_spool(spool: Path, client=None, ends: bool = True) -> list[dict]:
    """Send ``spool``'s records in order and delete it; with ``ends`` False the run's end is returned, not sent.
    Raises _Unreachable, leaving the unsent records in the file, when the server stops answering."""
    header, records = _records(spool)
    client = client or _client(header["tracking_uri"])
    held = []
    for done, record in enumerate(records):
        if record["kind"] == "end" and not ends:
            held.append(record)
            continue
        try:
            _apply(client, header["run_id"], record, base=spool.parent)
        except Exception as e:  # noqa: BLE001
            if _permanent(e):
                log.warning("tracking: MLflow refused a spooled %s record (%s); dropped", record["kind"], _short(e))
                continue
            tmp = spool.with_name(spool.name + ".tmp")
            tmp.write_text("".join(json.dumps(r) + "\n" for r in [header, *held, *records[done:]]),
                           encoding="utf-8")
            os.replace(tmp, spool)
            raise _Unreachable(_short(e)) from e
    spool.unlink()
    return [{**header, **r} for r in held]


def spool_path(spool_dir: str | Path | None, run_id: str, stage: str) -> Path | None:
    return Path(spool_dir) / f"{run_id}-{stage}{SPOOL_SUFFIX}" if spool_dir else None


def spools(directory: str | Path) -> Iterator[Path]:
    """The spool files under ``directory``, oldest first."""
    yield from sorted(Path(directory).rglob(f"*{SPOOL_SUFFIX}"), key=lambda p: p.stat().st_mtime)


def replay(directory: str | Path, tracking_uri: str = "") -> dict[str, int]:
    """Send every spool under ``directory`` (to ``tracking_uri`` where given, else to the server each names), the
    runs' ends after everything else: {"files": n, "records": n}. Raises KftuneError when a server still does not
    answer (what was not sent stays spooled)."""
    files = list(spools(directory))
    count, ends = 0, []
    for spool in files:
        header, records = _records(spool)
        if tracking_uri:
            header["tracking_uri"] = tracking_uri
        count += len(records)
        try:
            held = send_spool(spool, _client(header["tracking_uri"]), ends=False)
        except _Unreachable as e:
            raise KftuneError(f"tracking: MLflow at {header['tracking_uri']} does not answer ({e}); {spool} and the "
                              "spools after it are kept: replay again when it answers") from e
        ends += [{**end, "tracking_uri": header["tracking_uri"]} for end in held]
    for end in ends:
        _apply(_client(end["tracking_uri"]), end["run_id"], end)
    return {"files": len(files), "records": count}
