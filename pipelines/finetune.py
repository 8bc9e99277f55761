"""The finetune pipeline: preprocess -> train (torchrun) -> evaluate vs baselines -> export ONNX
-> (when evaluate's gate passes) publish to object storage -> deploy on KServe.

Its run parameters are the settings of its components (each declared once, in its stage's
dataclass) plus the train task's resources and the Secret names (:mod:`kftune.pipelines.cluster`).
``build_finetune_pipeline`` makes the pipeline for an image scheme and the defaults of those
cluster parameters; ``finetune`` is the pipeline with the default images, one GPU and Kubeflow's
own object-store Secret.
"""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Metrics, Model

from kftune.components.common.images import ImageScheme
from kftune.components.common.resources import SHARED_MOUNT, TrainResources
from kftune.components.common.signatures import settings_task, with_settings
from kftune.components.deploy import component as deploy_component
from kftune.components.evaluate import component as evaluate_component
from kftune.components.export import component as export_component
from kftune.components.preprocess import component as preprocess_component
from kftune.components.publish import component as publish_component
from kftune.components.train import component as train_component
from kftune.pipelines.cluster import (
    ClusterOptions,
    StorageSecrets,
    omitted_settings,
    request_training_resources,
    use_storage_secrets,
)

PIPELINE_NAME = "finetune"
STAGES = (preprocess_component.preprocess, train_component.train, evaluate_component.evaluate,
          export_component.export, publish_component.publish, deploy_component.deploy)
"""The finetune pipeline's components: its run parameters are their settings."""


SETTINGS = tuple(dict.fromkeys(group for stage in STAGES for group in stage.settings_groups))
"""The settings groups of the pipeline's stages, in form order."""
LOCAL_SETTINGS = tuple(group for group in SETTINGS if group is not TrainResources)
"""What a local run takes: a pod's resources and placement mean nothing to kfp.local."""


def build_finetune_pipeline(images: ImageScheme = ImageScheme(), resources: TrainResources | None = None,
                            secrets: StorageSecrets | None = None, options: ClusterOptions = ClusterOptions()):
    """The finetune pipeline with its components in ``images``; ``resources`` and ``secrets`` give
    the defaults of those run parameters, ``options`` what is fixed when compiling."""
    resources, secrets = resources or TrainResources(), secrets or StorageSecrets()
    resources.validate()
    options.validate()
    preprocess_op = preprocess_component.component(images)
    train_op = train_component.component(images)
    evaluate_op = evaluate_component.component(images)
    export_op = export_component.component(images)
    publish_op = publish_component.component(images)
    deploy_op = deploy_component.component(images)
    shared_dir = SHARED_MOUNT if resources.shared_pvc else ""

    class Outputs(NamedTuple):
        model: Model
        onnx_model: Model
        evaluation: Metrics
        passed: bool

    @dsl.pipeline(
        name=PIPELINE_NAME,
        description="Fine-tune a pretrained transformer for text classification: preprocess, "
        "train with torchrun, evaluate against baselines, export to ONNX; when the gate passes, "
        "publish the model to object storage and deploy it on KServe.",
    )
    @with_settings(*SETTINGS, resources, secrets, omit=omitted_settings(resources, secrets))
    def finetune() -> Outputs:
        """Fine-tune a pretrained transformer for text classification.

        Args:
        """
        values = dict(locals())
        prep = settings_task(preprocess_op, values)
        prep.set_display_name("preprocess").set_cpu_request("1").set_memory_request("4G")
        use_storage_secrets(prep, values, secrets, options)  # data and the pretrained model may be in s3:// or gs://

        trained = settings_task(train_op, values, dataset=prep.outputs["dataset"], shared_dir=shared_dir,
                                run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER, trainjob_image=images.image("train"))
        trained.set_display_name("train")
        request_training_resources(trained, values, resources, options)
        use_storage_secrets(trained, values, secrets, options)  # the pretrained model may be in s3:// or gs://
        model = trained.outputs["finetuned_model"]

        scored = settings_task(evaluate_op, values, dataset=prep.outputs["dataset"], model=model)
        scored.set_display_name("evaluate").set_cpu_request("2").set_memory_request("8G")

        exported = settings_task(export_op, values, dataset=prep.outputs["dataset"], model=model)
        exported.set_display_name("export").set_cpu_request("2").set_memory_request("8G")

        with dsl.If(scored.outputs["Output"] == True, name="gate-passed"):  # noqa: E712 (a KFP condition)
            with dsl.If(values["publish_uri"] != "", name="publish-requested"):
                published = settings_task(publish_op, values, model=exported.outputs["onnx_model"])
                published.set_display_name("publish").set_cpu_request("1").set_memory_request("2G")
                published.set_retry(num_retries=2, backoff_duration="30s")
                use_storage_secrets(published, values, secrets, options)
                with dsl.If(values["deploy_name"] != "", name="deploy-requested"):
                    deployed = settings_task(deploy_op, values, model_uri=published.outputs["Output"])
                    deployed.set_display_name("deploy").set_cpu_request("250m").set_memory_request("512M")

        return Outputs(model=model, onnx_model=exported.outputs["onnx_model"], evaluation=scored.outputs["metrics"],
                       passed=scored.outputs["Output"])

    return finetune


finetune = build_finetune_pipeline()
