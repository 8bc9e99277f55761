"""Export a fine-tuned model to ONNX and prove the export computes the same thing.

The graph takes ``input_ids``, ``attention_mask`` (and ``token_type_ids`` where the model
has them) with dynamic batch and sequence axes and returns ``logits``. Parity against
PyTorch is checked on the whole test split: the largest absolute logit difference must be
within ``atol`` and every prediction identical, or the export fails and writes nothing.
Optionally an int8 dynamically quantized copy is written, with its accuracy reported (it is
expected to differ slightly, so it is reported, not gated).
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from kftune.components.common.atomic import atomic_directory
from kftune.components.common.errors import KftuneError
from kftune.components.common.inference import MODEL_INPUTS, onnx_runner, predict_logits, torch_runner
from kftune.components.common.modeling import load_classifier
from kftune.components.common.schema import LABEL, LABELS_FILE, STATS_FILE, load_splits
from kftune.components.export.config import ExportConfig

log = logging.getLogger(__name__)

ONNX_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"
EXPORT_REPORT = "export_report.json"


def _to_onnx(model, tokenizer, path: Path, opset: int) -> list[str]:
    """Trace ``model`` to ONNX with dynamic batch and sequence axes; return its input names."""
    import warnings

    import torch

    sample = tokenizer(
        ["kftune exports this model", "a second, somewhat longer example sentence for tracing"],
        padding=True,
        return_tensors="pt",
    )
    names = [n for n in MODEL_INPUTS if n in sample]
    axes = {n: {0: "batch", 1: "sequence"} for n in names}
    axes["logits"] = {0: "batch"}

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


def export_model(model_dir: str | Path, dataset_dir: str | Path, output_dir: str | Path, config: ExportConfig) -> dict:
    """Export, check parity on the test split, optionally quantize; write ``output_dir``."""
    import onnx
    from transformers import AutoTokenizer

    config.validate()
    model_dir = Path(model_dir)
    model = load_classifier(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    splits, _ = load_splits(dataset_dir)
    test = splits["test"]
    y_true = np.asarray(test[LABEL])
    pad_id = tokenizer.pad_token_id or 0

    with atomic_directory(output_dir) as tmp:
        started = time.perf_counter()
        onnx_path = tmp / ONNX_FILE
        inputs = _to_onnx(model, tokenizer, onnx_path, config.opset)
        onnx.checker.check_model(str(onnx_path))
        export_seconds = time.perf_counter() - started

        torch_logits = predict_logits(torch_runner(model), test, config.batch_size, pad_id)
        onnx_logits = predict_logits(onnx_runner(_session(onnx_path)), test, config.batch_size, pad_id)
        max_diff = float(np.abs(torch_logits - onnx_logits).max())
        mismatched = int((torch_logits.argmax(1) != onnx_logits.argmax(1)).sum())
        log.info("ONNX parity on %d test texts: max |logit diff| %.2e, %d prediction(s) differ",
                 len(test), max_diff, mismatched)
        if max_diff > config.atol or mismatched:
            raise KftuneError(
                f"ONNX export of {model_dir} fails the parity check on the test split: max "
                f"|logit difference| {max_diff:.3e} (allowed {config.atol:.1e}), {mismatched} of "
                f"{len(test)} predictions differ (allowed 0)"
            )
        report = {
            "inputs": inputs,
            "opset": config.opset,
            "export_seconds": export_seconds,
            "parity": {"examples": len(test), "max_abs_logit_diff": max_diff, "prediction_mismatches": mismatched},
            "accuracy": {"pytorch": float((torch_logits.argmax(1) == y_true).mean()),
                         "onnx": float((onnx_logits.argmax(1) == y_true).mean())},
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
            report["accuracy"]["onnx_int8"] = float((int8_logits.argmax(1) == y_true).mean())
            report["int8_agreement_with_fp32"] = float((int8_logits.argmax(1) == onnx_logits.argmax(1)).mean())
            report["files"]["onnx_int8"] = INT8_FILE
            log.info("int8 model: test accuracy %.4f (fp32 %.4f)",
                     report["accuracy"]["onnx_int8"], report["accuracy"]["onnx"])
        tokenizer.save_pretrained(str(tmp))
        model.config.save_pretrained(str(tmp))
        if (model_dir / LABELS_FILE).is_file():
            shutil.copy(model_dir / LABELS_FILE, tmp / LABELS_FILE)
        report["size_bytes"] = {name: (tmp / f).stat().st_size for name, f in report["files"].items()}
        (tmp / EXPORT_REPORT).write_text(json.dumps(report, indent=2), encoding="utf-8")
    return report
