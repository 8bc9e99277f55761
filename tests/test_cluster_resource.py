"""The shared lifecycle of cluster resources (src/kftune/cluster/lifecycle.py): adopting what a
lost create made, one deadline for the whole run, retries of single calls, and the cleanup policy of
each kind, through the three launchers and through a resource defined here, all against the fake
Kubernetes API server (no real one can run here)."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal

import pytest

from kftune.cluster.kube import MAX_API_ERRORS
from kftune.cluster.lifecycle import (
    DELETE_RETRIES,
    Cleanup,
    ClusterResource,
    Outcome,
    run_resource,
)
from kftune.components.deploy.deploy import deploy_inference_service, inference_service_doc
from kftune.components.train.trainjob import build_trainjob, run_trainjob
from kftune.components.tune.katib import run_experiment
from kftune.errors import KftuneError
from tests.fake_kube_api import FakeKatibScenario, FakeKServeScenario, FakeKubeApiServer, Scenario
from tests.test_deploy import make_request as make_deploy_request
from tests.test_katib import make_request as make_katib_request
from tests.test_trainjob import make_request as make_trainjob_request

FAST = dict(poll_seconds=0.01, timeout_seconds=10)
TRAINJOB = "/apis/trainer.kubeflow.org/v1alpha1/namespaces/team-a/trainjobs"
JOB_NAME = "kftune-train-test0001"
CLUSTER_RESOURCE_LOGGER = "kftune.cluster.lifecycle"


@pytest.fixture
def kube():
    """Start a FakeKubeApiServer; returns the server and a real API client."""
    with contextlib.ExitStack() as stack:

        def start(**scenarios) -> tuple[FakeKubeApiServer, object]:
            server = stack.enter_context(FakeKubeApiServer(**scenarios))
            api_client = server.api_client()
            stack.callback(api_client.close)
            return server, api_client

        yield start


def someone_elses_trainjob(server: FakeKubeApiServer) -> dict:
    """A TrainJob of the name the tests use, created by someone else (no kftune labels)."""
    body = build_trainjob(make_trainjob_request()).to_dict()
    body["metadata"]["labels"] = {"team": "other"}
    server.jobs[("team-a", JOB_NAME)] = body
    server.polls[("team-a", JOB_NAME)] = 0
    return body


# --- create, or adopt what a lost create made ---------------------------------------------------


def test_a_create_whose_answer_was_lost_is_retried_and_adopted(kube):
    made: list[str] = []
    server, api_client = kube(scenario=Scenario(on_finish=lambda job: made.append(job["metadata"]["uid"])))
    server.fail("POST", "/trainjobs", status=503, after=True)  # the job is created, the answer lost
    lines: list[str] = []

    handle = run_trainjob(make_trainjob_request(), api_client, log=lines.append, **FAST)

    assert len(server.calls("POST", "/trainjobs")) == 2  # the retry was answered 409
    assert handle["status"] == "Complete" and handle["uid"] == made[0]  # the job the first attempt made
    assert any("HTTP 503" in line and "retrying in" in line for line in lines)
    assert any("made by an earlier attempt of this create" in line for line in lines)
    assert any(line.startswith(f"TrainJob team-a/{JOB_NAME} created:") for line in lines)
    assert len(server.calls("DELETE")) == 1 and not server.jobs


def test_a_lost_create_does_not_adopt_someone_elses_resource(kube):
    server, api_client = kube()
    theirs = someone_elses_trainjob(server)
    server.fail("POST", "/trainjobs", status=503)  # fails; the retry then meets the other job: 409
    with pytest.raises(KftuneError, match=f"cannot create TrainJob team-a/{JOB_NAME}: HTTP 409"):
        run_trainjob(make_trainjob_request(), api_client, log=lambda line: None, **FAST)
    assert len(server.calls("POST")) == 2 and len(server.calls("GET", f"/trainjobs/{JOB_NAME}")) == 1
    assert not server.calls("DELETE") and server.jobs[("team-a", JOB_NAME)] is theirs


def test_a_name_taken_at_the_first_create_is_refused_without_a_look(kube):
    server, api_client = kube(katib=FakeKatibScenario())
    run_experiment(make_katib_request(), api_client, log=lambda line: None, delete=False, **FAST)
    server.requests.clear()
    with pytest.raises(KftuneError, match="an Experiment of that name already exists"):
        run_experiment(make_katib_request(), api_client, log=lambda line: None, **FAST)
    assert [r.method for r in server.requests] == ["POST"]  # not adopted, not deleted: it is not this run's
    assert ("team-a", "kftune-tune-test0001") in server.experiments


def test_a_create_that_keeps_failing_gives_up_and_deletes_what_it_may_have_made(kube):
    server, api_client = kube()
    server.fail("POST", "/trainjobs", status=503, times=100)
    with pytest.raises(KftuneError, match=r"cannot create TrainJob .*kept failing \(6 attempts\): HTTP 503"):
        run_trainjob(make_trainjob_request(), api_client, log=lambda line: None, **FAST)
    assert len(server.calls("POST")) == MAX_API_ERRORS + 1
    assert len(server.calls("DELETE", f"/trainjobs/{JOB_NAME}")) == 1  # a 503 does not say nothing was made


def test_a_refused_create_retries_nothing(kube):
    server, api_client = kube()
    server.fail("POST", "/trainjobs", status=422)
    with pytest.raises(KftuneError, match="cannot create TrainJob"):
        run_trainjob(make_trainjob_request(), api_client, log=lambda line: None, **FAST)
    assert [r.method for r in server.requests] == ["POST"]


# --- the deadline -------------------------------------------------------------------------------


def test_the_deadline_covers_the_create_as_well(kube):
    server, api_client = kube(scenario=Scenario(outcome=None))
    server.fail("POST", "/trainjobs", status=503, times=2)  # retried after 0.2 s and 0.4 s: past the deadline
    with pytest.raises(KftuneError, match=r"timed out after 0\.5 s without finishing \(last state: .*\); deleting it"):
        run_trainjob(make_trainjob_request(), api_client, log=lambda line: None, poll_seconds=0.2, timeout_seconds=0.5)
    assert len(server.calls("GET", f"/trainjobs/{JOB_NAME}")) == 1  # one look, then the deadline
    assert len(server.calls("DELETE")) == 1 and not server.jobs


# --- cleanup by policy --------------------------------------------------------------------------


def test_a_delete_is_retried_on_a_transient_error(kube):
    server, api_client = kube()
    server.fail("DELETE", "/trainjobs", status=503)
    lines: list[str] = []
    run_trainjob(make_trainjob_request(), api_client, log=lines.append, **FAST)
    assert len(server.calls("DELETE")) == 2 and not server.jobs
    assert lines[-1] == f"TrainJob team-a/{JOB_NAME} deleted"


def test_a_job_that_cannot_be_deleted_is_logged_with_the_command_and_the_result_stands(kube, caplog):
    server, api_client = kube()
    server.fail("DELETE", "/trainjobs", status=503, times=100)
    with caplog.at_level(logging.ERROR, logger=CLUSTER_RESOURCE_LOGGER):
        handle = run_trainjob(make_trainjob_request(), api_client, log=lambda line: None, **FAST)
    assert handle["status"] == "Complete"
    assert len(server.calls("DELETE")) == DELETE_RETRIES + 1  # few retries: a cancelled pod has little time
    (message,) = caplog.messages
    assert message.startswith(f"could not delete TrainJob team-a/{JOB_NAME}")
    assert message.endswith(f"delete it with: kubectl delete trainjob -n team-a {JOB_NAME}")


def test_a_kept_experiment_is_left_on_timeout_and_says_how_to_delete_it(kube):
    server, api_client = kube(katib=FakeKatibScenario(outcome=None))
    lines: list[str] = []
    with pytest.raises(KftuneError) as error:
        run_experiment(make_katib_request(), api_client, log=lines.append, delete=False,
                       poll_seconds=0.01, timeout_seconds=0.2)  # fmt: skip
    assert str(error.value).endswith("; left in place (kubectl describe experiment -n team-a kftune-tune-test0001)")
    assert not server.calls("DELETE") and server.experiments
    assert lines[-1] == (
        "Katib Experiment team-a/kftune-tune-test0001 kept; "
        "delete it with: kubectl delete experiment -n team-a kftune-tune-test0001"
    )


def sigterm_on(prefix: str):
    def log(line: str) -> None:
        if line.startswith(prefix):
            os.kill(os.getpid(), signal.SIGTERM)

    return log


def test_sigterm_during_a_rollout_leaves_the_inference_service(kube):
    server, api_client = kube(kserve=FakeKServeScenario(ready_on_poll=None))
    before = signal.getsignal(signal.SIGTERM)
    log = sigterm_on("InferenceService team-a/sentiment:")
    with pytest.raises(KftuneError) as error:
        deploy_inference_service(make_deploy_request(), api_client, log=log, poll_seconds=0.01, timeout_seconds=10)
    assert str(error.value) == (
        "stopped by SIGTERM while InferenceService team-a/sentiment was running; "
        "left in place (kubectl describe inferenceservice -n team-a sentiment)"
    )
    assert not server.calls("DELETE") and ("team-a", "sentiment") in server.inference_services
    assert signal.getsignal(signal.SIGTERM) is before


def test_sigterm_during_an_update_leaves_the_serving_revision_alone(kube):
    server, api_client = kube(kserve=FakeKServeScenario(ready_on_poll=None))
    server.add_inference_service(inference_service_doc(make_deploy_request()))
    request = make_deploy_request(model_uri="s3://models/sentiment/v2")
    with pytest.raises(KftuneError, match="stopped by SIGTERM .*left in place"):
        deploy_inference_service(request, api_client, log=sigterm_on("InferenceService team-a/sentiment:"),
                                 poll_seconds=0.01, timeout_seconds=10)  # fmt: skip
    assert [r.method for r in server.requests if r.method != "GET"] == ["PATCH"]  # no delete, no rollback
    status = server.inference_services[("team-a", "sentiment")].isvc["status"]
    assert status["components"]["predictor"]["latestReadyRevision"] == "sentiment-predictor-00001"


# --- the lifecycle with a kind of its own -------------------------------------------------------


class KeptTrainJob(ClusterResource):
    """A TrainJob that is kept and whose failure must hold for a while: the policy and the grace
    period belong to the lifecycle, not to a kind."""

    kind = "TrainJob"
    kubectl_kind = "trainjob"
    group, version, plural = "trainer.kubeflow.org", "v1alpha1", "trainjobs"
    labels = {"app.kubernetes.io/managed-by": "kftune"}

    def __init__(self, emit, **options):
        super().__init__("team-a", JOB_NAME, emit, **options)
        self.failures_seen = 0

    def body(self) -> dict:
        return build_trainjob(make_trainjob_request()).to_dict()

    def observe(self, api, obj: dict) -> Outcome | None:
        for condition in (obj.get("status") or {}).get("conditions") or []:
            if condition["status"] == "True":
                self.failures_seen += condition["type"] == "Failed"
                return Outcome(condition["type"] == "Complete", f"{condition['reason']}: {condition['message']}")
        return None


def test_a_kept_resource_fails_after_its_grace_with_its_own_reason_and_is_left(kube):
    server, api_client = kube(scenario=Scenario(outcome="Failed", finish_on_poll=2, reason="PodFailed",
                                                message="node-0 exited 1"))  # fmt: skip
    resource = KeptTrainJob(lambda line: None, cleanup=Cleanup.KEEP, failure_grace_seconds=0.1)
    with pytest.raises(KftuneError) as error:
        run_resource(resource, api_client, **FAST)
    assert re.match(rf"TrainJob team-a/{JOB_NAME} failed after \d+ s: PodFailed: node-0 exited 1;", str(error.value))
    assert str(error.value).endswith(f"; left in place (kubectl describe trainjob -n team-a {JOB_NAME})")
    assert resource.failures_seen > 2  # polled on through the grace period: 0.1 s at 0.01 s a poll
    assert not server.calls("DELETE") and server.jobs


def test_a_deleted_resource_is_deleted_before_its_failure_is_raised(kube):
    server, api_client = kube(scenario=Scenario(outcome="Failed", finish_on_poll=1, reason="PodFailed", message="x"))
    resource = KeptTrainJob(lambda line: None)  # the default policy: DELETE
    with pytest.raises(KftuneError, match="PodFailed: x$"):
        run_resource(resource, api_client, **FAST)
    assert server.requests[-1].method == "DELETE" and not server.jobs
    assert resource.failures_seen == 1  # no grace period: the first Failed is the answer
