"""The steps of bench/gpu_check.py, one per process: ``python bench/gpu_check_steps.py STEP --prepared P --work W
--result R [--dry-run]`` writes ``{"status": "ok"|"skipped", "figures": ..., "reason": ...}`` to R, or fails with a
traceback (and a non-zero exit). Each step goes through kftune's own entry points, so that what it proves is what a
user runs: the training loop's ``main`` (one process: run in the step's own process, as the launcher's command for
one process runs it), torchrun's command (:func:`kftune.training.launch.torchrun_command`), preprocess's output
(made by ``gpu_check.py prepare``), export (:func:`kftune.components.export.export.export_model`) and
``bench/gpu_throughput.py``.

On a GPU the models are the bundled ones' architectures (all-MiniLM-L6-v2: BERT, 6 layers, 384 wide;
SmolLM2-135M: Llama, 30 layers, 576 wide) with random weights; a dry run shrinks them to 2 layers, 32 wide, and
runs a few steps on CPU.

``python bench/gpu_check_steps.py train-capped [--cap-gib G] [--simulate-oom-over N] -- LOOP_ARGS`` runs the
training loop's ``main(LOOP_ARGS)`` in a process whose CUDA allocator may hold at most G GiB (torchrun starts it
as it would start the loop), so that a batch too large for that meets a real out-of-memory error; on CPU
``--simulate-oom-over N`` makes the last rank raise torch's out-of-memory error for micro-batches of more than N
examples instead.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import math
import os
import platform
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
THIS = Path(__file__).resolve()


@dataclass(frozen=True)
class Sizes:
    """How big each step's run is: a GPU's, or a dry run's on CPU."""

    encoder: dict
    """Overrides of the bundled encoder's config (none: its own architecture)."""
    causal_lm: dict
    classification_batch: int
    classification_steps: int
    causal_lm_batch: int
    causal_lm_steps: int
    oom_batch: int
    """Examples per micro-batch of the out-of-memory steps: far more than fit in --oom-cap-gib on a GPU."""
    oom_simulate_over: int
    """Dry run: the stand-in out-of-memory error fires on micro-batches of more than this many examples."""
    throughput: tuple[str, ...]


GPU = Sizes(encoder={}, causal_lm={}, classification_batch=32, classification_steps=30, causal_lm_batch=16,
            causal_lm_steps=20, oom_batch=512, oom_simulate_over=0,
            throughput=("--precision", "bf16", "--layers", "12", "--hidden", "768", "--seq-len", "128",
                        "--batch-size", "64", "--steps", "50", "--warmup", "10"))
DRY_RUN = Sizes(
    encoder={"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64},
    causal_lm={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
               "num_key_value_heads": 1, "head_dim": 16},
    classification_batch=16, classification_steps=4, causal_lm_batch=8, causal_lm_steps=4, oom_batch=8,
    oom_simulate_over=2,
    throughput=("--device", "cpu", "--precision", "no", "--layers", "2", "--hidden", "64", "--seq-len", "32",
                "--batch-size", "4", "--steps", "2", "--warmup", "1", "--matmul-size", "128"))

ONE_GPU_NOTE = ("one GPU: NCCL refuses two ranks on one device (a duplicate GPU) and the loop puts rank r on "
                "cuda:r, so torchrun runs a world of one: a real NCCL process group, DDP/FSDP wrapping and every "
                "collective the loop makes, with no second rank to disagree with")


class Skip(Exception):
    """The step cannot run here, for the reason given (recorded, not a failure)."""


class Check:
    """One step's context: the prepared folder, the scratch folder and the sizes."""

    def __init__(self, prepared: Path, work: Path, dry_run: bool, oom_cap_gib: float):
        self.prepared, self.work, self.dry_run, self.oom_cap_gib = prepared, work, dry_run, oom_cap_gib
        self.sizes = DRY_RUN if dry_run else GPU
        self.cuda = not dry_run and torch_cuda()  # a dry run's skipped steps need not import torch
        if not dry_run and not self.cuda:
            raise RuntimeError("no CUDA device visible: run the GPU check on a GPU, or pass --dry-run")

    @property
    def device(self):
        import torch

        return torch.device("cuda" if self.cuda else "cpu")

    def model(self, name: str) -> Path:
        return self.work / "models" / name

    def dataset(self, task: str) -> Path:
        return self.prepared / "data" / task / "dataset"

    def test_split(self, task: str) -> Path:
        return self.prepared / "data" / task / "test_split"

    def run_dir(self, step: str) -> Path:
        """A fresh folder for a step's outputs (a rerun with the same --work starts clean)."""
        path = self.work / "runs" / step
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
        return path

    def world(self) -> int:
        """Ranks of the torchrun steps: 2 gloo processes on CPU; one per GPU (at most 2) on a GPU machine."""
        import torch

        return 2 if not self.cuda else min(2, torch.cuda.device_count())

    def classification(self, **settings):
        """A short classification run of the bundled encoder's architecture: bf16, padding-free, full fine-tuning
        (``settings`` override)."""
        from kftune.training.config import TrainConfig

        steps = self.sizes.classification_steps
        return TrainConfig(**{
            "task": "classification", "model": str(self.model("encoder")), "num_train_epochs": 1,
            "per_device_train_batch_size": self.sizes.classification_batch, "per_device_eval_batch_size": 64,
            "max_steps": steps, "logging_steps": max(1, steps // 3), "learning_rate": 1e-4, "save_steps": 0,
            "early_stopping_patience": 0, "mixed_precision": "bf16", "packing": True} | settings)

    def causal_lm(self, **settings):
        """A short causal-LM run of the bundled causal LM's architecture: LoRA, bf16, packed (``settings``
        override)."""
        from kftune.training.config import TrainConfig

        steps = self.sizes.causal_lm_steps
        return TrainConfig(**{
            "task": "causal-lm", "model": str(self.model("causal-lm")), "num_train_epochs": 1,
            "per_device_train_batch_size": self.sizes.causal_lm_batch, "per_device_eval_batch_size": 16,
            "max_steps": steps, "logging_steps": max(1, steps // 4), "learning_rate": 1e-3, "save_steps": 0,
            "early_stopping_patience": 0, "mixed_precision": "bf16", "packing": True, "training_mode": "lora"}
            | settings)


# --- running the training loop -------------------------------------------------------------------------------------

class LoopLog(logging.Handler):
    """The messages kftune logs (the training loop's among them) while it is attached, kept to be checked; they
    still reach the step's log as they come."""

    def __init__(self):
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())

    def __enter__(self) -> LoopLog:
        logging.getLogger("kftune").addHandler(self)
        return self

    def __exit__(self, *exc) -> None:
        logging.getLogger("kftune").removeHandler(self)


def run_loop(config, dataset: Path, output: Path) -> tuple[dict, str]:
    """One training process: the loop's ``main`` in this process, with the arguments the launcher gives it for one
    process (:func:`kftune.training.launch.training_command`); (history, what it logged)."""
    from kftune.training import loop

    config = replace(config, checkpoint_dir=str(loop.default_checkpoint_dir(output)))
    config_file = output.with_name(output.name + ".config.json")
    config.to_json(config_file)
    with LoopLog() as logged:
        loop.main(["--config", str(config_file), "--dataset", str(dataset), "--output", str(output)])
    return json.loads((output / loop.HISTORY_FILE).read_text(encoding="utf-8")), "\n".join(logged.lines)


def run_command(command: list[str], env: dict | None = None) -> str:
    """Run ``command``, its output passed on to the step's log line by line (a step that times out leaves what it
    printed), and fail with its tail if it fails; its output."""
    lines = []
    with subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          errors="replace") as process:
        for line in process.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            lines.append(line)
    output = "".join(lines)
    if process.returncode:
        raise RuntimeError(f"exit code {process.returncode}: {' '.join(command[:8])} ...\n{output[-3000:]}")
    return output


def torchrun(config, dataset: Path, output: Path, world: int, capped: list[str] | None = None) -> tuple[dict, str]:
    """``world`` ranks under torchrun, started with kftune's own torchrun command (:func:`torchrun_command`);
    with ``capped`` (train-capped's options) each rank runs the loop through :func:`train_capped`."""
    from kftune.training.launch import torchrun_command
    from kftune.training.loop import HISTORY_FILE, default_checkpoint_dir

    config = replace(config, checkpoint_dir=str(default_checkpoint_dir(output)))
    config_file = output.with_name(output.name + ".config.json")
    config.to_json(config_file)
    command = torchrun_command(world, config_file, dataset, output)
    if capped is not None:
        at = command.index("kftune.training.loop") - 1  # "-m kftune.training.loop" -> this script's wrapper
        command[at : at + 2] = [str(THIS), "train-capped", *capped, "--"]
    env = dict(os.environ, NCCL_DEBUG="VERSION")  # NCCL prints its version as a communicator starts
    if not torch_cuda():
        env.setdefault("OMP_NUM_THREADS", "1")
    text = run_command(command, env)
    return json.loads((output / HISTORY_FILE).read_text(encoding="utf-8")), text


def torch_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def expect(condition: bool, message: str) -> None:
    if not condition:
        raise AssertionError(message)


def training_figures(history: dict, expected_precision: str) -> dict:
    """The run's figures from its history, after checking that it trained in ``expected_precision`` to finite
    losses."""
    steps, epochs = history.get("steps", []), history.get("epochs", [])
    expect(bool(steps) and bool(epochs), f"the history records no steps or no epoch: {sorted(history)}")
    losses = [s["loss"] for s in steps]
    expect(all(math.isfinite(x) for x in losses), f"non-finite training losses {losses}")
    expect(history.get("precision") == expected_precision,
           f"trained in {history.get('precision')}, expected {expected_precision}")
    last = epochs[-1]
    return {
        "precision": history["precision"], "training_mode": history.get("training_mode"),
        "optimizer_steps": steps[-1]["step"], "loss_first_logged": losses[0], "loss_last_logged": losses[-1],
        "samples_per_second": last.get("train_samples_per_second"),
        "tokens_per_second": last.get("train_tokens_per_second"),
        "samples_per_second_last_window": steps[-1].get("samples_per_second"),
        "train_seconds": history.get("train_seconds"),
        "validation": {k: v for k, v in last.items() if k.startswith("val_")},
    }


def nccl_version(output: str) -> str | None:
    found = re.search(r"NCCL version ([0-9][^\s]*)", output)
    return found.group(1) if found else None


def distributed_figures(check: Check, world: int, output: str) -> dict:
    figures = {"world": world, "backend": "nccl" if check.cuda else "gloo", "nccl_version": nccl_version(output)}
    if check.cuda:
        expect(figures["nccl_version"] is not None, "no 'NCCL version' line: did the ranks use NCCL?")
    if check.cuda and world == 1:
        figures["note"] = ONE_GPU_NOTE
    return figures


# --- export parity on the device -----------------------------------------------------------------------------------

def encoder_parity_on_device(check: Check, model_dir: Path, onnx_file: Path, task_name: str) -> dict:
    """The trained encoder run on the check's device (fp32, padding-free as kftune runs it) against its ONNX export
    (ONNX Runtime on CPU) on the test split: the largest logit difference and the predictions that differ."""
    import numpy as np
    import onnxruntime as ort
    import torch
    from transformers import AutoTokenizer

    from kftune.components.export.config import ExportConfig
    from kftune.data.schema import load_test_split
    from kftune.inference.runners import onnx_runner, predict_logits
    from kftune.models.encoder import load_encoder_model
    from kftune.tasks import task_named
    from kftune.training.unpadded import enable_padding_free

    model = load_encoder_model(model_dir, task_named(task_name)).to(check.device)
    enable_padding_free(model)

    def on_device(arrays: dict) -> np.ndarray:
        with torch.inference_mode():
            tensors = {k: torch.from_numpy(v).to(check.device) for k, v in arrays.items()}
            return model(**tensors).logits.float().cpu().numpy()

    test = load_test_split(check.test_split(task_name))
    pad_id = AutoTokenizer.from_pretrained(str(model_dir)).pad_token_id or 0
    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    device_logits = predict_logits(on_device, test, 64, pad_id)
    onnx_logits = predict_logits(onnx_runner(session), test, 64, pad_id)
    diff = float(np.abs(device_logits - onnx_logits).max())
    mismatches = int((device_logits.argmax(-1) != onnx_logits.argmax(-1)).sum())
    atol = ExportConfig().atol
    expect(diff <= atol and mismatches == 0, f"the model on {check.device.type} and its ONNX export differ: max "
                                             f"|logit diff| {diff:.3e} (allowed {atol:.0e}), {mismatches} predictions")
    return {"device": check.device.type, "examples": len(test), "max_abs_logit_diff": diff,
            "prediction_mismatches": mismatches}


def causal_lm_parity_on_device(check: Check, model_dir: Path, export_dir: Path) -> dict:
    """The exported (merged) causal LM against the base model with the trained LoRA adapter, unmerged, both on the
    check's device in fp32: the largest logit difference on the first test prompts."""
    import torch
    from peft import PeftModel

    from kftune.components.export.config import ExportConfig
    from kftune.components.export.export import PARITY_PROMPTS
    from kftune.data.schema import load_test_split
    from kftune.models.causal_lm import ADAPTER_DIR, load_causal_lm
    from kftune.training.causal_lm_recipe import CausalCollator

    history = json.loads((model_dir / "training_history.json").read_text(encoding="utf-8"))
    base, tokenizer = load_causal_lm(history["config"]["model"])
    reference = PeftModel.from_pretrained(base, str(model_dir / ADAPTER_DIR)).to(check.device).eval()
    test = load_test_split(check.test_split("causal-lm"))
    test = test.select(range(min(PARITY_PROMPTS, len(test))))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    batch = CausalCollator(test, pad_id)(range(len(test)))
    inputs = {k: batch[k].to(check.device) for k in ("input_ids", "attention_mask")}
    with torch.no_grad():
        expected = reference(**inputs).logits.float()
    del reference, base
    merged, _ = load_causal_lm(export_dir)
    with torch.no_grad():
        diff = float((merged.to(check.device)(**inputs).logits.float() - expected).abs().max())
    atol = ExportConfig().atol
    expect(diff <= atol, f"the exported causal LM differs from base + adapter on {check.device.type} by {diff:.3e}")
    return {"device": check.device.type, "prompts": len(test), "max_abs_logit_diff": diff}


# --- the steps -----------------------------------------------------------------------------------------------------

def step_environment(check: Check) -> dict:
    """What the check runs on, and where each package it uses was imported from."""
    import torch

    site = check.work / "site"
    figures: dict = {"python": sys.version.split()[0], "python_executable": sys.executable,
                     "torch": torch.__version__, "torch_cuda": torch.version.cuda,
                     "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None}
    if check.cuda:
        props = torch.cuda.get_device_properties(0)
        figures |= {"device": torch.cuda.get_device_name(0), "device_count": torch.cuda.device_count(),
                    "compute_capability": f"{props.major}.{props.minor}",
                    "memory_gib": round(props.total_memory / 2**30, 1),
                    "multiprocessors": props.multi_processor_count, "driver": driver_version(),
                    "nccl": ".".join(map(str, torch.cuda.nccl.version())),
                    "bf16_without_emulation": bf16_without_emulation()}
    else:
        figures |= {"device": f"cpu ({platform.processor() or platform.machine()})", "device_count": 0}
    figures["packages"] = packages = {}
    required = ("transformers", "peft", "huggingface_hub", "tokenizers", "datasets", "accelerate", "safetensors",
                "numpy", "pandas", "pyarrow", "fsspec", "onnx", "onnxruntime", "sklearn", "kftune")
    for name in (*required, "bitsandbytes"):
        try:
            module = importlib.import_module(name)
        except Exception as error:  # noqa: BLE001 -- recorded; a required one fails the step below
            packages[name] = {"missing": f"{type(error).__name__}: {error}"[:300]}
            continue
        location = Path(module.__file__).resolve() if module.__file__ else None
        origin = ("prepared folder" if location and site.resolve() in location.parents
                  else "this checkout" if location and ROOT in location.parents else "the machine")
        packages[name] = {"version": getattr(module, "__version__", "?"), "from": origin}
    figures["unmet_requirements"] = unmet_requirements(site)
    missing = [name for name in required if "missing" in packages[name]]
    expect(not missing, f"cannot import {missing}: {[packages[n]['missing'] for n in missing]}")
    expect(packages["kftune"]["from"] == "this checkout", f"kftune imported from {packages['kftune']}")
    return figures


def bf16_without_emulation() -> bool | None:
    import torch

    try:
        return torch.cuda.is_bf16_supported(including_emulation=False)
    except TypeError:  # a torch without the argument
        return None


def driver_version() -> str | None:
    """The NVIDIA driver's version: from nvidia-smi, else NVML."""
    smi = shutil.which("nvidia-smi")
    if smi:
        done = subprocess.run([smi, "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True,
                              text=True, timeout=30)
        if done.returncode == 0 and done.stdout.strip():
            return done.stdout.split()[0]
    try:
        import pynvml

        pynvml.nvmlInit()
        version = pynvml.nvmlSystemGetDriverVersion()
        return version.decode() if isinstance(version, bytes) else version
    except Exception:  # noqa: BLE001 -- the figure is then unknown
        return None


def unmet_requirements(site: Path) -> list[str]:
    """Requirements of the packages installed in ``site`` that the environment does not meet (version or
    presence): reported, since a package often works with a version its metadata does not name."""
    from importlib.metadata import PackageNotFoundError, distributions, version

    from packaging.requirements import Requirement

    unmet = []
    for dist in distributions(path=[str(site)]):
        for line in dist.requires or ():
            requirement = Requirement(line)
            if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
                continue
            try:
                found = version(requirement.name)
            except PackageNotFoundError:
                unmet.append(f"{dist.metadata['Name']} needs {line}: not installed")
                continue
            if not requirement.specifier.contains(found, prereleases=True):
                unmet.append(f"{dist.metadata['Name']} needs {line}: {found} installed")
    return sorted(set(unmet))


def step_models(check: Check) -> dict:
    """The bundled encoder and causal LM as models to train: their configs (shrunk on a dry run) with random
    weights, and their tokenizers."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

    figures = {}
    for name, auto, overrides in (("encoder", AutoModelForSequenceClassification, check.sizes.encoder),
                                  ("causal-lm", AutoModelForCausalLM, check.sizes.causal_lm)):
        source, target = check.prepared / "models" / name, check.model(name)
        shutil.rmtree(target, ignore_errors=True)
        config = AutoConfig.from_pretrained(str(source))
        config.update(overrides)
        torch.manual_seed(0)
        model = auto.from_config(config)
        model.save_pretrained(str(target))
        for file in source.iterdir():
            if file.name != "config.json":
                shutil.copy(file, target / file.name)
        figures[name] = {"architecture": type(model).__name__, "layers": config.num_hidden_layers,
                         "hidden": config.hidden_size, "parameters": sum(p.numel() for p in model.parameters())}
    return figures


def step_classification_bf16(check: Check) -> dict:
    out = check.run_dir("classification_bf16") / "model"
    history, output = run_loop(check.classification(), check.dataset("classification"), out)
    figures = training_figures(history, "bf16")
    figures["padding_free"] = "runs on the real tokens only" in output
    expect(figures["padding_free"], "the loop did not log padding-free batches for the encoder")
    return figures


def step_classification_fp16(check: Check) -> dict:
    if not check.cuda:
        raise Skip("fp16 with loss scaling needs CUDA (kftune refuses mixed_precision=fp16 on a CPU)")
    out = check.run_dir("classification_fp16") / "model"
    history, _ = run_loop(check.classification(mixed_precision="fp16"), check.dataset("classification"), out)
    return training_figures(history, "fp16") | {"loss_scaling": "torch.amp.GradScaler (kftune's loss_scaler)"}


def step_prompt_tuning(check: Check) -> dict:
    out = check.run_dir("prompt_tuning") / "model"
    config = check.classification(training_mode="prompt_tuning", num_virtual_tokens=8, learning_rate=1e-2)
    history, output = run_loop(config, check.dataset("classification"), out)
    figures = training_figures(history, "bf16")
    figures["padding_free"] = "runs on the real tokens only" in output
    expect(figures["padding_free"], "the loop did not log padding-free batches for the prompt-tuned encoder")
    return figures


def step_lora_merge(check: Check) -> dict:
    from safetensors.torch import load_file

    from kftune.components.export.config import ExportConfig
    from kftune.components.export.export import ONNX_FILE, export_model

    run = check.run_dir("lora_merge")
    config = check.classification(training_mode="lora", lora_r=4, lora_alpha=8, learning_rate=5e-3)
    history, _ = run_loop(config, check.dataset("classification"), run / "model")
    figures = training_figures(history, "bf16")
    before = load_file(check.model("encoder") / "model.safetensors")
    after = load_file(run / "model" / "model.safetensors")
    expect(before.keys() == after.keys(), "the LoRA run's model is not a plain (merged) model")
    query = next(k for k in after if k.endswith("layer.0.attention.self.query.weight"))
    key = query.replace(".query.", ".key.")
    figures["merged"] = {"query_changed": not bool((before[query] == after[query]).all()),
                         "key_unchanged": bool((before[key] == after[key]).all())}
    expect(all(figures["merged"].values()), f"LoRA (query, value) not merged as expected: {figures['merged']}")
    report = export_model(run / "model", check.dataset("classification"), check.test_split("classification"),
                          run / "onnx", ExportConfig(task="classification", quantize_int8=False))
    figures["export_parity_cpu"] = report["parity"]
    figures["export_parity_on_device"] = encoder_parity_on_device(check, run / "model", run / "onnx" / ONNX_FILE,
                                                                  "classification")
    return figures


def step_ddp_nccl(check: Check) -> dict:
    world = check.world()
    out = check.run_dir("ddp_nccl") / "model"
    history, output = torchrun(check.classification(), check.dataset("classification"), out, world)
    return training_figures(history, "bf16") | distributed_figures(check, world, output)


def step_causal_lm_lora(check: Check) -> dict:
    out = check.run_dir("causal_lm_lora") / "model"
    config = check.causal_lm(gradient_checkpointing=True)
    history, _ = run_loop(config, check.dataset("causal-lm"), out)
    figures = training_figures(history, "bf16")
    figures["settings"] = {k: history["config"][k] for k in ("training_mode", "packing", "gradient_checkpointing")}
    return figures


def step_export_parity(check: Check) -> dict:
    from kftune.components.export.config import ExportConfig
    from kftune.components.export.export import ONNX_FILE, export_model

    run = check.run_dir("export_parity")
    classifier = check.work / "runs" / "classification_bf16" / "model"
    report = export_model(classifier, check.dataset("classification"), check.test_split("classification"),
                          run / "onnx", ExportConfig(task="classification", quantize_int8=False))
    figures = {"classification_onnx": {
        "cpu": report["parity"],
        "on_device": encoder_parity_on_device(check, classifier, run / "onnx" / ONNX_FILE, "classification")}}
    causal = check.work / "runs" / "causal_lm_lora" / "model"
    report = export_model(causal, check.dataset("causal-lm"), check.test_split("causal-lm"), run / "causal-lm",
                          ExportConfig(task="causal-lm"))
    figures["causal_lm_merged"] = {"cpu": report["parity"],
                                   "on_device": causal_lm_parity_on_device(check, causal, run / "causal-lm")}
    return figures


def step_fsdp2_nccl(check: Check) -> dict:
    world = check.world()
    out = check.run_dir("fsdp2_nccl") / "model"
    history, output = torchrun(check.causal_lm(sharding="fsdp"), check.dataset("causal-lm"), out, world)
    return training_figures(history, "bf16") | distributed_figures(check, world, output)


def step_qlora(check: Check) -> dict:
    import importlib.util

    if not check.cuda:
        raise Skip("QLoRA quantizes the base model with bitsandbytes on a CUDA GPU (kftune refuses it on a CPU)")
    spec = importlib.util.find_spec("bitsandbytes")
    if spec is None:
        raise Skip("bitsandbytes is neither on this machine nor in the prepared folder")
    import bitsandbytes

    out = check.run_dir("qlora") / "model"
    history, _ = run_loop(check.causal_lm(training_mode="qlora", gradient_checkpointing=True),
                        check.dataset("causal-lm"), out)
    site = (check.work / "site").resolve()
    origin = "prepared folder" if site in Path(bitsandbytes.__file__).resolve().parents else "the machine"
    return training_figures(history, "bf16") | {"bitsandbytes": {"version": bitsandbytes.__version__, "from": origin}}


def oom_config(check: Check):
    """A causal-LM LoRA run whose micro-batch cannot fit the capped memory: the loop must halve it until it
    does. Validation batches stay small (an out-of-memory error there is not recovered)."""
    return check.causal_lm(per_device_train_batch_size=check.sizes.oom_batch, per_device_eval_batch_size=8,
                           max_steps=2, logging_steps=1)


def capped_options(check: Check) -> list[str]:
    if check.cuda:
        return ["--cap-gib", str(check.oom_cap_gib)]
    return ["--simulate-oom-over", str(check.sizes.oom_simulate_over)]


def oom_figures(check: Check, history: dict, output: str) -> dict:
    changes = history.get("micro_batch_changes", [])
    recovered = [c for c in changes if c["reason"] == "out of memory"]
    expect(bool(recovered), f"no out-of-memory halving recorded: {changes}")
    logged = "out of memory in optimizer step" in output
    expect(logged, "the loop's 'out of memory in optimizer step' line is not in its output")
    figures = {"micro_batch": check.sizes.oom_batch, "changes": changes, "halvings": len(recovered),
               "final_micro_batch": changes[-1]["micro_batch"], "logged": logged,
               "loss_last_logged": history["steps"][-1]["loss"] if history.get("steps") else None}
    if check.cuda:
        figures["memory_cap_gib"] = check.oom_cap_gib
    else:
        figures["simulated"] = (f"CPU dry run: the last rank raises torch.OutOfMemoryError for micro-batches of more "
                                f"than {check.sizes.oom_simulate_over} examples (no allocator limit on a CPU)")
    return figures


def step_oom_single(check: Check) -> dict:
    out = check.run_dir("oom_single") / "model"
    if check.cuda:
        cap_memory(check.oom_cap_gib)
    else:
        simulate_oom(check.sizes.oom_simulate_over)
    history, output = run_loop(oom_config(check), check.dataset("causal-lm"), out)
    figures = oom_figures(check, history, output)
    if check.cuda:
        import torch

        figures["max_memory_allocated_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return figures


def step_oom_ddp(check: Check) -> dict:
    world = check.world()
    out = check.run_dir("oom_ddp") / "model"
    history, output = torchrun(oom_config(check), check.dataset("causal-lm"), out, world, capped_options(check))
    figures = oom_figures(check, history, output) | distributed_figures(check, world, output)
    figures["sync_after_backward_logged"] = "gradients are averaged after the backward pass" in output
    return figures


def step_throughput(check: Check) -> dict:
    out = check.run_dir("throughput") / "gpu_throughput.json"
    run_command([sys.executable, str(ROOT / "bench" / "gpu_throughput.py"), *check.sizes.throughput,
                 "--out", str(out)])
    figures = json.loads(out.read_text(encoding="utf-8"))
    if figures.get("mfu") is not None:
        figures["mfu_at_least_40_percent"] = figures["mfu"] >= 0.40
    return figures


STEPS = {name.removeprefix("step_"): function for name, function in globals().items() if name.startswith("step_")}


# --- the out-of-memory wrapper ---------------------------------------------------------------------------------------

def cap_memory(cap_gib: float) -> None:
    """Let this process's CUDA allocator hold at most ``cap_gib`` GiB of its device (``LOCAL_RANK``'s): beyond
    that an allocation raises the out-of-memory error a full GPU raises."""
    import torch

    device = int(os.environ.get("LOCAL_RANK", 0))
    total = torch.cuda.get_device_properties(device).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, cap_gib * 2**30 / total), device)
    print(f"CUDA allocator of device {device} capped at {cap_gib:g} GiB", flush=True)


def simulate_oom(over: int) -> None:
    """CPU stand-in for a capped GPU: on the last rank, a training forward pass of a micro-batch of more than
    ``over`` examples raises torch's out-of-memory error as the model starts computing (inside DistributedDataParallel's
    forward, after the collectives it begins with, where a real one would come)."""
    import torch

    from kftune.training import loop

    original = loop.training_loss
    last_rank = int(os.environ.get("RANK", 0)) == int(os.environ.get("WORLD_SIZE", 1)) - 1

    def out_of_memory(module, args, kwargs):
        raise torch.OutOfMemoryError(f"CUDA out of memory (simulated on CPU: a micro-batch of more than {over} "
                                     "examples)")

    def training_loss(model, collate, recipe, run, indices):
        if not (last_rank and len(indices) > over):
            return original(model, collate, recipe, run, indices)
        inner = getattr(model, "module", model)  # DDP's wrapped model
        hook = inner.register_forward_pre_hook(out_of_memory, with_kwargs=True)
        try:
            return original(model, collate, recipe, run, indices)
        finally:
            hook.remove()

    loop.training_loss = training_loss


def train_capped(argv: list[str]) -> None:
    """The training loop's ``main`` with a capped CUDA allocator (``--cap-gib``), or on CPU the stand-in
    out-of-memory error (``--simulate-oom-over``)."""
    parser = argparse.ArgumentParser(prog="gpu_check_steps.py train-capped")
    parser.add_argument("--cap-gib", type=float, default=0.0)
    parser.add_argument("--simulate-oom-over", type=int, default=0)
    split = argv.index("--")
    args, loop_args = parser.parse_args(argv[:split]), argv[split + 1 :]
    if args.cap_gib:
        cap_memory(args.cap_gib)
    if args.simulate_oom_over:
        simulate_oom(args.simulate_oom_over)
    from kftune.training.loop import main

    main(loop_args)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "train-capped":
        train_capped(argv[1:])
        return 0
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("step", choices=sorted(STEPS))
    parser.add_argument("--prepared", type=Path, required=True)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--result", type=Path, required=True)
    parser.add_argument("--dry-run", action="store_true")
    parser.add_argument("--oom-cap-gib", type=float, default=4.0)
    args = parser.parse_args(argv)
    check = Check(args.prepared.resolve(), args.work.resolve(), args.dry_run, args.oom_cap_gib)
    try:
        result = {"status": "ok", "figures": STEPS[args.step](check)}
    except Skip as skip:
        result = {"status": "skipped", "reason": str(skip)}
    print(f"{args.step}: {json.dumps(result, indent=2)}", flush=True)
    args.result.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
