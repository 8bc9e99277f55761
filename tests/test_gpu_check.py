"""bench/gpu_check.py, the prepared GPU check: its runner (a failed or timed-out step fails the check while the next
steps run, the JSON rewritten after each), the preparation's pieces (wheels fetched for the GPU machine's Python,
bitsandbytes trimmed, requirements checked against the machine's packages), and the whole check prepared without
wheels and run as a dry run on CPU, every step ending ok or skipped with a reason."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu_check.py"


def load_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


FAKE_STEPS = textwrap.dedent('''
    """Stands in for bench/gpu_check_steps.py: fails, hangs, skips or succeeds by the step's name."""
    import json
    import subprocess
    import sys
    import time

    name, result = sys.argv[1], sys.argv[sys.argv.index("--result") + 1]
    print(f"step {name} starts", flush=True)
    if name == "broken":
        sys.exit("ValueError: broken on purpose")
    if name == "hangs":  # with a child in a session of its own, as torchrun starts its workers
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
        open(result + ".child", "w").write(str(child.pid))
        time.sleep(60)
    outcome = {"status": "skipped", "reason": "not on this machine"} if name == "skips" else \\
        {"status": "ok", "figures": {"step": name}}
    with open(result, "w") as out:
        json.dump(outcome, out)
''')


def test_a_failed_or_timed_out_step_fails_the_check_and_the_next_steps_still_run(tmp_path, monkeypatch):
    check = load_check()
    fake = tmp_path / "fake_steps.py"
    fake.write_text(FAKE_STEPS)
    monkeypatch.setattr(check, "STEPS_SCRIPT", fake)
    monkeypatch.setattr(check, "STEPS", {
        "environment": (10, (), "where it runs"), "broken": (10, (), "fails"),
        "after_broken": (10, ("broken",), "needs what failed"), "hangs": (1, (), "times out"),
        "skips": (10, (), "cannot run here"), "last": (10, (), "still runs")})
    prepared = tmp_path / "prepared"
    prepared.mkdir()
    (prepared / check.MANIFEST).write_text(json.dumps({"kftune_commit": "abc"}))
    out = tmp_path / "out" / "gpu-check.json"

    passed = check.run_check(prepared, out, dry_run=False, work=tmp_path / "work", budget_s=None, only=[],
                             oom_cap_gib=4.0)

    document = json.loads(out.read_text())
    steps = document["steps"]
    assert not passed and document["passed"] is False and document["failed"] == ["broken", "hangs"]
    assert list(steps) == ["install", "environment", "broken", "after_broken", "hangs", "skips", "last"]
    assert steps["install"]["status"] == "skipped" and "no wheels" in steps["install"]["reason"]
    assert steps["environment"] == steps["environment"] | {"status": "ok", "figures": {"step": "environment"}}
    assert "broken on purpose" in steps["broken"]["error"] and steps["broken"]["exit_code"] == 1
    assert steps["after_broken"]["status"] == "skipped" and "broken" in steps["after_broken"]["reason"]
    assert steps["hangs"]["status"] == "failed" and steps["hangs"]["error"].startswith("timed out after 1 s")
    assert "step hangs starts" in steps["hangs"]["error"]  # what it printed before it was stopped
    child = int((tmp_path / "work" / "results" / "hangs.json.child").read_text())
    assert not check.alive(child)  # ended with the step, though in another session
    assert steps["skips"] == steps["skips"] | {"status": "skipped", "reason": "not on this machine"}
    assert steps["last"]["status"] == "ok" and steps["last"]["proves"] == "still runs"
    assert document["environment"] == {"step": "environment"}
    log = out.with_suffix(".log").read_text()
    assert "===== broken: failed" in log and "step last starts" in log
    # kftune importable from the private site folder, as the repository's layout maps it (pyproject.toml)
    package = tmp_path / "work" / "site" / "kftune"
    assert (package / "training" / "loop.py").is_file() and (package / "components" / "export").is_dir()

    # with the time budget spent, the steps not started fail as not run
    out_of_time = tmp_path / "out" / "late.json"
    assert not check.run_check(prepared, out_of_time, dry_run=False, work=tmp_path / "work2", budget_s=1.0,
                               only=["last"], oom_cap_gib=4.0)
    late = json.loads(out_of_time.read_text())["steps"]
    assert list(late) == ["install", "environment", "last"]
    assert all("time budget" in late[name]["error"] for name in ("environment", "last"))


def test_selected_steps_bring_the_steps_they_need_in_order():
    check = load_check()
    assert check.selected_steps(["export_parity"]) == ["environment", "models", "classification_bf16",
                                                       "causal_lm_lora", "export_parity"]
    assert check.selected_steps(["throughput"]) == ["environment", "throughput"]
    assert check.selected_steps([]) == list(check.STEPS)


def _wheel(path: Path, members: dict[str, bytes], requires: list[str] = ()) -> Path:
    record = "".join(f"{name},sha256=x,{len(data)}\n" for name, data in members.items())
    metadata = "Metadata-Version: 2.1\nName: pkg\nVersion: 1.0\n" + "".join(f"Requires-Dist: {r}\n" for r in requires)
    with zipfile.ZipFile(path, "w") as wheel:
        for name, data in members.items():
            wheel.writestr(name, data)
        wheel.writestr("pkg-1.0.dist-info/METADATA", metadata)
        wheel.writestr("pkg-1.0.dist-info/RECORD", record + "pkg-1.0.dist-info/RECORD,,\n")
    return path


def test_trimming_bitsandbytes_keeps_its_cuda_13_and_cpu_libraries_and_a_consistent_record(tmp_path):
    check = load_check()
    libraries = ["cuda118", "cuda128", "cuda130", "cuda132", "rocm72", "xpu2026", "cpu"]
    members = {"bitsandbytes/__init__.py": b"x = 1\n"} | {f"bitsandbytes/libbitsandbytes_{v}.so": b"\0" * 10
                                                          for v in libraries}
    wheel = _wheel(tmp_path / "bitsandbytes-0.50.2-py3-none-manylinux_2_24_x86_64.whl", members)
    dropped = check.trim_wheel(wheel, check.keep_bitsandbytes_member)
    with zipfile.ZipFile(wheel) as trimmed:
        names = set(trimmed.namelist())
        record = trimmed.read("pkg-1.0.dist-info/RECORD").decode()
    kept = {"bitsandbytes/__init__.py"} | {f"bitsandbytes/libbitsandbytes_{v}.so"
                                           for v in ("cuda130", "cuda132", "cpu")}
    assert kept <= names and not set(dropped) & names and len(dropped) == 4
    assert all(f"{name}," in record for name in kept) and not any(f"{name}," in record for name in dropped)


def test_requirements_are_checked_against_the_gpu_machine_and_the_shipped_wheels(tmp_path):
    check = load_check()
    wheel = _wheel(tmp_path / "pkg-1.0-py3-none-any.whl", {}, [
        "numpy>=1.17", "httpx2<3", "not-on-the-machine>=1", "tomli>=1.1.0; python_version < \"3.11\"",
        "pytest; extra == \"dev\"", "jsfetch; sys_platform == 'emscripten'"])
    requirements = check.wheel_requirements(wheel)
    assert check.unmet_on_gpu_machine(requirements, shipped={"httpx2"}) == ["not-on-the-machine>=1"]
    assert check.unmet_on_gpu_machine(requirements, shipped=set()) == ["httpx2<3", "not-on-the-machine>=1"]


def test_wheel_versions_are_kftunes_pins_where_it_pins_them():
    check = load_check()
    versions = check.wheel_versions()
    assert set(versions) == set(check.WHEELS)
    pins = check.pinned_versions()
    for name in ("transformers", "huggingface_hub", "tokenizers", "datasets", "peft", "bitsandbytes"):
        assert versions[name] == pins[check.normalise(name)]


def test_wheels_are_fetched_for_the_gpu_machines_python(tmp_path):
    """pip downloads for Python 3.12 on manylinux x86-64 whatever Python runs here (needs PyPI, as CI has)."""
    check = load_check()
    check.download_wheels({"truststore": "0.10.5", "multiprocess": "0.70.19"}, tmp_path / "wheels")
    names = sorted(p.name for p in (tmp_path / "wheels").glob("*.whl"))
    assert names == ["multiprocess-0.70.19-py312-none-any.whl", "truststore-0.10.5-py3-none-any.whl"]


DRY_RUN_STEPS = ["classification_bf16", "oom_ddp"]
"""The steps the suite dry-runs (with what they need: environment, models): a one-process bf16 run, and an
out-of-memory recovery under DDP (torchrun, 2 gloo ranks). The whole dry run (every step, about 7 minutes on 2
cores: some 25 processes each importing torch and transformers) is bench/gpu_check.py's own command, run before GPU
time is spent (docs/benchmarks.md, "GPU check"); the steps' parts are each tested here and in the training tests."""


@pytest.mark.slow
def test_prepared_without_wheels_the_dry_run_ends_every_step_ok_or_skipped_with_a_reason(tmp_path):
    """The GPU machine's steps, on CPU at tiny sizes: preparation without wheels, then a dry run of DRY_RUN_STEPS."""
    check = load_check()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), str(ROOT)]))
    prepared, out = tmp_path / "prepared", tmp_path / "out" / "gpu-check.json"
    done = subprocess.run([sys.executable, str(SCRIPT), "prepare", str(prepared), "--no-wheels", "--max-rows", "300"],
                          env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "MiB (limit 64 MiB)" in done.stdout
    manifest = json.loads((prepared / check.MANIFEST).read_text())
    assert set(manifest["data"]) == {"classification", "causal-lm"} and manifest["wheels"] == {}
    assert set(manifest["wheels_planned"]) == set(check.WHEELS)
    assert (prepared / "models" / "causal-lm" / "tokenizer.json").is_file()
    assert not list(prepared.rglob("*.safetensors"))  # the models are made where the check runs

    done = subprocess.run([sys.executable, str(SCRIPT), "run", "--prepared", str(prepared), "--out", str(out),
                           "--dry-run", "--work", str(tmp_path / "work"), "--steps", ",".join(DRY_RUN_STEPS)],
                          env=env, capture_output=True, text=True)
    document = json.loads(out.read_text())
    steps = document["steps"]
    summary = {name: (step["status"], step.get("reason") or step.get("error", "")[-1500:])
               for name, step in steps.items()}
    assert done.returncode == 0 and document["passed"], summary
    assert list(steps) == ["install", *check.selected_steps(DRY_RUN_STEPS), "imports"]
    for name, step in steps.items():
        assert step["status"] in ("ok", "skipped"), (name, step)
        assert step["status"] == "ok" or step["reason"], (name, step)
    assert {name for name, step in steps.items() if step["status"] == "skipped"} == {"install"}

    figures = {name: step.get("figures", {}) for name, step in steps.items()}
    assert document["environment"]["packages"]["kftune"]["from"] == "this checkout"
    assert figures["classification_bf16"]["precision"] == "bf16"
    assert figures["classification_bf16"]["samples_per_second"] > 0 and figures["classification_bf16"]["padding_free"]
    assert figures["oom_ddp"]["halvings"] >= 1 and figures["oom_ddp"]["logged"]
    assert figures["oom_ddp"]["sync_after_backward_logged"]
    assert figures["imports"]["missing_on_gpu_machine"] == []
    assert "===== oom_ddp: ok" in out.with_suffix(".log").read_text()
