"""``kftune submit`` against a fake KFP v2beta1 API server (tests/fake_kfp_api.py), with the real kfp.Client.

The package is the real compiled pipeline, pipelines/compiled/finetune.yaml. Covered: the first
submission (pipeline, versions, experiment, run, URL), a changed YAML as a new version of the same
pipeline, an unchanged one reusing its version, typed parameters, parameter errors before any
request, 401/403/404/409/500 and connection/TLS errors as one line, waiting for SUCCEEDED, FAILED
and a timeout, the token's sources, and the token never appearing in the output.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

import kfp
import pytest
import yaml

from kftune.cli import submit as submit_module
from kftune.cli.main import main
from kftune.cli.submit import (
    PipelinePackage,
    SubmitSettings,
    coerce_parameters,
    default_version_name,
    parse_param_assignments,
    resolve_host,
    resolve_token,
)
from kftune.errors import KftuneError
from tests.fake_kfp_api import Failure, FakeKfpApiServer, self_signed_certificate

PACKAGE = Path(__file__).resolve().parents[1] / "pipelines" / "compiled" / "finetune.yaml"
TOKEN = "s3cr3t-t0ken-value"
ENV_VARS = ("KFP_HOST", "KF_PIPELINES_ENDPOINT", "KF_PIPELINES_UI_ENDPOINT", "KFP_NAMESPACE", "KF_PIPELINES_TOKEN",
            "KF_PIPELINES_SA_TOKEN_PATH", "KUBERNETES_SERVICE_HOST")


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch, tmp_path):
    """No endpoint, token or namespace from the machine running the tests; kfp's context file in tmp_path."""
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(submit_module, "KFP_SA_TOKEN_PATH", tmp_path / "no-kfp-token")
    monkeypatch.setattr(submit_module, "K8S_SA_TOKEN_PATH", tmp_path / "no-k8s-token")
    monkeypatch.setattr(kfp.Client, "_NAMESPACE_PATH", str(tmp_path / "no-namespace"))
    monkeypatch.setattr(kfp.Client, "_LOCAL_KFP_CONTEXT", str(tmp_path / "kfp" / "context.json"))


@pytest.fixture
def fake():
    with FakeKfpApiServer(token=TOKEN) as server:
        yield server


@pytest.fixture(scope="module")
def certificate(tmp_path_factory) -> tuple[Path, Path]:
    return self_signed_certificate(tmp_path_factory.mktemp("tls"))


def run_submit(capsys, *args: str, token: str | None = TOKEN, monkeypatch=None) -> tuple[int, str, str]:
    """``kftune submit ARGS`` with the token in $KF_PIPELINES_TOKEN; (exit status, stdout, stderr)."""
    if token is not None:
        monkeypatch.setenv("KF_PIPELINES_TOKEN", token)
    code = main(["submit", "--poll-interval", "0.01", *args])
    out, err = capsys.readouterr()
    assert token is None or token not in out + err, "the token was printed"
    return code, out, err


def error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("kftune: error:")]
    assert len(lines) == 1, err
    return lines[0]


def test_first_submission_creates_pipeline_version_experiment_and_run(fake, capsys, monkeypatch, tmp_path):
    stale = tmp_path / "kfp" / "context.json"  # what an earlier kfp session may leave: must not apply
    stale.parent.mkdir()
    stale.write_text(json.dumps({"namespace": "stale-namespace"}))
    code, out, err = run_submit(capsys, "--host", fake.url, "--run-name", "first run", monkeypatch=monkeypatch)
    assert code == 0, err
    assert fake.ops() == ["healthz", "list_pipelines", "upload_pipeline", "upload_version", "list_experiments",
                          "list_experiments", "create_experiment", "create_run"]
    assert all(r.headers["authorization"] == f"Bearer {TOKEN}" for r in fake.requests)
    assert not any("stale-namespace" in json.dumps([r.query, r.body]) for r in fake.requests)
    assert json.loads(stale.read_text()) == {"namespace": "stale-namespace"}  # not rewritten either

    (pipeline,) = fake.pipelines.values()
    assert pipeline["name"] == "finetune" and pipeline["description"].startswith("Fine-tune a pretrained")
    expected_version = default_version_name(PipelinePackage.load(PACKAGE))
    versions = {v["name"]: v for v in fake.versions_of(pipeline["pipeline_id"])}
    assert set(versions) == {"finetune", expected_version}  # the upload's first version, and ours
    assert fake.calls("upload_version")[0].files["uploadfile"] == PACKAGE.read_bytes()
    (experiment,) = fake.experiments.values()
    assert experiment["display_name"] == "kftune"
    (run,) = fake.runs.values()
    assert run["display_name"] == "first run" and run["experiment_id"] == experiment["experiment_id"]
    version_id = versions[expected_version]["pipeline_version_id"]
    assert run["pipeline_version_reference"] == {"pipeline_id": pipeline["pipeline_id"],
                                                 "pipeline_version_id": version_id}
    assert f"run URL    {fake.url}/#/runs/details/{run['run_id']}" in out
    assert "token: $KF_PIPELINES_TOKEN" in out
    assert "pipeline   finetune: created" in out and "experiment kftune: created" in out


def test_changed_yaml_becomes_a_new_version_of_the_same_pipeline(fake, capsys, monkeypatch, tmp_path):
    assert run_submit(capsys, "--host", fake.url, monkeypatch=monkeypatch)[0] == 0
    changed = tmp_path / "finetune.yaml"
    changed.write_bytes(PACKAGE.read_bytes() + b"# recompiled\n")
    first_requests = len(fake.requests)
    code, out, err = run_submit(capsys, "--host", fake.url, "--pipeline-file", str(changed), monkeypatch=monkeypatch)
    assert code == 0, err
    assert fake.ops()[first_requests:] == ["healthz", "list_pipelines", "upload_version", "list_experiments",
                                           "create_run"]
    (pipeline,) = fake.pipelines.values()
    names = sorted(v["name"] for v in fake.versions_of(pipeline["pipeline_id"]))
    new_name = default_version_name(PipelinePackage.load(changed))
    assert names == sorted(["finetune", default_version_name(PipelinePackage.load(PACKAGE)), new_name])
    assert fake.calls("upload_version")[-1].query["pipelineid"] == [pipeline["pipeline_id"]]
    first_run, second_run = fake.runs.values()
    assert first_run["experiment_id"] == second_run["experiment_id"]
    new_version = next(v for v in fake.versions.values() if v["name"] == new_name)
    assert second_run["pipeline_version_reference"]["pipeline_version_id"] == new_version["pipeline_version_id"]
    assert "pipeline   finetune: exists" in out and "experiment kftune: exists" in out


def test_unchanged_yaml_reuses_its_version(fake, capsys, monkeypatch):
    assert run_submit(capsys, "--host", fake.url, monkeypatch=monkeypatch)[0] == 0
    code, out, _ = run_submit(capsys, "--host", fake.url, monkeypatch=monkeypatch)
    assert code == 0
    assert fake.ops()[-4:] == ["upload_version", "list_versions", "list_experiments", "create_run"]
    assert len(fake.versions) == 2  # no third version
    first_run, second_run = fake.runs.values()
    assert first_run["pipeline_version_reference"] == second_run["pipeline_version_reference"]
    assert "already uploaded (same content)" in out


def test_parameters_are_sent_with_their_declared_types(fake, capsys, monkeypatch):
    code, _, err = run_submit(capsys, "--host", fake.url, "--param", "learning_rate=3e-5", "--param",
                              "num_train_epochs=2", "--param", "group_by_length=false", "--param", "data=reviews.csv",
                              "--param", "min_primary_score=1", monkeypatch=monkeypatch)
    assert code == 0, err
    parameters = fake.calls("create_run")[0].body["runtime_config"]["parameters"]
    assert parameters == {"learning_rate": 3e-5, "num_train_epochs": 2, "group_by_length": False,
                          "data": "reviews.csv", "min_primary_score": 1.0}
    assert type(parameters["num_train_epochs"]) is int and type(parameters["group_by_length"]) is bool


@pytest.mark.parametrize(
    "args, message",
    [
        (["--param", "learning_rte=0.1"],
         "unknown pipeline parameter learning_rte; the pipeline takes: accelerator_type, atol, augment_copies,"),
        (["--param", "num_train_epochs=two"], "parameter num_train_epochs: expected an integer, got 'two'"),
        (["--param", "num_train_epochs=2.5"], "parameter num_train_epochs: expected an integer, got '2.5'"),
        (["--param", "learning_rate=fast"], "parameter learning_rate: expected a number, got 'fast'"),
        (["--param", "learning_rate=nan"], "parameter learning_rate: expected a finite number"),
        (["--param", "group_by_length=maybe"], "parameter group_by_length: expected true or false"),
        (["--param", "seed"], "--param 'seed': expected NAME=VALUE"),
        (["--param", "seed=1", "--param", "seed=2"], "--param seed is given twice"),
        (["--pipeline-file", "missing.yaml"], "missing.yaml: no such file"),
        (["--ca-cert", "missing-ca.pem"], "--ca-cert missing-ca.pem: no such file"),
        (["--wait", "--timeout", "0"], "--timeout must be > 0"),
    ],
)
def test_bad_input_is_rejected_before_any_request(fake, capsys, monkeypatch, args, message):
    code, _, err = run_submit(capsys, "--host", fake.url, *args, monkeypatch=monkeypatch)
    assert code == 2
    assert message in error_line(err)
    assert fake.requests == []


def test_coerce_parameters_structs_lists_and_required():
    declared = {"config": {"parameterType": "STRUCT"}, "layers": {"parameterType": "LIST", "isOptional": True},
                "name": {"parameterType": "STRING"},
                "status": {"parameterType": "TASK_FINAL_STATUS", "isOptional": True}}
    assert coerce_parameters(declared, {"config": '{"a": 1}', "layers": "[1, 2]", "name": "x"}) == {
        "config": {"a": 1}, "layers": [1, 2], "name": "x"}
    assert coerce_parameters(declared, {"config": {"b": 2}, "name": "y"}) == {"config": {"b": 2}, "name": "y"}
    with pytest.raises(KftuneError, match="parameter config: expected a JSON object, got '\\[1\\]'"):
        coerce_parameters(declared, {"config": "[1]", "name": "x"})
    with pytest.raises(KftuneError, match="parameter layers: expected a JSON list"):
        coerce_parameters(declared, {"config": "{}", "layers": "{not json", "name": "x"})
    with pytest.raises(KftuneError, match="missing required pipeline parameter config, name"):
        coerce_parameters(declared, {})
    with pytest.raises(KftuneError, match="parameter name: expected a string, got 3"):
        coerce_parameters(declared, {"config": {}, "name": 3})
    with pytest.raises(KftuneError, match="its type TASK_FINAL_STATUS cannot be set"):
        coerce_parameters(declared, {"config": {}, "name": "x", "status": "{}"})
    assert parse_param_assignments(["a=b=c", "empty="]) == {"a": "b=c", "empty": ""}
    gate = {"min_primary_score": {"parameterType": "NUMBER_DOUBLE", "isOptional": True}}
    with pytest.raises(KftuneError, match="renamed pipeline parameter: min_accuracy is now min_primary_score"):
        coerce_parameters(gate, {"min_accuracy": "0.8"})


def test_no_token_is_401_with_the_hint(fake, capsys, monkeypatch):
    code, _, err = run_submit(capsys, "--host", fake.url, token=None)
    assert code == 2
    line = error_line(err)
    assert f"not authorised by {fake.url} while checking the KFP API (healthz) (HTTP 401: Unauthenticated" in line
    assert "no token was found: set KF_PIPELINES_TOKEN" in line
    assert "authorization" not in fake.requests[0].headers
    assert fake.ops() == ["healthz"]


def test_wrong_token_is_401_naming_its_source_but_not_its_value(fake, capsys, monkeypatch):
    code, out, err = run_submit(capsys, "--host", fake.url, token="wrong-token-value", monkeypatch=monkeypatch)
    assert code == 2
    assert "the token from $KF_PIPELINES_TOKEN was rejected" in error_line(err)
    assert fake.requests[0].headers["authorization"] == "Bearer wrong-token-value"
    code, out, err = run_submit(capsys, "--host", fake.url, "--token", "flag-token-value", token=None)
    assert "the token from --token was rejected" in error_line(err)
    assert "flag-token-value" not in out + err


def test_a_login_page_instead_of_the_api_is_reported(capsys, monkeypatch):
    with FakeKfpApiServer(token=TOKEN, login_proxy=True) as fake:
        code, _, err = run_submit(capsys, "--host", fake.url, token=None)
        assert fake.ops() == ["healthz", "login_page"]  # redirected, as by oauth2-proxy
    line = error_line(err)
    assert f"{fake.url}/apis/v2beta1/healthz answered with text/html; charset=utf-8 that is not JSON" in line
    assert "set KF_PIPELINES_TOKEN" in line


def test_wrong_path_is_404_pointing_at_the_host(fake, capsys, monkeypatch):
    code, _, err = run_submit(capsys, "--host", fake.url + "/not-kfp/", monkeypatch=monkeypatch)
    assert code == 2
    line = error_line(err)
    assert f"not found on {fake.url}/not-kfp while checking the KFP API (healthz) (HTTP 404: Not Found)" in line
    assert "check --host: it must be the KFP API's base URL" in line


@pytest.mark.parametrize(
    "op, failure, message",
    [
        ("create_run", Failure(404, "Failed to create a run: experiment e-1 not found"),
         "not found on {url} while starting the run (HTTP 404: Failed to create a run: experiment e-1 not found): "
         "the experiment or pipeline version is gone"),
        ("upload_version", Failure(500, "database is locked"),
         "the KFP server at {url} failed while uploading the pipeline version (HTTP 500: database is locked)"),
        ("create_experiment", Failure(500, "Internal error: failed to create experiment: deadlock"),
         "failed while creating the experiment (HTTP 500: Internal error: failed to create experiment: deadlock)"),
        ("upload_pipeline", Failure(403, "pipeline upload denied: permission to create pipelines"),
         "forbidden by {url} while uploading the pipeline (HTTP 403: pipeline upload denied"),
        ("list_experiments", Failure(400, "Invalid input error: bad filter"),
         "{url} refused looking up the experiment (HTTP 400: Invalid input error: bad filter)"),
    ],
)
def test_server_errors_are_one_line_with_the_server_message(capsys, monkeypatch, op, failure, message):
    with FakeKfpApiServer(token=TOKEN, failures={op: failure}) as fake:
        code, _, err = run_submit(capsys, "--host", fake.url, monkeypatch=monkeypatch)
        assert code == 2
        assert message.format(url=fake.url) in error_line(err)
        assert "Traceback" not in err
        assert fake.ops()[-1] == op


def test_existing_explicit_version_name_is_409_explained(fake, capsys, monkeypatch):
    assert run_submit(capsys, "--host", fake.url, "--version-name", "v1", monkeypatch=monkeypatch)[0] == 0
    code, _, err = run_submit(capsys, "--host", fake.url, "--version-name", "v1", monkeypatch=monkeypatch)
    assert code == 2
    line = error_line(err)
    assert "pipeline 'finetune' already has a version named 'v1' (version names are unique within a pipeline" in line
    assert "choose another --version-name" in line
    assert len(fake.runs) == 1


def test_wait_follows_the_run_to_success(capsys, monkeypatch):
    with FakeKfpApiServer(token=TOKEN, finish_on_poll=5) as fake:
        code, out, err = run_submit(capsys, "--host", fake.url, "--wait", monkeypatch=monkeypatch)
    assert code == 0, err
    states = [line for line in out.splitlines() if line.startswith("run state:")]
    assert states == ["run state: PENDING", "run state: RUNNING", "run state: SUCCEEDED"]
    assert "  task preprocess: RUNNING" in out and "  task export: SUCCEEDED" in out
    assert out.index("run URL") < out.index("run state: PENDING")
    assert len(fake.calls("get_run")) == 5


def test_wait_reports_a_failed_run_with_a_nonzero_exit(capsys, monkeypatch):
    with FakeKfpApiServer(token=TOKEN, run_outcome="FAILED") as fake:
        code, out, err = run_submit(capsys, "--host", fake.url, "--wait", monkeypatch=monkeypatch)
        (run_id,) = fake.runs
    assert code == 1
    assert "run state: FAILED" in out and "  task evaluate: FAILED" in out
    url = f"{fake.url}/#/runs/details/{run_id}"
    assert f"kftune: run {run_id} ended FAILED: task evaluate failed: exit code 1 ({url})" in err


def test_wait_gives_up_after_the_timeout(capsys, monkeypatch):
    with FakeKfpApiServer(token=TOKEN, finish_on_poll=10**6) as fake:
        code, _, err = run_submit(capsys, "--host", fake.url, "--wait", "--timeout", "0.3", "--poll-interval", "0.05",
                                  monkeypatch=monkeypatch)
        (run_id,) = fake.runs
    assert code == 2
    line = error_line(err)
    assert f"timed out after 0.3 s waiting for run {run_id} (state RUNNING)" in line
    assert f"it goes on in the cluster: {fake.url}/#/runs/details/{run_id}" in line


def test_wait_rides_out_transient_poll_failures(capsys, monkeypatch):
    failures = {"get_run": Failure(503, "upstream connect error", times=2)}
    with FakeKfpApiServer(token=TOKEN, failures=failures) as fake:
        code, out, err = run_submit(capsys, "--host", fake.url, "--wait", monkeypatch=monkeypatch)
    assert code == 0, err
    assert out.count("polling failed, trying again") == 2 and "run state: SUCCEEDED" in out


def test_token_from_the_service_account_token_file(fake, capsys, monkeypatch, tmp_path):
    token_file = tmp_path / "serviceaccount-token"
    token_file.write_text(TOKEN + "\n")
    monkeypatch.setattr(submit_module, "K8S_SA_TOKEN_PATH", token_file)
    code, out, err = run_submit(capsys, "--host", fake.url, token=None)
    assert code == 0, err
    assert all(r.headers["authorization"] == f"Bearer {TOKEN}" for r in fake.requests)
    assert f"token: {token_file}" in out and TOKEN not in out + err


def test_resolve_token_order(monkeypatch, tmp_path):
    kfp_token, k8s_token, custom = tmp_path / "kfp", tmp_path / "k8s", tmp_path / "custom"
    monkeypatch.setattr(submit_module, "KFP_SA_TOKEN_PATH", kfp_token)
    monkeypatch.setattr(submit_module, "K8S_SA_TOKEN_PATH", k8s_token)
    assert resolve_token() == submit_module.Token(None, "none")
    k8s_token.write_text("from-k8s")
    assert (resolve_token().value, resolve_token().path) == ("from-k8s", k8s_token)
    kfp_token.write_text("from-kfp\n")
    assert resolve_token().value == "from-kfp"
    custom.write_text("from-custom")
    monkeypatch.setenv("KF_PIPELINES_SA_TOKEN_PATH", str(custom))
    assert resolve_token().value == "from-custom"
    monkeypatch.setenv("KF_PIPELINES_TOKEN", "from-env")
    assert resolve_token() == submit_module.Token("from-env", "$KF_PIPELINES_TOKEN")
    assert resolve_token("from-flag") == submit_module.Token("from-flag", "--token")
    assert "from-flag" not in repr(resolve_token("from-flag"))
    assert "hidden" not in repr(SubmitSettings(token="hidden"))


def test_host_resolution(monkeypatch):
    with pytest.raises(KftuneError, match="no KFP endpoint: pass --host URL or set KFP_HOST"):
        resolve_host()
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
    assert resolve_host() == "http://ml-pipeline.kubeflow.svc.cluster.local:8888"
    monkeypatch.setenv("KF_PIPELINES_ENDPOINT", "http://kfp:8888/")
    assert resolve_host() == "http://kfp:8888"
    monkeypatch.setenv("KFP_HOST", "kubeflow.example.com/pipeline")
    assert resolve_host() == "https://kubeflow.example.com/pipeline"
    assert resolve_host("http://localhost:8888") == "http://localhost:8888"


def test_host_from_the_environment(fake, capsys, monkeypatch):
    monkeypatch.setenv("KFP_HOST", fake.url)
    code, out, _ = run_submit(capsys, monkeypatch=monkeypatch)
    assert code == 0 and f"KFP API {fake.url} (single-user" in out


def test_multi_user_needs_a_namespace(capsys, monkeypatch):
    with FakeKfpApiServer(token=TOKEN, multi_user=True) as fake:
        code, _, err = run_submit(capsys, "--host", fake.url, monkeypatch=monkeypatch)
        assert code == 2 and "is a multi-user Kubeflow Pipelines: pass --namespace" in error_line(err)
        assert fake.ops() == ["healthz"]
        code, out, err = run_submit(capsys, "--host", fake.url, "--namespace", "team-a", monkeypatch=monkeypatch)
        assert code == 0, err
        assert "multi-user, namespace team-a" in out
        assert fake.calls("upload_pipeline")[0].query["namespace"] == ["team-a"]
        assert fake.calls("list_experiments")[0].query["namespace"] == ["team-a"]
        (experiment,) = fake.experiments.values()
        assert experiment["namespace"] == "team-a"


def test_multi_user_takes_the_pods_namespace(capsys, monkeypatch, tmp_path):
    (tmp_path / "no-namespace").write_text("team-b\n")  # the path kfp.Client reads, patched above
    with FakeKfpApiServer(token=TOKEN, multi_user=True) as fake:
        code, out, err = run_submit(capsys, "--host", fake.url, monkeypatch=monkeypatch)
        assert code == 0, err
        assert "multi-user, namespace team-b" in out
        (experiment,) = fake.experiments.values()
        assert experiment["namespace"] == "team-b"
    assert not (tmp_path / "kfp" / "context.json").exists()  # kfp.Client would have written it


def test_connection_refused_names_the_host(capsys, monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code, _, err = run_submit(capsys, "--host", f"http://127.0.0.1:{port}", monkeypatch=monkeypatch)
    assert code == 2
    line = error_line(err)
    assert f"cannot connect to http://127.0.0.1:{port} ([Errno 111] Connection refused): check --host" in line


def test_tls_with_a_custom_ca(certificate, capsys, monkeypatch):
    cert, key = certificate
    with FakeKfpApiServer(token=TOKEN, tls=(cert, key)) as fake:
        assert fake.url.startswith("https://")
        code, _, err = run_submit(capsys, "--host", fake.url, monkeypatch=monkeypatch)
        assert code == 2
        line = error_line(err)
        assert f"TLS verification of {fake.url} failed (certificate verify failed" in line
        assert "pass the CA that signed its certificate with --ca-cert FILE" in line
        assert fake.requests == []

        code, out, err = run_submit(capsys, "--host", fake.url, "--ca-cert", str(cert), monkeypatch=monkeypatch)
        assert code == 0, err
        assert f"{fake.url}/#/runs/details/" in out

        code, out, err = run_submit(capsys, "--host", fake.url, "--insecure-skip-verify", monkeypatch=monkeypatch)
        assert code == 0, err
        assert "TLS not verified" in out and "InsecureRequestWarning" not in err


def test_https_to_a_plain_http_server_says_so(fake, capsys, monkeypatch):
    host = fake.url.replace("http://", "https://")
    code, _, err = run_submit(capsys, "--host", host, monkeypatch=monkeypatch)
    assert code == 2
    assert f"TLS with {host} failed" in error_line(err) and "use an http:// URL" in error_line(err)


def test_http_to_a_tls_server_says_so(certificate, capsys, monkeypatch):
    with FakeKfpApiServer(token=TOKEN, tls=certificate) as fake:
        host = fake.url.replace("https://", "http://")
        code, _, err = run_submit(capsys, "--host", host, monkeypatch=monkeypatch)
    assert code == 2
    assert f"{host} dropped the connection" in error_line(err) and "use an https:// URL" in error_line(err)


def test_submit_function_returns_the_ids(fake):
    lines: list[str] = []
    result = submit_module.submit(
        SubmitSettings(host=fake.url, token=TOKEN, parameters={"seed": 7}, wait=True, poll_interval=0.01,
                       ui_host="https://kubeflow.example.com/pipeline/"),
        PACKAGE, log=lines.append)
    (run,) = fake.runs.values()
    assert result["run_id"] == run["run_id"] and result["state"] == "SUCCEEDED" and result["error"] is None
    assert result["run_url"] == f"https://kubeflow.example.com/pipeline/#/runs/details/{run['run_id']}"
    assert result["parameters"] == {"seed": 7}
    reference = run["pipeline_version_reference"]
    (pipeline_id,) = fake.pipelines
    assert (result["pipeline_id"], result["version_id"], result["experiment_id"]) == (
        pipeline_id, reference["pipeline_version_id"], run["experiment_id"])
    assert reference["pipeline_id"] == pipeline_id
    assert result["pipeline_created"] and result["experiment_created"] and not result["version_reused"]
    # the wait ends on SUCCEEDED, having shown each task of the pipeline's DAG in its final state, SUCCEEDED
    dag_tasks = next(yaml.safe_load_all(PACKAGE.read_text()))["root"]["dag"]["tasks"]
    last_state = {}
    for line in lines:
        if line.startswith("  task "):
            task, state = line.removeprefix("  task ").rsplit(": ", 1)
            last_state[task] = state
    assert last_state == dict.fromkeys(dag_tasks, "SUCCEEDED")
    after = lines[lines.index("run state: SUCCEEDED") + 1:]
    assert lines.count("run state: SUCCEEDED") == 1
    assert all(line.startswith("  task ") and line.endswith(": SUCCEEDED") for line in after), after
