"""KFP component: batch predictions of the exported model over files of texts (thin door over predict.py;
its settings come from PredictConfig, but ``output``, which is the component's Dataset artifact)."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from kftune.components.common.images import ImageScheme
from kftune.components.common.signatures import with_settings
from kftune.components.predict.config import PredictConfig


@with_settings(PredictConfig, omit=("output",))
def predict(
    exported_model: Input[Model],
    predictions: Output[Dataset],
    metrics: Output[Metrics],
):
    """Predict on every text of a file, a directory or an object-store prefix with the exported model: classification labels and probabilities, causal-lm greedy generations; one row per input row, carrying its id.

    Args:
        exported_model: Exported model from export (classification ONNX, or the causal-LM Hugging Face directory).
        predictions: Output: the predictions (JSON Lines unless output_format says otherwise): id, source file (with several), and the task's columns.
        metrics: Output: rows, seconds, rows per second.
    """
    values = dict(locals())
    from kftune.components.common.settings import settings_from
    from kftune.components.predict.config import PredictConfig
    from kftune.components.predict.predict import predict as run

    config = settings_from(PredictConfig, values)
    fmt = "jsonl" if config.output_format == "auto" else config.output_format
    config = settings_from(PredictConfig, values, output=predictions.path, output_format=fmt)
    summary = run(exported_model.path, config)
    for name in ("rows", "seconds", "rows_per_second"):
        metrics.log_metric(name, summary[name])
    predictions.metadata.update({"format": fmt, "task": summary["task"], "rows": summary["rows"],
                                 "input": config.input})


def component(images: ImageScheme = ImageScheme()):
    """The predict component running in its image under ``images``."""
    return dsl.component(predict, base_image=images.image("predict"), install_kfp_package=False)
