"""KFP component: export the model to ONNX with a parity check (thin layer over export.py)."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from kftune.components.common.images import ImageScheme


def export(
    dataset: Input[Dataset],
    model: Input[Model],
    onnx_model: Output[Model],
    metrics: Output[Metrics],
    opset: int = 17,
    atol: float = 1e-3,
    quantize_int8: bool = True,
):
    """Export the fine-tuned model to ONNX (dynamic batch and sequence axes) and verify it.

    Args:
        dataset: Tokenized splits from preprocess; parity is checked on the test split.
        model: Fine-tuned Hugging Face model from train.
        onnx_model: Output: model.onnx (and model.int8.onnx), tokenizer and config.
        metrics: Output: parity figures, accuracies and file sizes.
        opset: ONNX opset version.
        atol: Largest allowed absolute difference between PyTorch and ONNX Runtime logits.
        quantize_int8: Also write an int8 dynamically quantized model and report its accuracy.
    """
    from kftune.components.export.export import ExportConfig, export_model

    report = export_model(model.path, dataset.path, onnx_model.path,
                          ExportConfig(opset=opset, atol=atol, quantize_int8=quantize_int8))
    metrics.log_metric("parity_max_abs_logit_diff", report["parity"]["max_abs_logit_diff"])
    metrics.log_metric("parity_prediction_mismatches", report["parity"]["prediction_mismatches"])
    for name, value in report["accuracy"].items():
        metrics.log_metric(f"test_accuracy_{name}", value)
    for name, value in report["size_bytes"].items():
        metrics.log_metric(f"size_mb_{name}", round(value / 2**20, 2))
    onnx_model.metadata.update({"framework": "onnx", "opset": opset, "files": report["files"]})


def component(images: ImageScheme = ImageScheme()):
    """The export component running in its image under ``images``."""
    return dsl.component(export, base_image=images.image("export"), install_kfp_package=False)
