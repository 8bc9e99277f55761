"""The one prepared GPU check: kftune's CUDA path, step by step, in under 8 minutes on one GPU.

A GPU machine is lent rarely, for minutes, bare (no package registry reachable), with its own Python and
CUDA build of torch. So everything else the check needs is prepared here, in one folder of at most 64 MiB that
travels with the command, and the check is tested here first on CPU (``--dry-run``, the same steps at tiny sizes):

    python bench/gpu_check.py prepare .gpu-check                                  # here (pip reaches PyPI)
    python bench/gpu_check.py run --prepared .gpu-check --out /tmp/gpu-check.json --dry-run     # here, on CPU
    python3 bench/gpu_check.py run --prepared .gpu-check --out $OUT/gpu-check.json               # on the GPU

``prepare`` writes into the folder: wheels of the pinned packages the GPU machine lacks or has at other versions
(:data:`WHEELS`; bitsandbytes trimmed to its CUDA 13 libraries, for QLoRA), the bundled data preprocessed by
kftune's preprocess (a slice of the classification reviews and of the causal-LM instructions), the bundled
models' configs and tokenizers (no weights: the check builds the models from their configs, with random weights)
and ``manifest.json``; it fails if the folder is over the limit.

``run`` installs the wheels into a private directory (``pip install --no-index --no-deps --target``) put on
``PYTHONPATH`` in front of the machine's packages, makes kftune importable from this checkout, then runs each step
of :data:`STEPS` (``bench/gpu_check_steps.py``) as a subprocess with its own timeout. After every step it
rewrites the JSON of results (atomically, so a crash loses nothing): per step ok / failed / skipped, seconds, its
figures, the reason of a skip and the tail of a failure's output; the full output of every step goes to the log
beside the JSON. A failed step fails the check (exit 1) but the next steps still run. ``--dry-run`` runs the same
steps on CPU (gloo instead of NCCL; fp16 and QLoRA skipped, saying why; the out-of-memory error raised by a
stand-in instead of the allocator) and also lists what those steps imported that the GPU machine would miss.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import signal
import site
import subprocess
import sys
import tempfile
import time
import zipfile
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STEPS_SCRIPT = Path(__file__).resolve().with_name("gpu_check_steps.py")
DEFAULT_DIR = ".gpu-check"
MANIFEST = "manifest.json"
LIMIT_MIB = 64
"""What the device tool carries along with a command (the working tree included, which is about 3 MiB)."""
BUDGET_S = 480
"""The whole check must fit in 8 minutes on one H100: a step not started by then fails as not run."""

TARGET_PYTHON = "3.12"
"""The GPU machine's Python (3.12.3): the wheels are fetched for it."""
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64", "manylinux1_x86_64")

WHEELS = {
    "transformers": "kftune pins 5.23.0; the GPU machine has 5.17.0",
    "huggingface_hub": "kftune pins 2.4.0; the GPU machine has 1.33.0",
    "tokenizers": "kftune pins 0.23.3; the GPU machine has 0.23.2 (a binary wheel, abi3)",
    "peft": "kftune pins 0.21.2; the GPU machine's version is not known",
    "datasets": "not on the GPU machine; preprocessed data are datasets.save_to_disk directories",
    "dill": "needed by datasets; not on the GPU machine",
    "multiprocess": "needed by datasets; not on the GPU machine",
    "fsspec": "datasets 5.2.0 needs fsspec<=2026.9.0; the GPU machine's version is not known",
    "httpx2": "huggingface_hub 2.x's HTTP client; not on the GPU machine",
    "httpcore2": "needed by httpx2; not on the GPU machine",
    "truststore": "needed by httpx2 and httpcore2; not on the GPU machine",
    "docstring_parser": "kftune.settings reads each setting's docstring with it; not on the GPU machine",
    "bitsandbytes": "training_mode qlora; not on the GPU machine (trimmed to its CUDA 13 and CPU libraries)",
}
"""The wheels ``prepare`` fetches, and why: kftune's pins where the machine differs, and the packages they need
that the machine lacks. Versions: the pin in pyproject.toml where there is one, else the version installed here
(the one kftune's tests run with)."""

BITSANDBYTES_KEEP = ("libbitsandbytes_cuda13", "libbitsandbytes_cpu")
"""bitsandbytes' wheel (41 MiB) carries a library for each CUDA and ROCm release; the GPU machine's torch is
built for CUDA 13.0, so only those (and the CPU one) are kept: about 4 MiB."""

GPU_IMAGE_PACKAGES = frozenset("""
absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build certifi
charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core cuda-pathfinder
cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock flatbuffers flax fonttools
formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize hypothesis idna
imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib kiwisolver
lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml markdown markdown-it-py markupsafe
matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind narwhals
networkx ninja numba numba-cuda numpy numpyro nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime
nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13
nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir onnxruntime onnxscript
opencv-python-headless optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging pandas pathspec patsy
peft pillow pip pluggy portalocker prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments
pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist python-dateutil
pytorch-lightning pyyaml regex requests rich sacrebleu safetensors scikit-build-core scikit-image scikit-learn scipy
seaborn sentencepiece sentence-transformers setuptools shellingham simplejson six sortedcontainers statsmodels sympy
tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken timm tokenizers toolz torch
torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm transformers treescope triton typer
typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray xxhash yarl zipp
""".split())
"""The Python packages of the GPU machine's image (as read on 2026-11-17), against which ``prepare`` checks that
every wheel's requirements are met and the dry run that nothing it imported would be missing there."""

OPTIONAL_IMPORTS = {
    "boto3": "accelerate imports it for its SageMaker settings only where it is installed",
    "botocore": "with boto3",
    "s3transfer": "with boto3",
    "jmespath": "with boto3",
    "sniffio": "httpcore2 imports it only where it is installed",
    "wcwidth": "tabulate imports it only where it is installed",
    "pytz": "pandas 2 (kftune's pin) needs it; the GPU machine's pandas brings what it needs",
}
"""Distributions a dry run imports only because this environment has them: where they are missing the code that
imports them does without."""


def normalise(name: str) -> str:
    """A distribution name in the form pip compares (PEP 503)."""
    return name.lower().replace("_", "-").replace(".", "-")


# --- prepare (here) ------------------------------------------------------------------------------------------------

def pinned_versions() -> dict[str, str]:
    """``name==version`` pins of pyproject.toml (dependencies and every extra), by normalised name."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    specs = list(project["dependencies"]) + [s for extra in project["optional-dependencies"].values() for s in extra]
    pins = {}
    for spec in specs:
        name, _, version = spec.partition("==")
        if version:
            pins[normalise(name.split("[")[0])] = version.strip()
    return pins


def wheel_versions() -> dict[str, str]:
    """The version of each of :data:`WHEELS`: its pin, else the version installed here."""
    from importlib.metadata import PackageNotFoundError, version

    pins, versions = pinned_versions(), {}
    for name in WHEELS:
        try:
            versions[name] = pins.get(normalise(name)) or version(name)
        except PackageNotFoundError:
            raise SystemExit(f"prepare: {name} is neither pinned in pyproject.toml nor installed here") from None
    return versions


def download_wheels(versions: dict[str, str], directory: Path) -> None:
    """Fetch each wheel for the GPU machine's Python and platform, without dependencies (they are listed)."""
    directory.mkdir(parents=True)
    platforms = [arg for p in PLATFORMS for arg in ("--platform", p)]
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check", "--no-deps",
               "--only-binary=:all:", "--python-version", TARGET_PYTHON, "--implementation", "cp", *platforms,
               "-d", str(directory), *(f"{name}=={version}" for name, version in versions.items())]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"prepare: pip download failed:\n{done.stderr[-3000:]}")


def trim_wheel(path: Path, keep) -> list[str]:
    """Rewrite the wheel at ``path`` without the members ``keep(name)`` refuses (and without their RECORD lines);
    returns the names dropped."""
    trimmed = path.with_suffix(".trimmed")
    dropped = []
    with zipfile.ZipFile(path) as source, zipfile.ZipFile(trimmed, "w", zipfile.ZIP_DEFLATED) as target:
        names = source.namelist()
        dropped = [n for n in names if not keep(n)]
        for name in names:
            if name in dropped:
                continue
            data = source.read(name)
            if name.endswith(".dist-info/RECORD"):
                lines = data.decode().splitlines()
                data = "".join(f"{line}\n" for line in lines if line.split(",", 1)[0] not in dropped).encode()
            target.writestr(source.getinfo(name), data)
    os.replace(trimmed, path)
    return dropped


def keep_bitsandbytes_member(name: str) -> bool:
    base = name.rsplit("/", 1)[-1]
    return not base.startswith("libbitsandbytes_") or base.startswith(BITSANDBYTES_KEEP)


def wheel_requirements(path: Path) -> list[str]:
    """A wheel's Requires-Dist lines."""
    with zipfile.ZipFile(path) as wheel:
        metadata = next(n for n in wheel.namelist() if n.endswith(".dist-info/METADATA"))
        text = wheel.read(metadata).decode()
    return [line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("Requires-Dist:")]


def unmet_on_gpu_machine(requirements: list[str], shipped: set[str]) -> list[str]:
    """The requirements (Requires-Dist lines) that neither the GPU machine's image nor the wheels ``shipped`` meet,
    for the machine's Python on Linux x86-64, extras aside."""
    from packaging.requirements import Requirement

    environment = {"python_version": TARGET_PYTHON, "python_full_version": TARGET_PYTHON + ".3",
                   "sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64",
                   "implementation_name": "cpython", "platform_python_implementation": "CPython",
                   "os_name": "posix", "extra": ""}
    unmet = []
    for line in requirements:
        requirement = Requirement(line)
        if requirement.marker is not None and not requirement.marker.evaluate(environment):
            continue
        name = normalise(requirement.name)
        if name not in GPU_IMAGE_PACKAGES and name not in shipped:
            unmet.append(line)
    return unmet


MODEL_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
               "special_tokens_map.json", "vocab.txt", "chat_template.jinja")
"""What the check needs of a model directory: its config and tokenizer (the weights are made on the machine)."""


def copy_model_files(source: Path, target: Path) -> list[str]:
    target.mkdir(parents=True)
    copied = [name for name in MODEL_FILES if (source / name).is_file()]
    for name in copied:
        shutil.copy(source / name, target / name)
    return copied


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def git_commit() -> str:
    done = subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty", "--abbrev=12"],
                          capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 else "unknown"


def prepare(directory: Path, max_rows: int, wheels: bool, limit_mib: float) -> dict:
    """Write the prepared folder (module docstring) at ``directory``, replacing an earlier one; its manifest."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    sys.path[:0] = [str(ROOT / "src"), str(ROOT)]
    from kftune.components.preprocess.config import PreprocessConfig
    from kftune.components.preprocess.preprocess import preprocess
    from kftune.data.bundled import BUNDLED_DATA, INSTRUCTION_DATA, bundled_causal_lm_dir, bundled_model_dir

    directory = directory.resolve()
    if directory.exists() and not (directory / MANIFEST).is_file():
        raise SystemExit(f"prepare: {directory} exists and is not a prepared folder (no {MANIFEST}); not touching it")
    building = directory.with_name(directory.name + ".partial")
    shutil.rmtree(building, ignore_errors=True)
    building.mkdir(parents=True)
    started = time.perf_counter()

    versions = wheel_versions()
    manifest: dict = {"created": datetime.now(UTC).isoformat(timespec="seconds"),
                      "kftune_commit": git_commit(), "target_python": TARGET_PYTHON,
                      "wheels_planned": {name: {"version": versions[name], "why": why} for name, why in WHEELS.items()},
                      "wheels": {}}
    if wheels:
        download_wheels(versions, building / "wheels")
        shipped = {normalise(name) for name in WHEELS}
        unmet = {}
        for path in sorted((building / "wheels").glob("*.whl")):
            name = normalise(path.name.split("-")[0])
            entry = {"file": path.name}
            if name == "bitsandbytes":
                dropped = trim_wheel(path, keep_bitsandbytes_member)
                entry["trimmed"] = f"{len(dropped)} libraries for other CUDA/ROCm/XPU releases dropped"
            entry["bytes"] = path.stat().st_size
            manifest["wheels"][name] = entry
            unmet.update({f"{name}: {line}": None for line in unmet_on_gpu_machine(wheel_requirements(path),
                                                                                     shipped)})
        missing = shipped - set(manifest["wheels"])
        if missing or unmet:
            raise SystemExit(f"prepare: wheels missing {sorted(missing)}; requirements the GPU machine would not "
                             f"meet: {sorted(unmet)}")
    else:
        manifest["wheels_skipped"] = "prepared with --no-wheels: run --dry-run only (the GPU machine needs them)"

    models = {"encoder": bundled_model_dir(verify=False), "causal-lm": bundled_causal_lm_dir()}
    manifest["models"] = {name: copy_model_files(source, building / "models" / name)
                          for name, source in models.items()}
    manifest["data"] = {}
    for task, data, model in (("classification", BUNDLED_DATA, "encoder"),
                              ("causal-lm", INSTRUCTION_DATA, "causal-lm")):
        out = building / "data" / task
        stats = preprocess(PreprocessConfig(task=task, data=data, model=str(building / "models" / model),
                                            max_rows=max_rows, seed=0), out / "dataset", out / "test_split")
        manifest["data"][task] = {"source": data, "split_sizes": stats["split_sizes"],
                                  "max_seq_length": stats["config"]["max_seq_length"]}
    manifest["prepare_seconds"] = round(time.perf_counter() - started, 1)
    manifest["bytes"] = folder_bytes(building)
    (building / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    shutil.rmtree(directory, ignore_errors=True)
    os.replace(building, directory)
    size_mib = folder_bytes(directory) / 2**20
    print(f"prepared {directory}: {size_mib:.1f} MiB (limit {limit_mib:g} MiB) in {manifest['prepare_seconds']} s")
    if size_mib > limit_mib:
        raise SystemExit(f"prepare: {directory} is {size_mib:.1f} MiB, over the {limit_mib:g} MiB that can travel")
    return manifest


# --- run (on the GPU machine, or here with --dry-run) ---------------------------------------------------------------

STEPS = {
    # name: (seconds allowed on a GPU, steps whose output it needs, what it proves)
    "environment": (60, (), "device, driver, torch/CUDA/NCCL versions and the packages actually imported"),
    "models": (120, (), "the bundled models' architectures built from their configs, random weights"),
    "classification_bf16": (120, ("models",), "a padding-free classification run in bf16 (samples/s)"),
    "classification_fp16": (120, ("models",), "the same in fp16 with loss scaling"),
    "prompt_tuning": (120, ("models",), "prompt tuning on padding-free batches"),
    "lora_merge": (150, ("models",), "encoder LoRA merged into the weights; the merged model's ONNX export "
                                     "against the model on CUDA"),
    "ddp_nccl": (150, ("models",), "DDP over NCCL under torchrun"),
    "causal_lm_lora": (150, ("models",), "causal-LM LoRA with packing and gradient checkpointing in bf16"),
    "export_parity": (180, ("classification_bf16", "causal_lm_lora"),
                      "exports (ONNX; merged Hugging Face model) against the trained models run on CUDA"),
    "fsdp2_nccl": (150, ("models",), "causal-LM LoRA sharded by FSDP2 over NCCL under torchrun"),
    "qlora": (150, ("models",), "QLoRA: LoRA on a 4-bit base (bitsandbytes)"),
    "oom_single": (150, ("models",), "a real CUDA out-of-memory error (memory capped) recovered by halving, one "
                                     "process"),
    "oom_ddp": (150, ("models",), "the same under DDP (torchrun, NCCL)"),
    "throughput": (120, (), "bench/gpu_throughput.py: BERT-base, sequence 128, bf16; MFU against the datasheet "
                            "peak and a matrix product measured in the same run"),
}


def selected_steps(only: list[str]) -> list[str]:
    """The steps to run, in order: ``only`` (all where empty), the steps they need, and always the environment."""
    wanted = set(only or STEPS) | {"environment"}
    while True:
        needed = wanted | {n for name in wanted for n in STEPS[name][1]}
        if needed == wanted:
            return [name for name in STEPS if name in wanted]
        wanted = needed


def write_json(path: Path, document: dict) -> None:
    """Replace ``path`` atomically: a reader (or a crash) sees the old document or the new one, whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    with os.fdopen(handle, "w", encoding="utf-8") as out:
        json.dump(document, out, indent=2)
        out.write("\n")
    os.replace(tmp, path)


def kftune_site(site: Path) -> Path:
    """``site/kftune``: the package as an installation lays it out (``kftune.components`` and
    ``kftune.pipelines`` are the repository's top-level folders, see pyproject.toml), made of links into this
    checkout, so that ``site`` on PYTHONPATH imports kftune without installing it."""
    package = site / "kftune"
    package.mkdir(parents=True, exist_ok=True)
    links = {entry.name: entry.resolve() for entry in (ROOT / "src" / "kftune").iterdir()
             if entry.name != "__pycache__"}
    links |= {"components": ROOT / "components", "pipelines": ROOT / "pipelines"}
    for name, target in links.items():
        link = package / name
        if not link.is_symlink():
            link.symlink_to(target)
    return package


def install_wheels(prepared: Path, site: Path, dry_run: bool) -> dict:
    """Install the prepared wheels into ``site`` (no index, no dependencies: the machine's own packages serve the
    rest). A dry run installs them for the GPU machine's Python into a scratch folder instead: it proves they
    install there, while the steps run on this environment's packages (which are kftune's pins)."""
    wheels = sorted((prepared / "wheels").glob("*.whl"))
    if not wheels:
        return {"status": "skipped", "reason": "the prepared folder holds no wheels (prepare --no-wheels)"}
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-index",
               "--no-deps", "--no-compile", "--no-cache-dir"]
    target = site
    if dry_run:
        target = site.parent / "wheels-for-the-gpu-python"
        command += ["--only-binary=:all:", "--python-version", TARGET_PYTHON, "--implementation", "cp",
                    *(arg for p in PLATFORMS for arg in ("--platform", p))]
    done = subprocess.run([*command, "--target", str(target), *map(str, wheels)], capture_output=True, text=True)
    if done.returncode:
        return {"status": "failed", "error": (done.stdout + done.stderr)[-3000:]}
    return {"status": "ok", "figures": {"wheels": [w.name for w in wheels], "target": str(target),
                                        "on_pythonpath": not dry_run}}


IMPORT_AUDIT = '''"""Written by bench/gpu_check.py for a dry run: each process lists the files of its modules."""
import atexit
import os
import sys


def _write_modules():
    files = {getattr(module, "__file__", None) for module in list(sys.modules.values())}
    path = os.path.join(os.environ["KFTUNE_GPU_CHECK_IMPORTS"], "%d.txt" % os.getpid())
    with open(path, "w") as out:
        out.write("\\n".join(sorted(os.path.realpath(f) for f in files if isinstance(f, str))))


atexit.register(_write_modules)
'''


def installed_files() -> dict[str, str]:
    """The Python files of the distributions installed here (as their RECORD names them: relative to the
    site-packages folder), and the distribution each belongs to."""
    from importlib.metadata import distributions

    owners = {}
    for dist in distributions():
        name = normalise(dist.metadata["Name"])
        for line in (dist.read_text("RECORD") or "").splitlines():
            path = line.split(",", 1)[0]
            if path.endswith((".py", ".so")):
                owners[path] = name
    return owners


def audit_imports(modules_dir: Path, manifest: dict) -> dict:
    """The distributions whose modules the dry run's processes imported, and those of them the GPU machine would
    miss (neither in its image nor among the prepared wheels, nor imported only because they are installed here:
    :data:`OPTIONAL_IMPORTS`)."""
    reports = list(modules_dir.glob("*.txt"))
    files = {line for report in reports for line in report.read_text().split("\n") if line}
    owners = installed_files()
    roots = [os.path.realpath(p) + os.sep for p in site.getsitepackages()]
    relative = {f[len(root):] for f in files for root in roots if f.startswith(root)}
    imported = sorted({owners[f] for f in relative if f in owners})
    shipped = {normalise(n) for n in manifest.get("wheels_planned", WHEELS)}
    optional = {normalise(n) for n in OPTIONAL_IMPORTS}
    missing = [d for d in imported if d not in GPU_IMAGE_PACKAGES | shipped | optional | {"kftune"}]
    figures = {"processes": len(reports), "distributions": imported, "missing_on_gpu_machine": missing}
    if not reports:
        return {"status": "failed", "error": "no process wrote its imports", "figures": figures}
    if missing:
        return {"status": "failed", "figures": figures,
                "error": f"imported by the steps but neither on the GPU machine nor prepared: {', '.join(missing)}: "
                         "add them to WHEELS in bench/gpu_check.py (or, if imported only where installed, to "
                         "OPTIONAL_IMPORTS)"}
    return {"status": "ok", "figures": figures}


def tail(path: Path, chars: int = 4000) -> str:
    """The end of a log, progress bars' carriage returns folded away."""
    text = path.read_text(encoding="utf-8", errors="replace") if path.is_file() else ""
    lines = [line.rsplit("\r", 1)[-1] for line in text.splitlines()]
    return "\n".join(lines)[-chars:]


def process_tree(root: int) -> list[int]:
    """``root`` and every process descended from it (torchrun starts its workers in sessions of their own, so a
    process group does not hold them)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path("/proc", entry, "stat").read_text()
            except OSError:
                continue
            children.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(int(entry))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo += children.get(pid, [])
    return tree


def stop(process: subprocess.Popen, grace: float = 20.0) -> None:
    """End a step's processes: SIGTERM to each (torchrun then stops its workers, the loop checkpoints), SIGKILL to
    those left after ``grace`` seconds, so that nothing of a timed-out step keeps the GPU."""
    tree = process_tree(process.pid)
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        for pid in tree:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and (process.poll() is None or any(alive(p) for p in tree[1:])):
            time.sleep(0.2)
    process.wait()


def alive(pid: int) -> bool:
    try:
        state = Path("/proc", str(pid), "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def run_step(command: list[str], env: dict, timeout: float, log: Path) -> tuple[int | None, float, float]:
    """Run one step, its processes ended if it outlasts ``timeout`` (or if this check is stopped); (exit code or
    None on timeout, seconds, CPU seconds of its processes)."""
    started, cpu = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
    with open(log, "w", encoding="utf-8") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
        try:
            code = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            stop(process)
            code = None
        except BaseException:  # this check stopped (SIGTERM, Ctrl-C): its step with it
            stop(process, grace=5.0)
            raise
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    return code, time.perf_counter() - started, used.ru_utime + used.ru_stime - cpu.ru_utime - cpu.ru_stime


def step_environment(work: Path, site: Path, dry_run: bool) -> dict:
    """What every step runs with: the private site first on PYTHONPATH, offline, caches inside the work folder."""
    env = dict(os.environ)
    paths = [str(site)]
    if dry_run:
        paths.insert(0, str(work / "import-audit"))
        env["KFTUNE_GPU_CHECK_IMPORTS"] = str(work / "import-audit" / "modules")
    env["PYTHONPATH"] = os.pathsep.join(paths + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env |= {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
            "TQDM_DISABLE": "1", "KFTUNE_CACHE": str(work / "cache"), "HF_HOME": str(work / "hf-home"),
            "MPLCONFIGDIR": str(work / "matplotlib")}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    return env


def run_check(prepared: Path, out: Path, dry_run: bool, work: Path | None, budget_s: float | None, only: list[str],
              oom_cap_gib: float) -> bool:
    """Run the steps (module docstring); True if none failed."""
    started = time.perf_counter()
    prepared = prepared.resolve()
    manifest = json.loads((prepared / MANIFEST).read_text(encoding="utf-8"))
    work = (work or Path(tempfile.mkdtemp(prefix="kftune-gpu-check-"))).resolve()
    site, logs, results_dir = work / "site", work / "logs", work / "results"
    for folder in (site, logs, results_dir):
        folder.mkdir(parents=True, exist_ok=True)
    log_file = out.with_suffix(".log")
    log_file.parent.mkdir(parents=True, exist_ok=True)
    log_file.write_text("", encoding="utf-8")
    document = {
        "check": "bench/gpu_check.py", "mode": "dry-run (CPU, tiny sizes)" if dry_run else "gpu",
        "started": datetime.now(UTC).isoformat(timespec="seconds"), "python": sys.version.split()[0],
        "prepared": {"folder": str(prepared), "kftune_commit": manifest.get("kftune_commit"),
                     "created": manifest.get("created"), "bytes": manifest.get("bytes")},
        "work": str(work), "log": str(log_file), "budget_seconds": budget_s,
        "steps_requested": only or "all", "steps": {}, "passed": None,
    }

    def record(name: str, result: dict) -> None:
        document["steps"][name] = result
        document["seconds"] = round(time.perf_counter() - started, 1)
        write_json(out, document)

    install_started = time.perf_counter()
    install = install_wheels(prepared, site, dry_run)
    kftune_site(site)
    record("install", install | {"seconds": round(time.perf_counter() - install_started, 1)})
    env = step_environment(work, site, dry_run)
    if dry_run:
        (work / "import-audit" / "modules").mkdir(parents=True, exist_ok=True)
        (work / "import-audit" / "sitecustomize.py").write_text(IMPORT_AUDIT, encoding="utf-8")

    selected = selected_steps(only)
    for name in selected:
        allowed, needs, proves = STEPS[name]
        remaining = budget_s - (time.perf_counter() - started) if budget_s else float("inf")
        result: dict = {"proves": proves}
        unfinished = [n for n in needs if document["steps"].get(n, {}).get("status") != "ok"]
        if unfinished:
            record(name, result | {"status": "skipped", "seconds": 0.0,
                                   "reason": f"needs the output of {', '.join(unfinished)}, which did not finish"})
            continue
        if remaining < 5:
            record(name, result | {"status": "failed", "seconds": 0.0,
                                   "error": f"not run: the check's time budget ({budget_s:g} s) was spent"})
            continue
        result_file = results_dir / f"{name}.json"
        result_file.unlink(missing_ok=True)
        command = [sys.executable, str(STEPS_SCRIPT), name, "--prepared", str(prepared), "--work", str(work),
                   "--result", str(result_file), "--oom-cap-gib", str(oom_cap_gib)] + ["--dry-run"] * dry_run
        log = logs / f"{name}.log"
        timeout = min(allowed * (2 if dry_run else 1), remaining)  # a shared 2-core machine is slow
        print(f"gpu check: {name} (up to {timeout:.0f} s) ...", flush=True)
        code, seconds, cpu_seconds = run_step(command, env, timeout, log)
        result |= {"seconds": round(seconds, 1), "cpu_seconds": round(cpu_seconds, 1)}
        outcome = json.loads(result_file.read_text(encoding="utf-8")) if result_file.is_file() else {}
        if code is None:
            result |= {"status": "failed", "error": f"timed out after {timeout:.0f} s\n" + tail(log)}
        elif code != 0 or not outcome:
            result |= {"status": "failed", "exit_code": code, "error": tail(log)}
        else:
            result |= outcome
        result.setdefault("figures", outcome.get("figures", {}))
        with open(log_file, "a", encoding="utf-8") as combined:
            combined.write(f"\n===== {name}: {result['status']} in {result['seconds']} s =====\n")
            combined.write(tail(log, 200_000) + "\n")
        print(f"gpu check: {name} {result['status']} in {result['seconds']} s"
              + (f" ({result.get('reason')})" if result["status"] == "skipped" else ""), flush=True)
        if name == "environment" and result["status"] == "ok":
            document["environment"] = result["figures"]
        record(name, result)

    if dry_run:
        record("imports", audit_imports(work / "import-audit" / "modules", manifest)
               | {"proves": "nothing the steps imported is missing on the GPU machine (a dry run's check)"})
    failed = [name for name, step in document["steps"].items() if step["status"] == "failed"]
    document["failed"] = failed
    document["passed"] = not failed
    document["seconds"] = round(time.perf_counter() - started, 1)
    write_json(out, document)
    for name, step in document["steps"].items():  # the short version, for whoever reads only the output's end
        lines = (step.get("error") or "").strip().splitlines() or [""]
        detail = step.get("reason") or (lines[0] if lines[0].startswith(("timed out", "not run")) else lines[-1])
        print(f"  {name:<20} {step['status']:<8} {step.get('seconds', '')!s:>6} s  {detail[:150]}")
    print(f"gpu check: {'passed' if not failed else 'FAILED: ' + ', '.join(failed)} in {document['seconds']} s; "
          f"results in {out}, output of every step in {log_file}")
    return not failed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    prep = commands.add_parser("prepare", help="write the folder that travels to the GPU machine (here)")
    prep.add_argument("directory", nargs="?", default=DEFAULT_DIR, type=Path)
    prep.add_argument("--max-rows", type=int, default=2000, help="rows of each bundled data set to preprocess")
    prep.add_argument("--no-wheels", action="store_true", help="no wheels (no network; enough for --dry-run)")
    prep.add_argument("--limit-mib", type=float, default=LIMIT_MIB)
    run = commands.add_parser("run", help="run the check (on the GPU machine, or here with --dry-run)")
    run.add_argument("--prepared", type=Path, default=Path(DEFAULT_DIR))
    run.add_argument("--out", type=Path, required=True, help="the JSON of results (the log goes beside it)")
    run.add_argument("--dry-run", action="store_true", help="on CPU, tiny sizes: tests the check itself")
    run.add_argument("--work", type=Path, help="scratch folder (default: a new one under the temp dir)")
    run.add_argument("--budget-s", type=float, help=f"steps not started by then fail (default: {BUDGET_S:g} on a "
                                                     "GPU, none on a dry run)")
    run.add_argument("--steps", default="", help="comma-separated steps to run (and those they need); "
                                                 f"default all: {', '.join(STEPS)}")
    run.add_argument("--oom-cap-gib", type=float, default=4.0,
                     help="GPU memory (GiB) the out-of-memory steps' training processes may allocate")
    args = parser.parse_args(argv)
    if args.command == "prepare":
        prepare(args.directory, args.max_rows, not args.no_wheels, args.limit_mib)
        return 0
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))  # ends the running step too
    only = [s.strip() for s in args.steps.split(",") if s.strip()]
    unknown = set(only) - set(STEPS)
    if unknown:
        parser.error(f"unknown steps {sorted(unknown)}; the steps are {', '.join(STEPS)}")
    budget = args.budget_s or (None if args.dry_run else BUDGET_S)
    passed = run_check(args.prepared, args.out.resolve(), args.dry_run, args.work, budget, only,
                       args.oom_cap_gib)
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
