"""The finetune pipeline: preprocess -> train (torchrun) -> evaluate vs baselines -> export ONNX
-> (when evaluate's gate passes) publish to object storage -> deploy on KServe.

``build_finetune_pipeline`` makes the pipeline for an image scheme, a training hardware
request and the Kubernetes Secrets that hold storage credentials (all compile-time: KFP cannot
take accelerator counts or Secret mounts from run parameters); ``finetune`` is the pipeline
with the default images, one GPU and Kubeflow's own MinIO Secret.
"""


import json
from dataclasses import dataclass
from typing import NamedTuple

from kfp import dsl, kubernetes
from kfp.dsl import Metrics, Model

from kftune.components.common.errors import ConfigError
from kftune.components.common.images import ImageScheme
from kftune.components.deploy import component as deploy_component
from kftune.components.evaluate import component as evaluate_component
from kftune.components.export import component as export_component
from kftune.components.preprocess import component as preprocess_component
from kftune.components.publish import component as publish_component
from kftune.components.train import component as train_component
from kftune.pipelines.secrets import use_gcs_secret, use_s3_secret

PIPELINE_NAME = "finetune"


ACCELERATOR_TYPES = ("nvidia.com/gpu", "amd.com/gpu")  # what torch's CUDA/ROCm build and NCCL/RCCL drive
TOLERATION_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")
SHARED_MOUNT = "/kftune/shared"


@dataclass(frozen=True)
class TrainResources:
    """What the train task asks the cluster for (ignored by local runs)."""

    gpus: int = 1
    accelerator_type: str = "nvidia.com/gpu"
    cpu: str = "4"
    memory: str = "16G"
    shm_size: str = "8Gi"
    """Size of the memory-backed /dev/shm (NCCL and data loading need more than the 64M default)."""
    node_selector: tuple[tuple[str, str], ...] = ()
    """(label, value) pairs the train pod's node must carry, e.g. (("nvidia.com/gpu.product", "H100"),)."""
    tolerations: tuple[str, ...] = ()
    """Taints the train pod tolerates, as ``key[=value]:Effect``, e.g. ``nvidia.com/gpu:NoSchedule``."""
    shared_pvc: str = "kftune-shared"
    """PVC mounted at /kftune/shared in the train task: checkpoints (and multi-node data) outlive
    the pod there. Empty: no volume, checkpoints live and die with the pod."""
    retries: int = 2
    """KFP retries of a failed (e.g. preempted) train task; each resumes from the newest checkpoint."""

    def validate(self) -> None:
        if self.gpus < 0:
            raise ConfigError(f"gpus must be >= 0, got {self.gpus}")
        if self.gpus and self.accelerator_type not in ACCELERATOR_TYPES:
            raise ConfigError(
                f"unknown accelerator type {self.accelerator_type!r}: kftune trains on {', '.join(ACCELERATOR_TYPES)}"
            )
        for toleration in self.tolerations:
            parse_toleration(toleration)
        if self.retries < 0:
            raise ConfigError(f"retries must be >= 0, got {self.retries}")

    def apply(self, task: dsl.PipelineTask) -> None:
        self.validate()
        task.set_cpu_request(self.cpu).set_cpu_limit(self.cpu)
        task.set_memory_request(self.memory).set_memory_limit(self.memory)
        if self.gpus:
            task.set_accelerator_type(self.accelerator_type).set_accelerator_limit(self.gpus)
        if self.shm_size:
            kubernetes.empty_dir_mount(task, volume_name="dshm", mount_path="/dev/shm", medium="Memory",
                                       size_limit=self.shm_size)
        for key, value in self.node_selector:
            kubernetes.add_node_selector(task, label_key=key, label_value=value)
        for toleration in self.tolerations:
            kubernetes.add_toleration(task, **parse_toleration(toleration))
        if self.shared_pvc:
            kubernetes.mount_pvc(task, pvc_name=self.shared_pvc, mount_path=SHARED_MOUNT)
        if self.retries:
            task.set_retry(num_retries=self.retries, backoff_duration="30s")

    def trainjob_placement(self) -> str:
        """The same per-node resources and placement for the nodes of a multi-node TrainJob (JSON)."""
        return json.dumps({
            "cpu": self.cpu, "memory": self.memory, "node_selector": dict(self.node_selector),
            "tolerations": [parse_toleration(t) for t in self.tolerations],
        }, sort_keys=True)


@dataclass(frozen=True)
class StorageAccess:
    """Where the tasks that read or write object storage (preprocess, train, publish; in the tune
    pipeline also the search tasks) get credentials.

    Only Secret names and key names reach the compiled YAML; Kubernetes injects the values when
    the pod starts. The Secrets are mounted as optional, so a run whose data and models stay
    local or public starts even where a Secret is missing. The defaults fit a Kubeflow
    installation: its object store (SeaweedFS since KFP 2.15, MinIO before; S3 on
    ``seaweedfs.kubeflow:9000``, ``minio-service.kubeflow:9000`` on older installs) and the
    ``mlpipeline-minio-artifact`` Secret that KFP copies into every profile namespace.
    """

    s3_secret: str = "mlpipeline-minio-artifact"
    """Secret with the S3/MinIO access key and secret key ("": no S3 credentials)."""
    s3_access_key_field: str = "accesskey"
    s3_secret_key_field: str = "secretkey"
    s3_endpoint: str = "http://seaweedfs.kubeflow:9000"
    """S3 endpoint the tasks use ("": AWS S3, or whatever AWS_ENDPOINT_URL the image sets)."""
    s3_region: str = ""
    gcs_secret: str = ""
    """Secret holding a GCS service-account key file ``key.json`` ("": none, e.g. Workload Identity)."""

    def apply(self, task: dsl.PipelineTask) -> None:
        if self.s3_secret:
            use_s3_secret(task, self.s3_secret, self.s3_access_key_field, self.s3_secret_key_field,
                          endpoint=self.s3_endpoint or None, region=self.s3_region or None, optional=True)
        elif self.s3_endpoint:
            task.set_env_variable("AWS_ENDPOINT_URL", self.s3_endpoint)
        if self.gcs_secret:
            use_gcs_secret(task, self.gcs_secret, optional=True)


def parse_toleration(text: str) -> dict:
    """``key[=value]:Effect`` -> arguments of ``kfp.kubernetes.add_toleration``."""
    key_value, _, effect = text.rpartition(":")
    if not key_value or effect not in TOLERATION_EFFECTS:
        raise ConfigError(f"toleration {text!r}: expected key[=value]:Effect with Effect one of "
                          f"{', '.join(TOLERATION_EFFECTS)}")
    key, has_value, value = key_value.partition("=")
    if has_value:
        return {"key": key, "operator": "Equal", "value": value, "effect": effect}
    return {"key": key, "operator": "Exists", "effect": effect}


def build_finetune_pipeline(images: ImageScheme = ImageScheme(), resources: TrainResources = TrainResources(),
                            storage: StorageAccess = StorageAccess()):
    """The finetune pipeline with its components in ``images``, training on ``resources`` and
    storage credentials from the Secrets named in ``storage``."""
    resources.validate()
    preprocess_op = preprocess_component.component(images)
    train_op = train_component.component(images)
    evaluate_op = evaluate_component.component(images)
    export_op = export_component.component(images)
    publish_op = publish_component.component(images)
    deploy_op = deploy_component.component(images)

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
    def finetune(
        data: str = "bundled:rotten-tomatoes",
        text_column: str = "text",
        label_column: str = "label",
        data_format: str = "auto",
        model: str = "bundled:all-MiniLM-L6-v2",
        max_seq_length: int = 128,
        max_rows: int = 0,
        validation_fraction: float = 0.1,
        test_fraction: float = 0.1,
        augment_copies: int = 0,
        seed: int = 42,
        learning_rate: float = 1e-4,
        num_train_epochs: int = 3,
        per_device_train_batch_size: int = 32,
        gradient_accumulation_steps: int = 1,
        warmup_ratio: float = 0.1,
        weight_decay: float = 0.01,
        group_by_length: bool = False,
        mixed_precision: str = "auto",
        metric_for_best_model: str = "f1_macro",
        early_stopping_patience: int = 2,
        training_mode: str = "full",
        lora_r: int = 8,
        lora_alpha: int = 16,
        lora_dropout: float = 0.1,
        lora_target_modules: str = "",
        num_virtual_tokens: int = 20,
        nproc_per_node: int = 0,
        max_steps: int = 0,
        save_steps: int = 500,
        num_nodes: int = 1,
        gpus_per_node: int = 1,
        min_accuracy: float = 0.8,
        min_f1_macro: float = 0.0,
        min_gain_over_baseline: float = 0.0,
        quantize_int8: bool = True,
        publish_uri: str = "",
        deploy_name: str = "",
        deploy_namespace: str = "",
        serving_runtime: str = "kftune-onnx",
        serving_service_account: str = "kftune-serving",
        serving_min_replicas: int = 1,
        serving_max_replicas: int = 1,
        canary_traffic_percent: int = -1,
        serving_cpu: str = "1",
        serving_memory: str = "2Gi",
    ) -> Outputs:
        """Fine-tune a pretrained transformer for text classification.

        Args:
            data: Labelled text: a CSV/TSV/JSONL/Parquet file, a directory of such shards or a datasets.save_to_disk directory, local or s3://bucket/path or gs://bucket/path (credentials from the environment), or bundled:rotten-tomatoes (Rotten Tomatoes reviews, positive/negative).
            text_column: Column holding the text.
            label_column: Column holding the label (strings or integers, two or more classes).
            data_format: auto (from the file name), csv, tsv, jsonl, parquet or hf-disk.
            model: Pretrained model: a Hugging Face model directory, local or at s3://bucket/prefix or gs://bucket/prefix, bundled:all-MiniLM-L6-v2, or a hub id where the hub is reachable.
            max_seq_length: Texts are truncated to this many tokens.
            max_rows: Use a stratified sample of this many cleaned rows (0 uses all); for quick runs.
            validation_fraction: Share of rows in the validation split (picks the best epoch).
            test_fraction: Share of rows in the test split (final scores).
            augment_copies: Noisy copies (word deletion/swap/replacement) added per training example; 0 is off.
            seed: Seed of the split, initialisation and batch order.
            learning_rate: Peak AdamW learning rate (linear warmup, then linear decay).
            num_train_epochs: Passes over the training split.
            per_device_train_batch_size: Examples per training process per micro-batch.
            gradient_accumulation_steps: Micro-batches per optimizer step.
            warmup_ratio: Share of optimizer steps spent warming the learning rate up.
            weight_decay: AdamW weight decay.
            group_by_length: Batch texts of similar length together: 1.5x faster on a CPU, off by default as it has not been shown to keep accuracy.
            mixed_precision: auto (bf16 where fast, else fp16 with loss scaling on GPUs, else fp32), bf16, fp16 or no.
            metric_for_best_model: Validation metric that picks the best epoch: f1_macro, accuracy or loss.
            early_stopping_patience: Stop after this many epochs without improvement (0 never stops early).
            training_mode: full fine-tuning, freeze_encoder (train the head only), lora or prompt_tuning (peft).
            lora_r: LoRA rank (training_mode lora).
            lora_alpha: LoRA alpha; the update is scaled by alpha / r.
            lora_dropout: Dropout on the LoRA branch.
            lora_target_modules: Comma-separated module names LoRA adapts (empty: peft's default for the model).
            num_virtual_tokens: Prompt tuning: trained virtual tokens prepended to each input.
            nproc_per_node: Training processes per node: 0 = one per GPU (or 1 on CPU).
            max_steps: Stop training after this many optimizer steps (0: no limit).
            save_steps: Checkpoint every this many optimizer steps and at each epoch end (0: epoch ends only).
            num_nodes: Nodes to train on; above 1 the train step submits a Kubeflow Trainer TrainJob.
            gpus_per_node: GPUs per node of that TrainJob (num_nodes > 1).
            min_accuracy: Gate: minimum test accuracy.
            min_f1_macro: Gate: minimum test macro F1.
            min_gain_over_baseline: Gate: minimum test accuracy gain over the TF-IDF baseline.
            quantize_int8: Also export an int8 dynamically quantized ONNX model.
            publish_uri: When the gate passes, publish the ONNX model as the next version (v1, v2, ...; latest moves to it) under this s3://bucket/prefix, gs://bucket/prefix or path. Empty: don't publish.
            deploy_name: When the gate passes and the model is published, create or update the KServe InferenceService of this name to serve it. Empty: don't deploy.
            deploy_namespace: Namespace of the InferenceService (empty: the pipeline's own namespace).
            serving_runtime: KServe ServingRuntime that serves kftune ONNX models (manifests/ installs kftune-onnx).
            serving_service_account: Service account of the predictor; it carries the storage credentials KServe downloads the model with.
            serving_min_replicas: Minimum predictor replicas (0 lets KServe scale to zero).
            serving_max_replicas: Maximum predictor replicas.
            canary_traffic_percent: On an update, the share of traffic the new model gets (0-100); -1 sends it all.
            serving_cpu: CPU request and limit of each predictor replica.
            serving_memory: Memory request and limit of each predictor replica.
        """
        prep = preprocess_op(
            data=data, text_column=text_column, label_column=label_column, data_format=data_format,
            model=model, max_seq_length=max_seq_length, max_rows=max_rows,
            validation_fraction=validation_fraction, test_fraction=test_fraction, seed=seed,
            augment_copies=augment_copies,
        )
        prep.set_display_name("preprocess").set_cpu_request("1").set_memory_request("4G")
        storage.apply(prep)  # data and the pretrained model may come from s3:// or gs://

        trained = train_op(
            dataset=prep.outputs["dataset"], base_model=model, learning_rate=learning_rate,
            num_train_epochs=num_train_epochs, per_device_train_batch_size=per_device_train_batch_size,
            gradient_accumulation_steps=gradient_accumulation_steps, warmup_ratio=warmup_ratio,
            weight_decay=weight_decay, seed=seed, group_by_length=group_by_length, mixed_precision=mixed_precision,
            metric_for_best_model=metric_for_best_model, early_stopping_patience=early_stopping_patience,
            training_mode=training_mode, lora_r=lora_r, lora_alpha=lora_alpha, lora_dropout=lora_dropout,
            lora_target_modules=lora_target_modules, num_virtual_tokens=num_virtual_tokens,
            nproc_per_node=nproc_per_node, max_steps=max_steps, save_steps=save_steps, num_nodes=num_nodes,
            gpus_per_node=gpus_per_node, shared_dir=SHARED_MOUNT if resources.shared_pvc else "",
            shared_pvc=resources.shared_pvc, run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
            trainjob_image=images.image("train"), trainjob_placement=resources.trainjob_placement(),
        )
        trained.set_display_name("train")
        resources.apply(trained)
        storage.apply(trained)  # the pretrained model may come from s3:// or gs://

        scored = evaluate_op(
            dataset=prep.outputs["dataset"], model=trained.outputs["model"], min_accuracy=min_accuracy,
            min_f1_macro=min_f1_macro, min_gain_over_baseline=min_gain_over_baseline,
        )
        scored.set_display_name("evaluate").set_cpu_request("2").set_memory_request("8G")

        exported = export_op(
            dataset=prep.outputs["dataset"], model=trained.outputs["model"], quantize_int8=quantize_int8
        )
        exported.set_display_name("export").set_cpu_request("2").set_memory_request("8G")

        with dsl.If(scored.outputs["Output"] == True, name="gate-passed"):  # noqa: E712 (a KFP condition)
            with dsl.If(publish_uri != "", name="publish-requested"):
                published = publish_op(model=exported.outputs["onnx_model"], uri=publish_uri)
                published.set_display_name("publish").set_cpu_request("1").set_memory_request("2G")
                published.set_retry(num_retries=2, backoff_duration="30s")
                storage.apply(published)
                with dsl.If(deploy_name != "", name="deploy-requested"):
                    deployed = deploy_op(
                        model_uri=published.outputs["Output"], name=deploy_name, namespace=deploy_namespace,
                        runtime=serving_runtime, service_account=serving_service_account,
                        min_replicas=serving_min_replicas, max_replicas=serving_max_replicas,
                        canary_traffic_percent=canary_traffic_percent, cpu=serving_cpu, memory=serving_memory,
                    )
                    deployed.set_display_name("deploy").set_cpu_request("250m").set_memory_request("512M")

        return Outputs(
            model=trained.outputs["model"],
            onnx_model=exported.outputs["onnx_model"],
            evaluation=scored.outputs["metrics"],
            passed=scored.outputs["Output"],
        )

    return finetune


finetune = build_finetune_pipeline()
