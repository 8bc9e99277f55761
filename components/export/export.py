"""Export a fine-tuned model to ONNX and prove the export computes the same thing.

The graph takes ``input_ids``, ``attention_mask`` (and ``token_type_ids`` where the model
has them) with dynamic batch and sequence axes and returns ``logits``. Parity against
PyTorch is checked on the whole test split: the largest absolute logit difference must be
within ``atol`` and every prediction identical, or the export fails and writes nothing.
Optionally an int8 dynamically quantized copy is written, with its accuracy reported (it is
expected to differ slightly, so it is reported, not gated). Every export directory holds a model
card (``README.md``, :mod:`~kftune.components.export.model_card`), written with the rest.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from kftune.components.export.config import ExportConfig
from kftune.components.export.model_card import write_model_card
from kftune.data.schema import LABEL, LABELS_FILE, STATS_FILE, TASK_FILE, dataset_task, load_test_split
from kftune.errors import KftuneError
from kftune.inference.runners import MODEL_INPUTS, onnx_runner, predict_logits, torch_runner
from kftune.models.encoder import load_encoder_model
from kftune.storage.atomic import atomic_directory
from kftune.tasks import resolve_task, task_named

log = logging.getLogger(__name__)

ONNX_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"
EXPORT_REPORT = "export_report.json"
TRAINING_RECORDS = {"tensorboard", "tracking.json", "tracking-pending"}
"""What a trained model directory holds besides the model (kftune.training.monitors, kftune.tracking)."""


def _to_onnx(model, tokenizer, path: Path, opset: int, logits_axes: dict | None = None) -> list[str]:
    """Trace ``model`` to ONNX with dynamic batch and sequence axes; return its input names. ``logits_axes``: the
    output's dynamic axes (default: the batch; a token-level task's logits also have the sequence)."""
    import warnings

    import torch

    sample = tokenizer(
        ["kftune exports this model", "a second, somewhat longer example sentence for tracing"],
        padding=True,
        return_tensors="pt",
    )
    names = [n for n in MODEL_INPUTS if n in sample]
    axes = {n: {0: "batch", 1: "sequence"} for n in names}
    axes["logits"] = logits_axes or {0: "batch"}

    class LogitsOnly(torch.nn.Module):
        """Positional inputs in ``names`` order -> logits (peft models order their arguments differently)."""

        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, *inputs):
            return self.inner(**dict(zip(names, inputs, strict=True))).logits

    with warnings.catch_warnings(), torch.inference_mode():
        warnings.simplefilter("ignore")
        # The TorchScript-based exporter: the dynamo one needs onnxscript, which kftune does
        # not install; parity with the PyTorch model is verified below either way.
        torch.onnx.export(
            LogitsOnly(model).eval(),
            tuple(sample[n] for n in names),
            str(path),
            input_names=names,
            output_names=["logits"],
            dynamic_axes=axes,
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )
    return names


def _session(path: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _max_seq_length(dataset_dir: Path) -> int | None:
    """The preprocess step's token limit, from the dataset's stats (None for a dataset without them)."""
    try:
        return int(json.loads((dataset_dir / STATS_FILE).read_text(encoding="utf-8"))["config"]["max_seq_length"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def export_model(model_dir: str | Path, dataset_dir: str | Path, test_dir: str | Path, output_dir: str | Path,
                 config: ExportConfig, evaluation: dict | None = None, base_model: str = "") -> dict:
    """Export in the task's format (:data:`FORMATS`), check parity on the test split (preprocess's test split
    artifact ``test_dir``; the dataset artifact ``dataset_dir`` says the task and its token limit); write
    ``output_dir`` with its model card. ``evaluation``: evaluate's result, for the card (None: the card says the model
    was not evaluated); ``base_model``: the train step's name of what training started from (empty: the one the
    model's ``training_history.json`` records)."""
    config = resolve_task(config, dataset_dir)
    config.validate()
    task = task_named(config.task)
    return FORMATS[task.export_format](Path(model_dir), Path(dataset_dir), Path(test_dir), output_dir, config, task,
                                       evaluation=evaluation, base_model=base_model)


def export_onnx(model_dir: Path, dataset_dir: Path, test_dir: Path, output_dir: str | Path, config: ExportConfig,
                task, evaluation: dict | None = None, base_model: str = "") -> dict:
    """An encoder's logits as an ONNX graph with dynamic axes, its parity with PyTorch checked on the test split
    (optionally also int8-quantized), and its model card (``evaluation``, ``base_model``: as for
    :func:`export_model`)."""
    import onnx
    from transformers import AutoTokenizer

    model = load_encoder_model(model_dir, task)
    info = task.trained_info(model_dir, model, dataset_task(dataset_dir))
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    test = load_test_split(test_dir)
    y_true = task.label_array(test[LABEL])
    pad_id = tokenizer.pad_token_id or 0

    def score(logits) -> float:
        return task.scores(logits, y_true, info)[task.primary]

    with atomic_directory(output_dir) as tmp:
        started = time.perf_counter()
        onnx_path = tmp / ONNX_FILE
        inputs = _to_onnx(model, tokenizer, onnx_path, config.opset, task.logits_axes)
        onnx.checker.check_model(str(onnx_path))
        export_seconds = time.perf_counter() - started

        torch_logits = predict_logits(torch_runner(model), test, config.batch_size, pad_id)
        onnx_logits = predict_logits(onnx_runner(_session(onnx_path)), test, config.batch_size, pad_id)
        max_diff = float(np.abs(torch_logits - onnx_logits).max())
        decided = task.decisions(torch_logits, info)
        mismatched = 0 if decided is None else int(
            (decided != task.decisions(onnx_logits, info)).reshape(len(test), -1).any(axis=1).sum())
        log.info("ONNX parity on %d test texts: max |logit diff| %.2e, %d prediction(s) differ",
                 len(test), max_diff, mismatched)
        if max_diff > config.atol or mismatched:
            raise KftuneError(
                f"ONNX export of {model_dir} fails the parity check on the test split: max "
                f"|logit difference| {max_diff:.3e} (allowed {config.atol:.1e}), {mismatched} of "
                f"{len(test)} predictions differ (allowed 0)"
            )
        report = {
            "task": config.task,
            "format": "onnx",
            "inputs": inputs,
            "opset": config.opset,
            "export_seconds": export_seconds,
            "parity": {"examples": len(test), "max_abs_logit_diff": max_diff, "prediction_mismatches": mismatched},
            # the task's primary score on the test split (classification: accuracy)
            "primary_metric": task.primary,
            "accuracy": {"pytorch": score(torch_logits), "onnx": score(onnx_logits)},
            "files": {"onnx": ONNX_FILE},
            "config": asdict(config),
            # what a server must truncate texts to, to see them as training and evaluation did
            "max_seq_length": _max_seq_length(Path(dataset_dir)),
        }
        if config.quantize_int8:
            from onnxruntime.quantization import QuantType, quantize_dynamic

            int8_path = tmp / INT8_FILE
            quantize_dynamic(str(onnx_path), str(int8_path), weight_type=QuantType.QInt8)
            int8_logits = predict_logits(onnx_runner(_session(int8_path)), test, config.batch_size, pad_id)
            report["accuracy"]["onnx_int8"] = score(int8_logits)
            int8_decided, fp32_decided = task.decisions(int8_logits, info), task.decisions(onnx_logits, info)
            if fp32_decided is not None:
                report["int8_agreement_with_fp32"] = float(
                    (int8_decided == fp32_decided).reshape(len(test), -1).all(axis=1).mean())
            report["files"]["onnx_int8"] = INT8_FILE
            log.info("int8 model: test accuracy %.4f (fp32 %.4f)",
                     report["accuracy"]["onnx_int8"], report["accuracy"]["onnx"])
        tokenizer.save_pretrained(str(tmp))
        model.config.save_pretrained(str(tmp))
        if (model_dir / LABELS_FILE).is_file():
            shutil.copy(model_dir / LABELS_FILE, tmp / LABELS_FILE)
        (tmp / TASK_FILE).write_text(json.dumps(info, indent=2), encoding="utf-8")
        report["size_bytes"] = {name: (tmp / f).stat().st_size for name, f in report["files"].items()}
        _add_model_card(report, tmp, task, model_dir, dataset_dir, test_dir, info, evaluation, base_model)
        (tmp / EXPORT_REPORT).write_text(json.dumps(report, indent=2), encoding="utf-8")
    return report


def _add_model_card(report: dict, directory: Path, task, model_dir: Path, dataset_dir: Path, test_dir: Path,
                    info: dict, evaluation: dict | None, base_model: str) -> None:
    """Write the model card into ``directory`` (the export being written) and say so in ``report``."""
    report["model_card"] = write_model_card(directory, task, report["format"], model_dir, dataset_dir, test_dir, info,
                                            report["files"], evaluation, base_model)
    report["files"]["model_card"] = report["model_card"]["file"]


PARITY_PROMPTS = 32


def export_huggingface(model_dir: Path, dataset_dir: Path, test_dir: Path, output_dir: str | Path,
                       config: ExportConfig, task, evaluation: dict | None = None, base_model: str = "") -> dict:
    """A causal LM as a Hugging Face directory: the merged model, the LoRA adapter in ``adapter/``, checked against
    what was trained, and its model card (which replaces any ``README.md`` the base model brought; ``evaluation``,
    ``base_model``: as for :func:`export_model`).

    The reference is the trained model as training left it: for LoRA the base model with the adapter, unmerged
    (what the merge must reproduce); for full fine-tuning the trained weights. The export's merged model, reloaded
    from what was written, answers the first test prompts greedily and gives its logits: they must be within
    ``atol`` of the reference's (merging changes floating-point sums), and for full fine-tuning (the same weights)
    its answers identical — or nothing is written.
    """
    import torch

    from kftune.data.bundled import resolve_model
    from kftune.data.schema import TASK_FILE, dataset_task
    from kftune.inference.generation import generate, max_new_tokens_for
    from kftune.models.causal_lm import ADAPTER_DIR, load_causal_lm
    from kftune.training.causal_lm_recipe import CausalCollator

    model_dir = Path(model_dir)
    info = dataset_task(dataset_dir)
    test = load_test_split(test_dir)
    test = test.select(range(min(PARITY_PROMPTS, len(test))))
    prompts = list(test["prompt"])
    max_new = max_new_tokens_for(info, 0)
    history = json.loads((model_dir / "training_history.json").read_text(encoding="utf-8"))
    adapter = (model_dir / ADAPTER_DIR).is_dir()
    if adapter:  # the trained model unmerged: the base it was trained from, with the adapter
        from peft import PeftModel
        from transformers import AutoTokenizer

        base, _ = load_causal_lm(resolve_model(history["config"]["model"]))
        reference = PeftModel.from_pretrained(base, str(model_dir / ADAPTER_DIR)).eval()
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    else:
        reference, tokenizer = load_causal_lm(model_dir)
    expected = generate(reference, tokenizer, prompts, max_new, desc="trained model answers")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    batch = CausalCollator(test, pad_id)(range(len(test)))
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    with torch.no_grad():
        reference_logits = reference(**inputs).logits
    del reference

    with atomic_directory(output_dir) as tmp:
        for path in model_dir.iterdir():
            if path.name in TRAINING_RECORDS:  # of the training run, not of the model
                continue
            if path.is_dir():
                shutil.copytree(path, tmp / path.name)
            else:
                shutil.copy2(path, tmp / path.name)
        merged, merged_tokenizer = load_causal_lm(tmp)
        with torch.no_grad():
            diff = float((merged(**inputs).logits - reference_logits).abs().max())
        answers = generate(merged, merged_tokenizer, prompts, max_new, desc="exported model answers")
        mismatches = sum(a != b for a, b in zip(expected, answers, strict=True))
        reference_name = "base model + adapter (unmerged)" if adapter else "trained model"
        log.info("export parity against the %s on %d test prompts: max |logit diff| %.2e, %d answers differ",
                 reference_name, len(prompts), diff, mismatches)
        if diff > config.atol:
            raise KftuneError(f"export of {model_dir}: the exported model differs from the {reference_name} by "
                              f"{diff:.3e} in the logits of the test prompts (allowed {config.atol:.1e})")
        if mismatches and not adapter:
            raise KftuneError(f"export of {model_dir}: the reloaded model answers {mismatches} of {len(prompts)} "
                              "test prompts differently from the trained model")
        parity = {"prompts": len(prompts), "reference": reference_name, "max_abs_logit_diff": diff,
                  "generation_mismatches": mismatches, "generation_agreement": 1 - mismatches / len(prompts)}
        files = {"model": "model.safetensors"} | ({"adapter": ADAPTER_DIR} if adapter else {})
        report = {
            "task": config.task,
            "format": "huggingface",
            "base_model": history["config"]["model"],
            "training_mode": history["config"]["training_mode"],
            "parity": parity,
            "files": files,
            "config": asdict(config),
            "max_seq_length": int(info.get("max_seq_length") or 0) or _max_seq_length(Path(dataset_dir)),
            "max_new_tokens": max_new,
            "answers": info.get("answers") or [],
        }
        if not (tmp / TASK_FILE).is_file():
            (tmp / TASK_FILE).write_text(json.dumps(info, indent=2), encoding="utf-8")
        report["size_bytes"] = {"model": (tmp / "model.safetensors").stat().st_size}
        _add_model_card(report, tmp, task, model_dir, dataset_dir, test_dir,
                        json.loads((tmp / TASK_FILE).read_text(encoding="utf-8")), evaluation, base_model)
        (tmp / EXPORT_REPORT).write_text(json.dumps(report, indent=2), encoding="utf-8")
    return report


FORMATS = {"onnx": export_onnx, "huggingface": export_huggingface}
"""What export writes for a task's ``export_format``."""
