"""KFP component: serve a published model as a KServe InferenceService (thin door over deploy.py;
its settings come from DeployConfig).

The task's pod talks to the Kubernetes API with the pipeline's service account, which needs
get, create and patch on inferenceservices.serving.kserve.io (manifests/base/rbac.yaml). The
model's storage credentials never pass through here: KServe's storage initializer takes them
from the secrets of ``serving_service_account``, the predictor's service account.
"""

from kfp import dsl
from kfp.dsl import Input, Model

from kftune.cluster.images import ImageScheme
from kftune.components.deploy.config import DeployConfig
from kftune.settings.signatures import with_settings
from kftune.tasks import TaskChoice


@with_settings(DeployConfig, TaskChoice)
def deploy(model_uri: str, exported_model: Input[Model] = None) -> str:
    """Create or update the KServe InferenceService deploy_name serving the model at model_uri (an ONNX export on serving_runtime, a causal LM on causal_lm_serving_runtime), wait until it is Ready, and return its URL.

    Args:
        model_uri: The published model version to serve: s3://bucket/path, gs://bucket/path, pvc://claim/path or http(s)://; KServe's storage initializer copies it to /mnt/models.
        exported_model: The export step's output, which says the model's task where task is auto (the pipelines pass it).

    Returns:
        The URL of the InferenceService, e.g. http://sentiment.team-a.example.com.
    """
    values = dict(locals())
    import logging

    from kftune.components.deploy.config import DeployConfig
    from kftune.components.deploy.deploy import deploy_inference_service, deploy_request
    from kftune.settings.fields import check_settings, settings_from
    from kftune.tasks import AUTO, TaskChoice

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = settings_from(DeployConfig, values)
    task = settings_from(TaskChoice, values)
    check_settings(task)
    if task.task == AUTO:
        from kftune.errors import ConfigError
        from kftune.tasks import export_task

        if exported_model is None:
            raise ConfigError("task auto: deploy reads the task from the exported_model artifact; pass it or set task")
        from pathlib import Path

        task.task = export_task(Path(exported_model.path))
    request = deploy_request(settings, model_uri, task.task)
    return deploy_inference_service(request, timeout_seconds=settings.deploy_timeout_minutes * 60)["url"]


def component(images: ImageScheme = ImageScheme()):
    """The deploy component running in its image under ``images``."""
    return dsl.component(deploy, base_image=images.image("deploy"), install_kfp_package=False)
