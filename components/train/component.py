"""KFP component: fine-tune with torchrun, or across nodes as a Kubeflow Trainer TrainJob
(thin layer over launch.py / loop.py / trainjob.py)."""

from kfp import dsl
from kfp.dsl import HTML, Dataset, Input, Metrics, Model, Output

from kftune.components.common.images import ImageScheme


def train(
    dataset: Input[Dataset],
    model: Output[Model],
    metrics: Output[Metrics],
    curves: Output[HTML],
    base_model: str = "bundled:all-MiniLM-L6-v2",
    learning_rate: float = 1e-4,
    num_train_epochs: int = 3,
    per_device_train_batch_size: int = 32,
    gradient_accumulation_steps: int = 1,
    warmup_ratio: float = 0.1,
    weight_decay: float = 0.01,
    seed: int = 42,
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
    max_restarts: int = 0,
    num_nodes: int = 1,
    gpus_per_node: int = 1,
    shared_dir: str = "",
    shared_pvc: str = "",
    run_id: str = "local",
    trainjob_image: str = "",
    trainjob_runtime: str = "torch-distributed",
    trainjob_placement: str = "{}",
    namespace: str = "",
    hyperparameters: dict = {},
    train_on: str = "train",
) -> str:
    """Fine-tune a pretrained transformer for sequence classification under torchrun.

    Args:
        dataset: Tokenized splits from preprocess.
        model: Output: the best checkpoint as a Hugging Face model directory (safetensors, tokenizer, label maps).
        metrics: Output: best epoch, validation scores, throughput.
        curves: Output: HTML training curves.
        base_model: Pretrained model: local Hugging Face directory, bundled name or hub id.
        learning_rate: Peak AdamW learning rate (linear warmup, then linear decay).
        num_train_epochs: Passes over the training split.
        per_device_train_batch_size: Examples per process per micro-batch.
        gradient_accumulation_steps: Micro-batches per optimizer step.
        warmup_ratio: Share of optimizer steps spent warming the learning rate up.
        weight_decay: AdamW weight decay (not applied to biases and LayerNorm).
        seed: Seed of initialisation and batch order; the same seed gives the same model.
        group_by_length: Batch texts of similar length together: 1.5x faster on a CPU, off by default as it has not been shown to keep accuracy.
        mixed_precision: auto (bf16 where fast, fp16 with loss scaling on GPUs without bf16), bf16, fp16 or no.
        metric_for_best_model: Validation metric that picks the best epoch: f1_macro, accuracy or loss.
        early_stopping_patience: Stop after this many epochs without improvement (0 never stops early).
        training_mode: full, freeze_encoder (head only), lora or prompt_tuning.
        lora_r: LoRA rank.
        lora_alpha: LoRA scaling numerator (scale = alpha / r).
        lora_dropout: Dropout on the LoRA branch.
        lora_target_modules: Comma-separated module names LoRA adapts (empty: peft's default for the model).
        num_virtual_tokens: Prompt tuning: trained virtual tokens prepended to each input.
        nproc_per_node: Training processes per node: 0 = one per visible GPU, or 1 on CPU.
        max_steps: Stop after this many optimizer steps (0: no limit); for smoke tests.
        save_steps: Checkpoint every this many optimizer steps, and at each epoch end (0: epoch ends only).
        max_restarts: torchrun restarts of failed workers, each resuming from the newest checkpoint.
        num_nodes: Nodes to train on; above 1 the training runs as a Kubeflow Trainer TrainJob.
        gpus_per_node: GPUs per node of the TrainJob (num_nodes > 1 only).
        shared_dir: Mount path of a volume that outlives the pod (checkpoints, TrainJob data); empty: none.
        shared_pvc: The PersistentVolumeClaim mounted at shared_dir (the TrainJob mounts it too).
        run_id: Identifies the pipeline run; checkpoints go to shared_dir/checkpoints/run_id so retries resume.
        trainjob_image: Image of the TrainJob's workers (the train image).
        trainjob_runtime: Kubeflow Trainer runtime the TrainJob refers to.
        trainjob_placement: JSON with the TrainJob nodes' cpu, memory, node_selector and tolerations.
        namespace: Namespace of the TrainJob (empty: this pod's namespace).
        hyperparameters: Values that replace the options above, e.g. the best trial of a search ({"learning_rate": 5e-5}).
        train_on: train, or train+validation (keeps the last epoch; validation scores are then on seen data).

    Returns:
        The TrainJob's handle as JSON (name, namespace, uid, final status, duration) when
        num_nodes > 1, else "{}".
    """
    import json
    import logging
    from pathlib import Path

    from kftune.components.common.training.config import TrainConfig
    from kftune.components.common.training.launch import launch_training, shared_checkpoint_dir
    from kftune.components.train.report import curves_html, history_metrics

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = TrainConfig(
        model=base_model, learning_rate=learning_rate, num_train_epochs=num_train_epochs,
        per_device_train_batch_size=per_device_train_batch_size,
        gradient_accumulation_steps=gradient_accumulation_steps, warmup_ratio=warmup_ratio,
        weight_decay=weight_decay, seed=seed, group_by_length=group_by_length, mixed_precision=mixed_precision,
        metric_for_best_model=metric_for_best_model, early_stopping_patience=early_stopping_patience,
        training_mode=training_mode, lora_r=lora_r, lora_alpha=lora_alpha, lora_dropout=lora_dropout,
        lora_target_modules=lora_target_modules, num_virtual_tokens=num_virtual_tokens,
        nproc_per_node=nproc_per_node, max_steps=max_steps, save_steps=save_steps, max_restarts=max_restarts,
        checkpoint_dir=shared_checkpoint_dir(shared_dir, run_id), train_on=train_on,
    )
    if hyperparameters:
        from kftune.components.common.training.search_space import apply_hyperparameters

        config = apply_hyperparameters(config, hyperparameters)
    handle = {}
    if num_nodes > 1:
        from kftune.components.train.trainjob import launch_multinode

        result = launch_multinode(
            config, dataset.path, model.path, num_nodes=num_nodes, gpus_per_node=gpus_per_node,
            image=trainjob_image, namespace=namespace or None, pvc_name=shared_pvc, mount_path=shared_dir,
            runtime=trainjob_runtime, **json.loads(trainjob_placement),
        )
        history, handle = result["history"], result["trainjob"]
        model.metadata["trainjob"] = handle
    else:
        history = launch_training(config, dataset.path, model.path)
    for name, value in history_metrics(history).items():
        metrics.log_metric(name, value)
    Path(curves.path).write_text(curves_html(history), encoding="utf-8")
    model.metadata.update({"framework": "pytorch", "format": "huggingface", "base_model": base_model,
                           "training_mode": training_mode, "best_epoch": history["best_epoch"]})
    return json.dumps(handle, sort_keys=True)


def component(images: ImageScheme = ImageScheme()):
    """The train component running in its image under ``images``."""
    return dsl.component(train, base_image=images.image("train"), install_kfp_package=False)
