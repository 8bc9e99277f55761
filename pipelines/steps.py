"""The steps both pipelines run: preprocess, and train -> evaluate -> export (the finetune
pipeline's main line, and the tune pipeline's training of the best configuration).

Preprocess gives two artifacts: ``dataset`` (train and validation), which every step that trains or
chooses gets, and ``test_split``, which only evaluate and export are given: nothing before them can
read a test example."""

from __future__ import annotations

from kfp import dsl

from kftune.cluster.images import ImageScheme
from kftune.components.evaluate import component as evaluate_component
from kftune.components.export import component as export_component
from kftune.components.preprocess import component as preprocess_component
from kftune.components.pretrain import component as pretrain_component
from kftune.components.train import component as train_component
from kftune.pipelines.cluster import Cluster
from kftune.settings.signatures import settings_task
from kftune.tracking.tracker import ENV_PIPELINE


class FinetuneSteps:
    """The shared steps' components in the images of one scheme, on one cluster request."""

    def __init__(self, images: ImageScheme, cluster: Cluster, pipeline: str):
        self.images, self.cluster, self.pipeline = images, cluster, pipeline
        self.preprocess_op = preprocess_component.component(images)
        self.pretrain_op = pretrain_component.component(images)
        self.train_op = train_component.component(images)
        self.evaluate_op = evaluate_component.component(images)
        self.export_op = export_component.component(images)

    def preprocess(self, values: dict) -> dsl.PipelineTask:
        """Clean, split and tokenize the data (which, like the pretrained model, may be in s3:// or gs://)."""
        prep = settings_task(self.preprocess_op, values)
        prep.set_display_name("preprocess").set_cpu_request("1").set_memory_request("4G")
        self.cluster.use_storage_secrets(prep, values)
        return prep

    def pretrain(self, values: dict, dataset) -> dsl.PipelineTask:
        """Masked-LM pretraining of the base model when the run parameter ``pretrain`` is on; a no-op step otherwise
        (its artifact then holds no model and train starts from ``model``)."""
        pretrained = settings_task(self.pretrain_op, values, dataset=dataset)
        pretrained.set_display_name("pretrain").set_cpu_request("2").set_memory_request("8G")
        self.cluster.use_storage_secrets(pretrained, values)  # the model and the corpus may be in s3:// or gs://
        return pretrained

    def train_evaluate_export(self, values: dict, dataset, test_split, display_name: str = "train",
                              **train_arguments) -> tuple[dsl.PipelineTask, dsl.PipelineTask, dsl.PipelineTask]:
        """Train on the cluster's training resources (on ``dataset``: train and validation), then evaluate the model
        (on ``test_split`` too) and export it with its model card (which states the evaluation)."""
        trained = settings_task(self.train_op, values, dataset=dataset, shared_dir=self.cluster.shared_dir,
                                run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER, trainjob_image=self.images.image("train"),
                                **train_arguments)
        trained.set_display_name(display_name)
        trained.set_env_variable(ENV_PIPELINE, self.pipeline)  # the MLflow run's tag kftune.pipeline
        self.cluster.request_training_resources(trained, values)
        self.cluster.use_storage_secrets(trained, values)  # the pretrained model may be in s3:// or gs://
        self.cluster.use_tracking_secret(trained, values)
        model = trained.outputs["finetuned_model"]
        scored = settings_task(self.evaluate_op, values, dataset=dataset, test_split=test_split, model=model)
        scored.set_display_name("evaluate").set_cpu_request("2").set_memory_request("8G")
        self.cluster.use_tracking_secret(scored, values)
        # after evaluate: its result goes into the export's model card
        exported = settings_task(self.export_op, values, dataset=dataset, test_split=test_split, model=model,
                                 evaluation=scored.outputs["metrics"])
        exported.set_display_name("export").set_cpu_request("2").set_memory_request("8G")
        self.cluster.use_tracking_secret(exported, values)
        return trained, scored, exported
