"""The image definitions, without a Docker engine: every stage has a Dockerfile that hadolint
passes, that runs as a non-root user, takes its base from a build argument and carries no
credentials; the build script tags and pushes exactly the names of the one image scheme."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kftune.cluster.images import STAGES, ImageScheme

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILES = sorted([*ROOT.glob("images/**/Dockerfile"), *ROOT.glob("components/*/Dockerfile")])
SCRIPTS = [ROOT / "images" / "build.sh", ROOT / "images" / "debian-base.sh", ROOT / "images" / "base" / "build-pip.sh",
           ROOT / "images" / "base" / "install-extra.sh", ROOT / ".ci" / "run", ROOT / ".ci" / "start-dockerd.sh"]


def dev_tool(name: str) -> str:
    """A linter of the dev extra: beside this interpreter (the venv), else on PATH."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if not found:
        pytest.fail(f"{name} not found: install the dev extra (pip install -e '.[dev]')")
    return found


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text(encoding="utf-8"))
    pairs = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            pairs.append((keyword.upper(), rest.strip()))
    return pairs


def final_stage(dockerfile: Path) -> list[tuple[str, str]]:
    pairs = instructions(dockerfile)
    last_from = max(i for i, (keyword, _) in enumerate(pairs) if keyword == "FROM")
    return pairs[last_from:]


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def test_every_stage_has_a_dockerfile():
    missing = [stage for stage in STAGES if not (ROOT / "components" / stage / "Dockerfile").is_file()]
    assert not missing, f"stages without components/<stage>/Dockerfile: {missing}"
    assert (ROOT / "images" / "base" / "Dockerfile").is_file()


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=rel)
def test_hadolint_passes(dockerfile):
    result = subprocess.run([dev_tool("hadolint"), "--no-color", str(dockerfile)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=rel)
def test_runs_as_a_non_root_user(dockerfile):
    users = [args for keyword, args in final_stage(dockerfile) if keyword == "USER"]
    assert users, f"{rel(dockerfile)}: no USER in the final stage (it would run as root)"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0"), f"{rel(dockerfile)}: the last USER is {users[-1]}"
    assert user.isdigit(), f"{rel(dockerfile)}: USER {users[-1]}: numeric, so runAsNonRoot can verify it"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=rel)
def test_base_comes_from_a_build_argument(dockerfile):
    pairs = instructions(dockerfile)
    first_from = next(i for i, (keyword, _) in enumerate(pairs) if keyword == "FROM")
    global_args = {args.split("=")[0] for keyword, args in pairs[:first_from] if keyword == "ARG"}
    image = final_stage(dockerfile)[0][1].split()[0]
    match = re.fullmatch(r"\$\{?(\w+)\}?", image)
    assert match, f"{rel(dockerfile)}: final FROM {image!r} is not a build argument"
    assert match.group(1) in global_args, f"{rel(dockerfile)}: ARG {match.group(1)} is not declared before FROM"


# Names that would hold a credential; TOKENIZERS_PARALLELISM is a tokenizers switch.
CREDENTIAL = re.compile(r"(PASSW|SECRET|TOKEN(?!IZERS)|API_?KEY|ACCESS_?KEY|PRIVATE_?KEY|CREDENTIAL|AUTH)", re.I)
SECRET_FILES = re.compile(r"(pip\.conf|\.netrc|\.pypirc|\.npmrc|\.docker/config|id_rsa|\.pem\b|\.key\b|credentials)",
                          re.I)


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=rel)
def test_no_credentials_in_the_image_definition(dockerfile):
    for keyword, args in instructions(dockerfile):
        if keyword in ("ENV", "ARG"):
            names = re.findall(r"(?:^|\s)([A-Za-z_][A-Za-z0-9_]*)=", args) or [args.split()[0]]
            leaked = [name for name in names if CREDENTIAL.search(name)]
            assert not leaked, f"{rel(dockerfile)}: {keyword} {leaked} would keep a credential in the image"
        if keyword in ("COPY", "ADD"):
            assert not SECRET_FILES.search(args), f"{rel(dockerfile)}: {keyword} {args} copies a secret into a layer"
        if keyword == "RUN":
            # build-time secrets come as BuildKit secret mounts, which no layer keeps
            assert not re.search(r"(https?://[^/\s]+:[^@\s]+@)", args), f"{rel(dockerfile)}: URL with a password"


def test_build_context_is_an_allowlist():
    lines = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert lines[0] == "*", ".dockerignore should exclude everything, then allow what images need"
    allowed = {line[1:] for line in lines if line.startswith("!")}
    assert {"pyproject.toml", "src", "components", "pipelines"} <= allowed
    assert not allowed & {".venv", ".git", "tests", "kftune-runs"}


@pytest.mark.parametrize("script", SCRIPTS, ids=rel)
def test_shell_scripts_pass_shellcheck(script):
    assert script.is_file(), f"{rel(script)} is missing"
    result = subprocess.run([dev_tool("shellcheck"), str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


# A docker client stand-in: logs each call, says it is an old client with BuildKit built in.
FAKE_DOCKER = """#!/bin/sh
printf '%s\\n' "$*" >> "$DOCKER_CALLS"
case "$1" in
    buildx) exit 1 ;;
    version) echo 20.10.24 ;;
    build) case " $* " in *" -f - "*) cat >/dev/null ;; esac ;;
esac
"""


@pytest.fixture
def fake_docker(tmp_path):
    docker = tmp_path / "docker"
    docker.write_text(FAKE_DOCKER)
    docker.chmod(0o755)
    calls = tmp_path / "calls"
    env = {k: v for k, v in os.environ.items() if k not in ("REGISTRY", "TAG", "TORCH_VARIANT", "BASE_IMAGE", "STAGES",
                                                             "PIP_CONF", "CA_BUNDLE", "WHEELHOUSE", "TORCH_INDEX_URL")}
    env.update(DOCKER=str(docker), DOCKER_CALLS=str(calls))

    def make(*args: str) -> list[list[str]]:
        calls.write_text("")
        result = subprocess.run(["make", "--no-print-directory", *args], cwd=ROOT, env=env, capture_output=True,
                                text=True)
        assert result.returncode == 0, result.stdout + result.stderr
        return [line.split() for line in calls.read_text().splitlines()]

    return make


def option_values(call: list[str], option: str) -> list[str]:
    return [call[i + 1] for i, word in enumerate(call[:-1]) if word == option]


def test_make_images_builds_every_stage_under_the_scheme(fake_docker):
    builds = [c for c in fake_docker("images", "REGISTRY=registry.example:5000/ml/", "TAG=t1") if c[0] == "build"]
    scheme = ImageScheme(registry="registry.example:5000/ml", tag="t1")
    tags = [option_values(c, "-t")[0] for c in builds]
    assert tags == ["registry.example:5000/ml/kftune-base:t1", *(scheme.image(s) for s in STAGES)]
    for call in builds[1:]:
        # CPU variant: every stage on the one CPU base
        assert option_values(call, "--build-arg") == ["BASE=registry.example:5000/ml/kftune-base:t1"]
        assert call[call.index("-f") + 1].startswith("components/") and call[-1] == "."


def test_make_images_defaults_to_the_schemes_registry_and_tag(fake_docker):
    builds = [c for c in fake_docker("images") if c[0] == "build"]
    assert option_values(builds[-1], "-t") == [ImageScheme().image(STAGES[-1])]


def test_cuda_variant_puts_training_stages_on_the_cuda_base(fake_docker, tmp_path):
    builds = [c for c in fake_docker("images", "REGISTRY=r", "TAG=t", "TORCH_VARIANT=cu126", "BASE_IMAGE=py:3.11",
                                      f"CA_BUNDLE={tmp_path / 'ca.pem'}", f"WHEELHOUSE={tmp_path}")
              if c[0] == "build"]
    by_tag = {option_values(c, "-t")[0]: c for c in builds}
    cuda = by_tag["r/kftune-base-cuda:t"]
    assert "TORCH_VARIANT=cu126" in option_values(cuda, "--build-arg")
    assert "BASE_IMAGE=py:3.11" in option_values(cuda, "--build-arg")
    assert "TORCH_VARIANT=cu126" not in option_values(by_tag["r/kftune-base:t"], "--build-arg")
    for stage in STAGES:
        base = "r/kftune-base-cuda:t" if stage in ("train", "tune", "pretrain") else "r/kftune-base:t"
        assert f"BASE={base}" in option_values(by_tag[f"r/kftune-{stage}:t"], "--build-arg"), stage
    # build inputs go in as BuildKit secrets and a wheelhouse image, never as plain build arguments
    wheelhouse = by_tag.pop("kftune-wheelhouse:build")
    assert wheelhouse[-1] == str(tmp_path)
    for call in by_tag.values():
        assert f"id=ca-bundle,src={tmp_path / 'ca.pem'}" in option_values(call, "--secret")
        assert "WHEELHOUSE=kftune-wheelhouse:build" in option_values(call, "--build-arg")


def test_make_push_images_pushes_the_stage_images(fake_docker):
    calls = fake_docker("push-images", "REGISTRY=localhost:5001", "TAG=dev")
    pushed = [c[1] for c in calls if c[0] == "push"]
    assert pushed == [ImageScheme(registry="localhost:5001", tag="dev").image(s) for s in STAGES]
    assert not [c for c in calls if c[0] == "build"]


def test_unknown_stage_is_refused(fake_docker):
    with pytest.raises(AssertionError, match="unknown stage 'trian'"):
        fake_docker("images", "STAGES=preprocess trian")
