"""KFP component: export the model to ONNX with a parity check, with its model card (thin door over export.py; its
settings come from ExportConfig)."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from kftune.cluster.images import ImageScheme
from kftune.components.export.config import ExportConfig
from kftune.settings.signatures import with_settings
from kftune.tracking.registry import RegistryConfig


@with_settings(ExportConfig, RegistryConfig)
def export(
    dataset: Input[Dataset],
    test_split: Input[Dataset],
    model: Input[Model],
    evaluation: Input[Metrics],
    exported_model: Output[Model],
    metrics: Output[Metrics],
) -> bool:
    """Export the fine-tuned model in its task's format and verify it: an encoder's logits as ONNX (dynamic batch and sequence axes), a causal LM as a Hugging Face directory (merged weights, and the LoRA adapter); each with a Hugging Face model card (README.md) stating the base model, the data and the evaluation.

    Args:
        dataset: Train and validation splits from preprocess (the task and its token limit).
        test_split: The test split from preprocess: parity is checked on it.
        model: Fine-tuned Hugging Face model from train.
        evaluation: Evaluate's metrics: its result (test scores with intervals, baselines, gate) goes into the model card.
        exported_model: Output: model.onnx (and model.int8.onnx), tokenizer and config; or the merged Hugging Face model and adapter/; and the model card, README.md.
        metrics: Output: parity figures, accuracies and file sizes.

    Returns:
        Whether the export is the model to serve: the registry's champion once registered (a model that passed the gate and is not worse than the champion), or, with no registry, a model that passed the gate.
    """
    values = dict(locals())
    import json

    from kftune.components.export.config import ExportConfig
    from kftune.components.export.export import export_model
    from kftune.errors import KftuneError
    from kftune.settings.fields import settings_from
    from kftune.tracking.champion import deploys
    from kftune.tracking.registry import RegistryConfig
    from kftune.tracking.stages import record_export

    config = settings_from(ExportConfig, values)
    if "result" not in evaluation.metadata:
        raise KftuneError("the evaluation input has no 'result' in its metadata; expected the evaluate step's metrics")
    result = json.loads(evaluation.metadata["result"])
    report = export_model(model.path, dataset.path, test_split.path, exported_model.path, config,
                          evaluation=result, base_model=model.metadata.get("base_model", ""))
    for name, value in report["parity"].items():
        metrics.log_metric(f"parity_{name}", value)
    for name, value in report.get("accuracy", {}).items():
        metrics.log_metric(f"test_accuracy_{name}", value)
    for name, value in report["size_bytes"].items():
        metrics.log_metric(f"size_mb_{name}", round(value / 2**20, 2))
    registered = record_export(model.path, exported_model.path, report, exported_model.path, result,
                               settings_from(RegistryConfig, values))
    if registered:
        exported_model.metadata["registered"] = registered
    exported_model.metadata.update({"framework": report["format"], "task": report["task"], "files": report["files"],
                                    "model_card": report["model_card"],
                                    **({"opset": report["opset"]} if "opset" in report else {})})
    # A single unnamed output ("Output"), as evaluate's: kfp.local 2.17 cannot resolve a dsl.If on a named one.
    return deploys(result, registered)


def component(images: ImageScheme = ImageScheme()):
    """The export component running in its image under ``images``."""
    return dsl.component(export, base_image=images.image("export"), install_kfp_package=False)
