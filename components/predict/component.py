"""KFP component: batch predictions of the exported model over files of texts (thin door over predict.py;
its settings come from PredictConfig). The predictions are the component's Dataset artifact, and are also
copied to ``predict_output`` when it is given."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from kftune.cluster.images import ImageScheme
from kftune.components.predict.config import PredictConfig
from kftune.settings.signatures import with_settings


@with_settings(PredictConfig)
def predict(
    exported_model: Input[Model],
    predictions: Output[Dataset],
    metrics: Output[Metrics],
):
    """Predict on every text of a file, a directory or an object-store prefix with the exported model: classification labels and probabilities, causal-lm greedy generations; one row per input row, carrying its id.

    Args:
        exported_model: Exported model from export (classification ONNX, or the causal-LM Hugging Face directory).
        predictions: Output: the predictions (in predict_output_format, else the format predict_output's extension names, else JSON Lines): id, source file (with several), and the task's columns; also copied to predict_output when given.
        metrics: Output: rows, seconds, rows per second.
    """
    values = dict(locals())
    from kftune.components.predict.config import PredictConfig
    from kftune.components.predict.predict import predict_to_artifact
    from kftune.settings.fields import settings_from

    config = settings_from(PredictConfig, values)
    summary = predict_to_artifact(exported_model.path, config, predictions.path)
    for name in ("rows", "seconds", "rows_per_second"):
        metrics.log_metric(name, summary[name])
    predictions.metadata.update({"format": summary["format"], "task": summary["task"], "rows": summary["rows"],
                                 "input": config.predict_input, "output": config.predict_output})


def component(images: ImageScheme = ImageScheme()):
    """The predict component running in its image under ``images``."""
    return dsl.component(predict, base_image=images.image("predict"), install_kfp_package=False)
