"""kind-cluster/: shellcheck, and what each script would run, from its --dry-run plan.

No Kubernetes cluster can run where these tests run (CI runs a Docker engine, but not kind), so the
scripts are checked two ways: shellcheck, and the plan each prints with --dry-run, one command per
line ("+ cmd args"), run with a PATH whose docker, kind, kubectl, make, ... only record that they
were called (they must not be).

shellcheck, kubectl and kubernetes-validate come with the dev extra; a test whose tool is missing
skips, saying which, except in CI (CI=true), where it fails.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from kftune.cluster.images import ImageScheme
from tests.tools import need, versions

ROOT = Path(__file__).resolve().parents[1]
KIND_DIR = ROOT / "kind-cluster"
SCRIPTS = ("up.sh", "run.sh", "down.sh")


def dev_tool(name: str) -> str | None:
    """The dev extra's ``name`` from the project's .venv, else from PATH (None if neither has it)."""
    local = ROOT / ".venv" / "bin" / name
    return str(local) if local.exists() else shutil.which(name)


SHELLCHECK = dev_tool("shellcheck")
KUBECTL = dev_tool("kubectl")
KUBERNETES_VALIDATE = dev_tool("kubernetes-validate")
BASH = shutil.which("bash")
# Everything the scripts could call; in the sandbox each one only records the call and fails.
TOOLS = ("docker", "kind", "nvkind", "kubectl", "helm", "make", "go", "kftune", "git", "curl", "env", "mkdir",
         "sed", "sleep", "grep", "cat", "dirname", "python3")






@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    """A PATH holding bash and, for every tool the scripts use, a fake that records its call and fails."""
    root = tmp_path_factory.mktemp("sandbox")
    bin_dir = root / "bin"
    bin_dir.mkdir()
    calls = root / "calls.log"
    (bin_dir / "bash").symlink_to(BASH)
    for tool in TOOLS:
        fake = bin_dir / tool
        fake.write_text(f"#!{BASH}\necho \"{tool} $*\" >> {calls}\nexit 1\n")
        fake.chmod(0o755)
    env = {"PATH": str(bin_dir), "HOME": str(root), "KFTUNE": "kftune", "LANG": "C"}
    return env, calls


def dry_run(sandbox, script: str, *args: str) -> list[list[str]]:
    """The plan of ``script --dry-run args``: one argv per printed command (a pipe keeps its '|')."""
    env, calls = sandbox
    result = subprocess.run([BASH, str(KIND_DIR / script), "--dry-run", *args], env=env, cwd="/",
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert not calls.exists(), f"--dry-run executed: {calls.read_text()}"
    lines = result.stdout.splitlines()
    assert lines and all(line.startswith("+ ") for line in lines), result.stdout
    return [shlex.split(line[2:]) for line in lines]


def find(plan: list[list[str]], *words: str, start: int = 0) -> int:
    """Index of the first command at or after ``start`` that contains all ``words`` (as arguments)."""
    for i, argv in enumerate(plan[start:], start):
        if all(w in argv for w in words):
            return i
    raise AssertionError(f"no command with {words} in:\n" + "\n".join(shlex.join(a) for a in plan))


def has(plan, *words) -> bool:
    try:
        find(plan, *words)
    except AssertionError:
        return False
    return True


def option(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def lib_values(*names: str) -> dict[str, str]:
    """Variables of kind-cluster/lib.sh, as bash sets them."""
    script = f"source {shlex.quote(str(KIND_DIR / 'lib.sh'))}; " + "; ".join(
        f"printf '%s\\n' \"${name}\"" for name in names)
    out = subprocess.run([BASH, "-c", script], capture_output=True, text=True, check=True).stdout
    return dict(zip(names, out.splitlines(), strict=True))


# --- shellcheck and script hygiene ----------------------------------------------------------------


def test_the_scripts_are_all_here():
    assert {p.name for p in KIND_DIR.glob("*.sh")} == {*SCRIPTS, "lib.sh"}


@pytest.mark.parametrize("script", [*SCRIPTS, "lib.sh"])
def test_shellcheck(script):
    result = subprocess.run([need(SHELLCHECK, "shellcheck"), "-x", "--severity=style", script], cwd=KIND_DIR,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("script", SCRIPTS)
def test_scripts_are_strict_executable_and_share_lib(script):
    path = KIND_DIR / script
    text = path.read_text()
    assert text.startswith("#!/usr/bin/env bash\n")
    assert os.access(path, os.X_OK)
    assert 'source "$here/lib.sh"' in text
    assert "set -euo pipefail" in (KIND_DIR / "lib.sh").read_text()


@pytest.mark.parametrize("script", SCRIPTS)
def test_scripts_refuse_unknown_options_before_running_anything(sandbox, script):
    env, calls = sandbox
    result = subprocess.run([BASH, str(KIND_DIR / script), "--dry-run", "--frobnicate"], env=env,
                            capture_output=True, text=True)
    assert result.returncode != 0 and "unknown option --frobnicate" in result.stderr
    assert result.stdout == "" and not calls.exists()


def test_the_plan_needs_only_bash(tmp_path):
    """A dry run works on a machine with nothing but bash: no docker, kind, kubectl, not even coreutils."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "bash").symlink_to(BASH)
    for script in SCRIPTS:
        result = subprocess.run([BASH, str(KIND_DIR / script), "--dry-run"], env={"PATH": str(bin_dir)},
                                capture_output=True, text=True)
        assert result.returncode == 0, (script, result.stderr)
        assert "command not found" not in result.stderr


# --- up.sh ------------------------------------------------------------------------------------------


def test_up_creates_registry_then_cluster_with_the_pinned_images(sandbox):
    plan = dry_run(sandbox, "up.sh")
    v = versions()
    registry = find(plan, "docker", "run", "--name", "kind-registry")
    assert "127.0.0.1:5001:5000" in plan[registry] and plan[registry][-1] == v["KIND_REGISTRY_IMAGE"]
    cluster = find(plan, "kind", "create", "cluster")
    assert registry < cluster
    assert option(plan[cluster], "--image") == v["KIND_NODE_IMAGE"]
    assert option(plan[cluster], "--name") == "kftune"
    assert option(plan[cluster], "--config") == str(KIND_DIR / "kind-config.yaml")
    assert not has(plan, "nvkind")
    # kind's local-registry pattern: hosts.toml on the node, the registry on the kind network
    hosts = find(plan, "docker", "cp", str(KIND_DIR / "registry-hosts.toml"))
    assert plan[hosts][-1] == "kftune-control-plane:/etc/containerd/certs.d/localhost:5001/hosts.toml"
    assert cluster < hosts < find(plan, "docker", "network", "connect", "kind", "kind-registry")
    find(plan, "apply", "-f", str(KIND_DIR / "local-registry-hosting.yaml"))


def test_up_installs_the_pinned_components_in_dependency_order(sandbox):
    plan = dry_run(sandbox, "up.sh")
    v = versions()

    def applies(fragment: str) -> int:
        return next(i for i, argv in enumerate(plan) if "apply" in argv and any(fragment in a for a in argv))

    cert_manager = applies(f"cert-manager/releases/download/{v['CERT_MANAGER_VERSION']}/cert-manager.yaml")
    kfp_scoped = applies(f"kustomize/cluster-scoped-resources?ref={v['KFP_VERSION']}")
    kfp = applies(f"kustomize/env/platform-agnostic?ref={v['KFP_VERSION']}")
    trainer = applies(f"trainer.git/manifests/overlays/manager?ref={v['TRAINER_VERSION']}")
    runtimes = applies(f"trainer.git/manifests/overlays/runtimes?ref={v['TRAINER_VERSION']}")
    katib = applies(f"installs/katib-standalone?ref={v['KATIB_VERSION']}")
    kserve_crds = applies(f"kserve/releases/download/{v['KSERVE_VERSION']}/kserve-crds.yaml")
    kserve = applies(f"kserve/releases/download/{v['KSERVE_VERSION']}/kserve.yaml")
    kserve_resources = applies(f"kserve/releases/download/{v['KSERVE_VERSION']}/kserve-cluster-resources.yaml")
    overlay = find(plan, "apply", "-k", str(ROOT / "manifests" / "overlays" / "kind"))

    assert cert_manager < kserve_crds < kserve < kserve_resources  # KServe's webhooks need cert-manager's certs
    assert kfp_scoped < find(plan, "crd/applications.app.k8s.io") < kfp
    assert trainer < runtimes
    assert max(kfp, runtimes, katib, kserve_resources) < overlay  # the ServingRuntime needs KServe's CRD
    # each install is waited for before the next one
    for install, wait in [(cert_manager, "cert-manager"), (kfp, "kubeflow"), (trainer, "kubeflow-system")]:
        assert plan[install + 1][3:5] == ["wait", "--for=condition=Available"] and wait in plan[install + 1]
    assert "deployment/katib-controller" in plan[katib + 1]
    restart = find(plan, "rollout", "restart", "deployment/kserve-controller-manager")
    assert kserve < find(plan, "patch", "configmap", "inferenceservice-config") < restart
    assert restart < find(plan, "rollout", "status", "deployment/kserve-controller-manager") < kserve_resources
    # every kubectl talks to the kind cluster's context only
    for argv in plan:
        for i, word in enumerate(argv):
            if word == "kubectl":
                assert argv[i + 1:i + 3] == ["--context", "kind-kftune"], argv


def test_up_makes_the_serving_secret_and_the_model_bucket(sandbox):
    plan = dry_run(sandbox, "up.sh")
    overlay = find(plan, "apply", "-k", str(ROOT / "manifests" / "overlays" / "kind"))
    secret = find(plan, "get", "secret", "mlpipeline-minio-artifact")
    assert overlay < secret
    argv = plan[secret]
    assert f"go-template-file={KIND_DIR / 'serving-minio-secret.tmpl'}" in argv
    assert argv[argv.index("|") + 1:] == ["kubectl", "--context", "kind-kftune", "apply", "-f", "-"]
    bucket = find(plan, "exec", "deployment/seaweedfs")
    assert "s3.bucket.create --name kftune-models" in plan[bucket][-1]
    assert lib_values("MODEL_BUCKET") == {"MODEL_BUCKET": "kftune-models"}


def test_up_builds_and_pushes_the_images_to_the_local_registry(sandbox):
    plan = dry_run(sandbox, "up.sh")
    images = plan.index(["make", "images", "REGISTRY=localhost:5001", "TAG=dev", "TORCH_VARIANT=cpu"])
    push = plan.index(["make", "push-images", "REGISTRY=localhost:5001", "TAG=dev"])
    assert find(plan, "docker", "run", "--name", "kind-registry") < images < push
    assert lib_values("REGISTRY", "IMAGE_TAG") == {"REGISTRY": "localhost:5001", "IMAGE_TAG": "dev"}
    skipped = dry_run(sandbox, "up.sh", "--skip-images")
    assert not has(skipped, "make")


def test_up_gpu_variant_uses_nvkind_and_the_device_plugin(sandbox):
    plan = dry_run(sandbox, "up.sh", "--gpu")
    v = versions()
    assert not has(plan, "kind", "create", "cluster")
    cluster = find(plan, "nvkind", "cluster", "create")
    assert find(plan, "docker", "run", "--name", "kind-registry") < cluster
    assert option(plan[cluster], "--config-template") == str(KIND_DIR / "nvkind-config.yaml")
    assert option(plan[cluster], "--image") == v["KIND_NODE_IMAGE"]
    # the worker with the GPUs pulls from the registry too
    assert has(plan, "docker", "cp", str(KIND_DIR / "registry-hosts.toml"),
               "kftune-worker:/etc/containerd/certs.d/localhost:5001/hosts.toml")
    plugin = find(plan, "helm", "upgrade", "-i", "nvidia-device-plugin")
    assert option(plan[plugin], "--version") == v["NVIDIA_DEVICE_PLUGIN_VERSION"]
    assert option(plan[plugin], "--kube-context") == "kind-kftune"
    assert cluster < plugin < find(plan, "cert-manager")
    assert has(plan, "make", "images", "REGISTRY=localhost:5001", "TAG=dev", "TORCH_VARIANT=cu126")


# --- run.sh -----------------------------------------------------------------------------------------


def cli_flags(command: str) -> set[str]:
    """The options `kftune <command>` accepts, from the CLI's own parser."""
    from kftune.cli.main import build_parser

    parser = build_parser()._subparsers._group_actions[0].choices[command]
    return {flag for action in parser._actions for flag in action.option_strings}


def pipeline_parameters() -> set[str]:
    """The finetune pipeline's run parameters."""
    from kftune.pipelines.finetune import finetune

    return set(finetune.component_spec.inputs)


def test_run_compiles_for_the_images_up_pushes_then_submits(sandbox):
    up = dry_run(sandbox, "up.sh")
    plan = dry_run(sandbox, "run.sh")
    push = up[up.index(["make", "push-images", "REGISTRY=localhost:5001", "TAG=dev"])]
    compile_ = plan[find(plan, "kftune", "compile")]
    assert option(compile_, "--pipeline") == "finetune"
    assert f"REGISTRY={option(compile_, '--registry')}" in push and f"TAG={option(compile_, '--tag')}" in push
    assert option(compile_, "--gpus") == "0"
    output = option(compile_, "--output")
    assert output == str(KIND_DIR / ".build" / "finetune.yaml")  # not over pipelines/compiled/
    assert plan[find(plan, "mkdir")] == ["mkdir", "-p", str(KIND_DIR / ".build")]

    forward = find(plan, "port-forward", "svc/ml-pipeline")
    assert plan[forward][-2:] == ["8888:8888", "&"] and option(plan[forward], "-n") == "kubeflow"
    submit = find(plan, "kftune", "submit")
    assert find(plan, "kftune", "compile") < forward < submit
    argv = plan[submit]
    assert option(argv, "--host") == "http://localhost:8888"
    assert option(argv, "--pipeline-file") == output
    assert "--wait" in argv
    assert "KF_PIPELINES_UI_ENDPOINT=http://localhost:8080" in argv  # the run link opens the UI's port-forward
    params = [argv[i + 1] for i, word in enumerate(argv) if word == "--param"]
    assert params == ["publish_uri=s3://kftune-models/finetune", "deploy_name=kftune-finetune"]
    wait = plan[find(plan, "wait", "--for=condition=Ready")]
    assert "inferenceservice/kftune-finetune" in wait and option(wait, "-n") == "kubeflow"
    assert submit < find(plan, "wait", "--for=condition=Ready")


def test_run_uses_only_flags_and_parameters_that_exist(sandbox):
    plan = dry_run(sandbox, "run.sh", "--param", "num_train_epochs=1")
    for command in ("compile", "submit"):
        argv = plan[find(plan, "kftune", command)]
        used = {word for word in argv[argv.index(command) + 1:] if word.startswith("--")}
        assert used <= cli_flags(command), used - cli_flags(command)
    argv = plan[find(plan, "kftune", "submit")]
    names = {argv[i + 1].split("=", 1)[0] for i, word in enumerate(argv) if word == "--param"}
    assert names == {"publish_uri", "deploy_name", "num_train_epochs"}
    assert names <= pipeline_parameters()


def test_run_param_replaces_a_default_and_no_deploy_drops_them(sandbox):
    plan = dry_run(sandbox, "run.sh", "--param", "deploy_name=sentiment", "--gpu")
    argv = plan[find(plan, "kftune", "submit")]
    assert [argv[i + 1] for i, w in enumerate(argv) if w == "--param"] == [
        "publish_uri=s3://kftune-models/finetune", "deploy_name=sentiment"]
    assert has(plan, "wait", "--for=condition=Ready", "inferenceservice/sentiment")
    assert option(plan[find(plan, "kftune", "compile")], "--gpus") == "1"

    plan = dry_run(sandbox, "run.sh", "--no-deploy")
    assert "--param" not in plan[find(plan, "kftune", "submit")]
    assert not has(plan, "wait", "--for=condition=Ready")


def test_run_uses_the_project_virtualenv_by_default(sandbox):
    env, calls = sandbox
    env = {k: v for k, v in env.items() if k != "KFTUNE"}
    result = subprocess.run([BASH, str(KIND_DIR / "run.sh"), "--dry-run"], env=env, capture_output=True, text=True)
    assert result.returncode == 0 and not calls.exists()
    expected = ROOT / ".venv" / "bin" / "kftune"
    first = expected if os.access(expected, os.X_OK) else Path("kftune")
    assert f"+ {first} compile " in result.stdout


# --- down.sh ----------------------------------------------------------------------------------------


def test_down_deletes_cluster_and_registry(sandbox):
    plan = dry_run(sandbox, "down.sh")
    assert ["kind", "delete", "cluster", "--name", "kftune"] in plan
    assert ["docker", "rm", "-f", "kind-registry"] in plan
    kept = dry_run(sandbox, "down.sh", "--keep-registry")
    assert ["kind", "delete", "cluster", "--name", "kftune"] in kept and not has(kept, "docker", "rm")


# --- the pinned versions and the files the scripts use ----------------------------------------------


def test_versions_are_pinned_in_one_file():
    v = versions()
    assert set(v) == {"KIND_VERSION", "KIND_NODE_IMAGE", "KUBECTL_VERSION", "KIND_REGISTRY_IMAGE",
                      "CERT_MANAGER_VERSION", "KFP_VERSION", "TRAINER_VERSION", "KATIB_VERSION", "KSERVE_VERSION",
                      "NVKIND_VERSION", "NVIDIA_DEVICE_PLUGIN_VERSION"}
    for key, value in v.items():
        assert value and not re.search(r"latest|master|main|HEAD", value), (key, value)
    assert re.fullmatch(r"kindest/node:v1\.\d+\.\d+@sha256:[0-9a-f]{64}", v["KIND_NODE_IMAGE"])
    assert re.fullmatch(r"[0-9a-f]{40}", v["NVKIND_VERSION"])
    for key in ("KIND_VERSION", "KUBECTL_VERSION", "CERT_MANAGER_VERSION", "TRAINER_VERSION", "KATIB_VERSION",
                "KSERVE_VERSION"):
        assert re.fullmatch(r"v\d+\.\d+\.\d+", v[key]), key
    # kubectl within one minor version of the node's Kubernetes
    node_minor = int(v["KIND_NODE_IMAGE"].split(":v1.")[1].split(".")[0])
    assert abs(int(v["KUBECTL_VERSION"].split(".")[1]) - node_minor) <= 1
    # no version is written anywhere else in the scripts
    for script in (*SCRIPTS, "lib.sh"):
        text = (KIND_DIR / script).read_text()
        for key in ("KFP_VERSION", "KATIB_VERSION", "KSERVE_VERSION", "TRAINER_VERSION", "CERT_MANAGER_VERSION"):
            assert v[key] not in text, (script, key)


def test_the_docs_give_the_same_install_commands(sandbox):
    plan = dry_run(sandbox, "up.sh", "--gpu")
    upstream = (ROOT / "manifests" / "upstream" / "README.md").read_text()
    remote = {word for argv in plan for word in argv if word.startswith(("https://", "github.com/"))}
    assert len(remote) >= 9
    for url in remote:
        assert url in upstream, f"manifests/upstream/README.md lacks {url}"
    readme = (KIND_DIR / "README.md").read_text()
    v = versions()
    for key in ("KIND_VERSION", "KUBECTL_VERSION", "NVKIND_VERSION"):
        assert v[key] in readme, f"kind-cluster/README.md does not install {key}={v[key]}"
    for text in ("./kind-cluster/up.sh", "./kind-cluster/run.sh", "./kind-cluster/down.sh", "--gpu", "--dry-run",
                 "svc/ml-pipeline-ui", "pipelines/compiled/finetune.yaml", "shellcheck"):
        assert text in readme, text


def test_kind_configs():
    cpu = yaml.safe_load((KIND_DIR / "kind-config.yaml").read_text())
    assert (cpu["kind"], cpu["apiVersion"]) == ("Cluster", "kind.x-k8s.io/v1alpha4")
    assert [n["role"] for n in cpu["nodes"]] == ["control-plane"]
    gpu = yaml.safe_load((KIND_DIR / "nvkind-config.yaml").read_text())
    assert [n["role"] for n in gpu["nodes"]] == ["control-plane", "worker"]
    worker = gpu["nodes"][1]
    assert worker["labels"] == {"nvidia.com/gpu.present": "true"}  # the device plugin's node affinity
    assert {"hostPath": "/dev/null", "containerPath": "/var/run/nvidia-container-devices/all"} in worker["extraMounts"]


def test_registry_wiring_files_name_the_registry_of_lib():
    values = lib_values("REGISTRY", "REGISTRY_NAME", "REGISTRY_PORT")
    hosting = yaml.safe_load((KIND_DIR / "local-registry-hosting.yaml").read_text())
    assert yaml.safe_load(hosting["data"]["localRegistryHosting.v1"])["host"] == values["REGISTRY"]
    hosts = [line for line in (KIND_DIR / "registry-hosts.toml").read_text().splitlines()
             if line and not line.startswith("#")]
    assert hosts == [f'[host."http://{values["REGISTRY_NAME"]}:5000"]']
    assert values["REGISTRY"] == f"localhost:{values['REGISTRY_PORT']}"


def test_kind_overlay_matches_what_the_scripts_use():
    values = lib_values("REGISTRY", "IMAGE_TAG", "NAMESPACE")
    build = subprocess.run([need(KUBECTL, "kubectl"), "kustomize",
                            str(ROOT / "manifests" / "overlays" / "kind")], capture_output=True, text=True, check=True)
    docs = [d for d in yaml.safe_load_all(build.stdout) if d]
    assert {d["metadata"]["namespace"] for d in docs} == {values["NAMESPACE"]}
    runtime = next(d for d in docs if d["kind"] == "ServingRuntime")
    expected = ImageScheme(registry=values["REGISTRY"], tag=values["IMAGE_TAG"]).image("serve")
    assert runtime["spec"]["containers"][0]["image"] == expected


def rendered_secret() -> str:
    """kind-cluster/serving-minio-secret.tmpl rendered as up.sh renders it, with placeholder values."""
    text = (KIND_DIR / "serving-minio-secret.tmpl").read_text()
    text = re.sub(r"\{\{- /\*.*?\*/ -\}\}\n", "", text, flags=re.S)  # the template's comment
    fields = re.findall(r'\{\{index \.data "(\w+)"\}\}', text)
    assert fields == ["accesskey", "secretkey"]  # what KFP's mlpipeline-minio-artifact holds
    rendered = re.sub(r'\{\{index \.data "(\w+)"\}\}', "UkVQTEFDRV9NRQ==", text)
    assert "{{" not in rendered
    return rendered


def test_serving_secret_template_renders_the_kserve_secret():
    """The go-template up.sh renders from KFP's Secret: the template Secret's name, annotations and keys."""
    secret = yaml.safe_load(rendered_secret())
    template = yaml.safe_load((ROOT / "manifests" / "secrets" / "minio-serving.yaml").read_text())
    assert secret["metadata"]["name"] == template["metadata"]["name"] == "kftune-serving-minio"
    assert secret["metadata"]["namespace"] == lib_values("NAMESPACE")["NAMESPACE"]
    assert secret["metadata"]["annotations"] == template["metadata"]["annotations"]
    assert set(secret["data"]) == set(template["stringData"])


def test_serving_secret_passes_strict_validation(tmp_path):
    validator = need(KUBERNETES_VALIDATE, "kubernetes-validate")
    manifest = tmp_path / "secret.yaml"
    manifest.write_text(rendered_secret())
    result = subprocess.run([validator, "--strict", str(manifest)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert " passed for resource " in result.stdout, result.stdout


def test_lib_runs_what_it_would_print(tmp_path):
    """Outside a dry run the helpers execute: run, pipe, capture (empty when the command fails), run_bg."""
    script = f"""
source {shlex.quote(str(KIND_DIR / 'lib.sh'))}
run mkdir -p {shlex.quote(str(tmp_path / 'made'))}
pipe printf 'one two\\n' '|' tr a-z A-Z
capture out default printf 'captured'
echo "capture=$out"
capture out default false
echo "failed=[$out]"
run_bg pid sleep 0
wait "$pid"
echo "bg=$?"
"""
    result = subprocess.run([BASH, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["ONE TWO", "capture=captured", "failed=[]", "bg=0"]
    assert (tmp_path / "made").is_dir()
    # the trace goes to stderr, in the dry run's format
    assert f"+ mkdir -p {tmp_path / 'made'}" in result.stderr.splitlines()
    assert "+ printf 'one two\\n' | tr a-z A-Z" in result.stderr.splitlines()
    failing = subprocess.run([BASH, "-c", f"source {shlex.quote(str(KIND_DIR / 'lib.sh'))}; run false; echo after"],
                             capture_output=True, text=True)
    assert failing.returncode != 0 and "after" not in failing.stdout  # set -e: a failed command stops the script


STUB = """#!{bash}
# records its argv (fields separated by 0x1f) in one write (both sides of a pipe log at once),
# answers the few questions the scripts ask, succeeds
record=$(printf '%s\\x1f' "${{0##*/}}" "$@")
printf '%s\\n' "$record" >> {log}
case "${{0##*/}} $*" in
  "docker inspect -f {{{{json .NetworkSettings.Networks.kind}}}} kind-registry") echo null ;;
  "docker ps"*) echo kind-registry ;;
  "kind get nodes"*) printf '%s\\n' $STUB_NODES ;;
  *" get secret mlpipeline-minio-artifact "*) echo "kind: Secret" ;;
  *" apply -f -") while IFS= read -r line; do :; done ;;
esac
exit 0
"""


@pytest.mark.parametrize(("script", "args"), [("up.sh", ()), ("up.sh", ("--gpu",)), ("down.sh", ())])
def test_a_real_run_executes_exactly_the_dry_run_plan(sandbox, tmp_path, script, args):
    """With tools that succeed, the script runs the commands its dry run printed, in that order."""
    stubs = tmp_path / "bin"
    stubs.mkdir()
    log = tmp_path / "calls.log"
    for tool in ("docker", "kind", "nvkind", "kubectl", "helm", "make"):
        (stubs / tool).write_text(STUB.format(bash=BASH, log=log))
        (stubs / tool).chmod(0o755)
    nodes = "kftune-control-plane kftune-worker" if "--gpu" in args else "kftune-control-plane"
    env = {"PATH": f"{stubs}:{os.environ['PATH']}", "HOME": str(tmp_path), "LANG": "C", "STUB_NODES": nodes}
    result = subprocess.run([BASH, str(KIND_DIR / script), *args], env=env, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    executed = [line.split("\x1f")[:-1] for line in log.read_text().splitlines()]
    planned = dry_run(sandbox, script, *args)
    position = 0
    for argv in planned:
        sides = [argv]
        while "|" in sides[-1]:  # a pipe runs both sides at once: they may be logged in either order
            last = sides.pop()
            sides += [last[:last.index("|")], last[last.index("|") + 1:]]
        assert sorted(executed[position:position + len(sides)]) == sorted(sides), (position, argv)
        position += len(sides)
    assert position == len(executed)
