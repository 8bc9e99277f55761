"""KFP component: score the model against baselines and gate it (thin door over evaluate.py; its
settings come from EvaluateConfig)."""

from kfp import dsl
from kfp.dsl import HTML, ClassificationMetrics, Dataset, Input, Markdown, Metrics, Model, Output

from kftune.cluster.images import ImageScheme
from kftune.components.evaluate.config import EvaluateConfig
from kftune.settings.signatures import with_settings
from kftune.tracking.registry import RegistryConfig


@with_settings(EvaluateConfig, RegistryConfig, omit=("model_registry_url",))  # evaluate reads MLflow's only
def evaluate(
    dataset: Input[Dataset],
    test_split: Input[Dataset],
    model: Input[Model],
    metrics: Output[Metrics],
    classification: Output[ClassificationMetrics],
    report: Output[HTML],
    summary: Output[Markdown],
) -> bool:
    """Score the fine-tuned model on the test split against the task's baselines (fitted on the train split, or a causal LM's base model on the same prompts), and gate it; where the model registry has a champion, score it on the same split and decide whether the model may replace it.

    Args:
        dataset: Train and validation splits from preprocess (the baselines train on its train split).
        test_split: The test split from preprocess: what the model and the baselines are scored on.
        model: Fine-tuned model from train.
        metrics: Output: the task's test scores of the model, baselines and champion, deltas, gate, promotion.
        classification: Output: confusion matrix (and ROC curve for binary classification), where the task has one.
        report: Output: HTML report with tables and plots.
        summary: Output: Markdown table, model vs baselines.

    Returns:
        Whether every gate check holds (the gate "passed"; the pipeline publishes and deploys only then).
    """
    values = dict(locals())
    import json
    from pathlib import Path

    from kftune.components.evaluate.config import EvaluateConfig
    from kftune.components.evaluate.evaluate import evaluate as run
    from kftune.components.evaluate.evaluate import flat_metrics
    from kftune.components.evaluate.report import evaluation_markdown, evaluation_report_html
    from kftune.settings.fields import settings_from
    from kftune.tracking.registry import RegistryConfig
    from kftune.tracking.stages import record_evaluation

    config = settings_from(EvaluateConfig, values)
    result = run(model.path, dataset.path, test_split.path, config, settings_from(RegistryConfig, values))
    for name, value in flat_metrics(result).items():
        metrics.log_metric(name, value)
    if "confusion_matrix" in result["model"]:
        # the matrix's own row names where the task has them (token-classification: entity types), else the labels
        names = result["model"].get("confusion_labels") or result["labels"]
        classification.log_confusion_matrix(names, result["model"]["confusion_matrix"])
    if "roc_curve" in result["model"]:
        curve = result["model"]["roc_curve"]
        # KFP stores the curve in metadata; thin it to keep the artifact small.
        step = max(1, len(curve["fpr"]) // 200)
        thresholds = [min(t, 1.0) for t in curve["thresholds"][::step]]
        classification.log_roc_curve(curve["fpr"][::step], curve["tpr"][::step], thresholds)
    Path(report.path).write_text(evaluation_report_html(result), encoding="utf-8")
    Path(summary.path).write_text(evaluation_markdown(result), encoding="utf-8")
    record_evaluation(model.path, result, config, {"reports": report.path, "reports/summary": summary.path},
                      artifact_path=report.path)
    metrics.metadata["result"] = json.dumps({k: v for k, v in result.items() if k != "model"} | {
        "model": {k: v for k, v in result["model"].items() if k != "roc_curve"}})
    # A single unnamed output ("Output"): kfp.local 2.17 cannot resolve a dsl.If on a named one.
    return bool(result["passed"])


def component(images: ImageScheme = ImageScheme()):
    """The evaluate component running in its image under ``images``."""
    return dsl.component(evaluate, base_image=images.image("evaluate"), install_kfp_package=False)
