"""KFP component: fine-tune with torchrun (thin layer over launch.py / loop.py)."""

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
    group_by_length: bool = True,
    bf16: str = "auto",
    metric_for_best_model: str = "f1_macro",
    early_stopping_patience: int = 2,
    freeze_encoder: bool = False,
    nproc_per_node: int = 0,
    max_steps: int = 0,
):
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
        group_by_length: Batch texts of similar length together (less padding, faster).
        bf16: bf16 autocast: auto (where the hardware is fast at it), true or false.
        metric_for_best_model: Validation metric that picks the best epoch: f1_macro, accuracy or loss.
        early_stopping_patience: Stop after this many epochs without improvement (0 never stops early).
        freeze_encoder: Train only the classification head (feature extraction).
        nproc_per_node: Training processes: 0 = one per visible GPU, or 1 on CPU.
        max_steps: Stop after this many optimizer steps (0: no limit); for smoke tests.
    """
    from pathlib import Path

    from kftune.components.train.config import TrainConfig
    from kftune.components.train.launch import launch_training
    from kftune.components.train.report import curves_html, history_metrics

    config = TrainConfig(
        model=base_model, learning_rate=learning_rate, num_train_epochs=num_train_epochs,
        per_device_train_batch_size=per_device_train_batch_size,
        gradient_accumulation_steps=gradient_accumulation_steps, warmup_ratio=warmup_ratio,
        weight_decay=weight_decay, seed=seed, group_by_length=group_by_length, bf16=bf16,
        metric_for_best_model=metric_for_best_model, early_stopping_patience=early_stopping_patience,
        freeze_encoder=freeze_encoder, nproc_per_node=nproc_per_node, max_steps=max_steps,
    )
    history = launch_training(config, dataset.path, model.path)
    for name, value in history_metrics(history).items():
        metrics.log_metric(name, value)
    Path(curves.path).write_text(curves_html(history), encoding="utf-8")
    model.metadata.update({"framework": "pytorch", "format": "huggingface", "base_model": base_model,
                           "best_epoch": history["best_epoch"]})


def component(images: ImageScheme = ImageScheme()):
    """The train component running in its image under ``images``."""
    return dsl.component(train, base_image=images.image("train"), install_kfp_package=False)
