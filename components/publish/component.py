"""KFP component: publish the exported model as a new version in object storage (thin layer over publish.py).

Credentials never pass through here: the task gets them from a Kubernetes Secret as
environment variables (``kftune.pipelines.secrets``: ``use_s3_secret(task, ...)`` /
``use_gcs_secret``), so the compiled YAML holds only the Secret's name (or the run parameter
that gives it).
"""

from kfp import dsl
from kfp.dsl import Input, Metrics, Model, Output

from kftune.cluster.images import ImageScheme
from kftune.components.publish.config import PublishConfig
from kftune.settings.signatures import with_settings


@with_settings(PublishConfig)
def publish(
    model: Input[Model],
    metrics: Output[Metrics],
) -> str:
    """Upload the model directory as the next version v<N> under publish_uri, verify it, then make it visible and move latest to it.

    Args:
        model: Model directory to publish (the ONNX export, or the Hugging Face model from train).
        metrics: Output: version number, file count and size of the published version.

    Returns:
        The URI of the published version, e.g. s3://models/sentiment/v3.
    """
    values = dict(locals())
    import logging

    from kftune.components.publish.config import PublishConfig
    from kftune.components.publish.publish import publish_model
    from kftune.settings.fields import settings_from
    from kftune.tracking.stages import record_publish

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = settings_from(PublishConfig, values)
    result = publish_model(model.path, settings.publish_uri, stale_after_s=settings.stale_after_hours * 3600)
    metrics.log_metric("version", int(result["version"][1:]))
    metrics.log_metric("files", result["files"])
    metrics.log_metric("size_mb", round(result["bytes"] / 2**20, 2))
    record_publish(model.path, result["version_uri"])
    return result["version_uri"]


def component(images: ImageScheme = ImageScheme()):
    """The publish component running in its image under ``images``."""
    return dsl.component(publish, base_image=images.image("publish"), install_kfp_package=False)
