"""The finetune pipeline: preprocess -> (optional masked-LM) pretrain -> train (torchrun) -> evaluate vs baselines -> export ONNX
-> (when evaluate's gate passes) batch predictions over ``predict_input``, and publish to object storage -> deploy on
KServe.

Its run parameters are the settings of its components (each declared once, in its stage's
dataclass) plus the train task's resources and the Secret names (:mod:`kftune.pipelines.cluster`).
``build_finetune_pipeline`` makes the pipeline for an image scheme and the defaults of those
cluster parameters; ``finetune`` is the pipeline with the default images, one GPU and Kubeflow's
own object-store Secret.
"""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Metrics, Model

from kftune.cluster.images import ImageScheme
from kftune.cluster.resources import TrainResources
from kftune.components.deploy import component as deploy_component
from kftune.components.evaluate import component as evaluate_component
from kftune.components.export import component as export_component
from kftune.components.predict import component as predict_component
from kftune.components.preprocess import component as preprocess_component
from kftune.components.pretrain import component as pretrain_component
from kftune.components.publish import component as publish_component
from kftune.components.train import component as train_component
from kftune.pipelines.cluster import Cluster, ClusterOptions, StorageSecrets
from kftune.pipelines.steps import FinetuneSteps
from kftune.settings.signatures import settings_task, with_settings

PIPELINE_NAME = "finetune"
STAGES = (preprocess_component.preprocess, pretrain_component.pretrain, train_component.train, evaluate_component.evaluate,
          export_component.export, predict_component.predict, publish_component.publish, deploy_component.deploy)
"""The finetune pipeline's components: its run parameters are their settings."""


SETTINGS = tuple(dict.fromkeys(group for stage in STAGES for group in stage.settings_groups))
"""The settings groups of the pipeline's stages, in form order."""
LOCAL_SETTINGS = tuple(group for group in SETTINGS if group is not TrainResources)
"""What a local run takes: a pod's resources and placement mean nothing to kfp.local."""


def build_finetune_pipeline(images: ImageScheme = ImageScheme(), resources: TrainResources | None = None,
                            secrets: StorageSecrets | None = None, options: ClusterOptions = ClusterOptions()):
    """The finetune pipeline with its components in ``images``; ``resources`` and ``secrets`` give
    the defaults of those run parameters, ``options`` what is fixed when compiling."""
    cluster = Cluster(resources or TrainResources(), secrets or StorageSecrets(), options)
    steps = FinetuneSteps(images, cluster, PIPELINE_NAME)
    predict_op = predict_component.component(images)
    publish_op = publish_component.component(images)
    deploy_op = deploy_component.component(images)

    class Outputs(NamedTuple):
        model: Model
        exported_model: Model
        evaluation: Metrics
        passed: bool

    @dsl.pipeline(
        name=PIPELINE_NAME,
        description="Fine-tune a pretrained transformer for text classification or instruction-tune a causal LM "
        "(task): preprocess, train with torchrun, evaluate against baselines (the base model, for a causal LM), "
        "export (ONNX; a Hugging Face directory for a causal LM); when the gate passes, predict on predict_input "
        "(when given) and publish the model to object storage and, when it becomes the registry's champion (not worse "
        "than the one in production), deploy it on KServe.",
    )
    @with_settings(*SETTINGS, cluster.resources, cluster.secrets, omit=cluster.omitted_settings())
    def finetune() -> Outputs:
        """Fine-tune a pretrained transformer for text classification, or instruction-tune a causal language model.

        Args:
        """
        values = dict(locals())
        prep = steps.preprocess(values)
        pretrained = steps.pretrain(values, prep.outputs["dataset"])
        trained, scored, exported = steps.train_evaluate_export(
            values, prep.outputs["dataset"], prep.outputs["test_split"],
            pretrained_model=pretrained.outputs["pretrained_model"])

        with dsl.If(scored.outputs["Output"] == True, name="gate-passed"):  # noqa: E712 (a KFP condition)
            # batch predictions use the model, so only one that passed the gate; independent of publishing
            with dsl.If(values["predict_input"] != "", name="predict-requested"):
                predicted = settings_task(predict_op, values, exported_model=exported.outputs["exported_model"])
                predicted.set_display_name("predict").set_cpu_request("2").set_memory_request("8G")
                cluster.use_storage_secrets(predicted, values)  # input and output may be in s3:// or gs://
            with dsl.If(values["publish_uri"] != "", name="publish-requested"):
                published = settings_task(publish_op, values, model=exported.outputs["exported_model"])
                published.set_display_name("publish").set_cpu_request("1").set_memory_request("2G")
                published.set_retry(num_retries=2, backoff_duration="30s")
                cluster.use_storage_secrets(published, values)
                cluster.use_tracking_secret(published, values)  # the published URI goes onto the registry version
                # deploy serves the champion: a model the registry kept as challenger is published, not served
                with dsl.If(values["deploy_name"] != "", name="deploy-requested"), \
                        dsl.If(exported.outputs["Output"] == True, name="promoted"):  # noqa: E712
                    deployed = settings_task(deploy_op, values, model_uri=published.outputs["Output"],
                                             exported_model=exported.outputs["exported_model"])
                    deployed.set_display_name("deploy").set_cpu_request("250m").set_memory_request("512M")

        return Outputs(model=trained.outputs["finetuned_model"], exported_model=exported.outputs["exported_model"],
                       evaluation=scored.outputs["metrics"], passed=scored.outputs["Output"])

    return finetune


finetune = build_finetune_pipeline()
