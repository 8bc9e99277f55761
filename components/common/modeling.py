"""Building, saving and loading the classifier in each training mode.

``full`` and ``freeze_encoder`` train a plain ``AutoModelForSequenceClassification``; ``lora``
and ``prompt_tuning`` wrap it with ``peft``. What training writes is always loadable by
:func:`load_classifier`:

- full / freeze_encoder / lora: a plain Hugging Face model directory (LoRA weights merged
  into the base weights, so evaluation, ONNX export and serving see an ordinary model);
- prompt_tuning: the peft adapter (virtual-token embeddings + classification head) in the
  directory, and the base model it applies to in ``base_model/`` beside it, so the
  directory is self-contained.
"""

from __future__ import annotations

from pathlib import Path

ADAPTER_CONFIG = "adapter_config.json"
BASE_MODEL_DIR = "base_model"


def build_classifier(config, num_labels: int, id2label: dict, label2id: dict, model_path: str):
    """The model to train for ``config.training_mode`` (a TrainConfig), on top of ``model_path``."""
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(
        model_path, num_labels=num_labels, id2label=id2label, label2id=label2id, ignore_mismatched_sizes=True
    )
    mode = config.training_mode
    if mode == "freeze_encoder":
        for param in model.base_model.parameters():
            param.requires_grad = False
    elif mode == "lora":
        from peft import LoraConfig, TaskType, get_peft_model

        lora = LoraConfig(
            task_type=TaskType.SEQ_CLS,
            r=config.lora_r,
            lora_alpha=config.lora_alpha,
            lora_dropout=config.lora_dropout,
            target_modules=config.lora_targets(),
        )
        model = get_peft_model(model, lora)
    elif mode == "prompt_tuning":
        from peft import PromptTuningConfig, TaskType, get_peft_model

        model = get_peft_model(
            model, PromptTuningConfig(task_type=TaskType.SEQ_CLS, num_virtual_tokens=config.num_virtual_tokens)
        )
    return model


def trainable_parameters(model) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())


def save_classifier(model, directory: Path, training_mode: str) -> None:
    """Write ``model`` (as trained) into ``directory`` in the layout :func:`load_classifier` reads."""
    if training_mode == "lora":
        model = model.merge_and_unload()
    if training_mode == "prompt_tuning":
        model.save_pretrained(str(directory), safe_serialization=True)
        # The adapter holds the virtual tokens and the trained head (peft's modules_to_save copy);
        # the base model is saved with its original head, unwrapped.
        base = model.get_base_model()
        state = {
            name.replace(".original_module.", "."): tensor
            for name, tensor in base.state_dict().items()
            if ".modules_to_save." not in name
        }
        base.save_pretrained(str(directory / BASE_MODEL_DIR), state_dict=state, safe_serialization=True)
        return
    model.save_pretrained(str(directory), safe_serialization=True)


def is_adapter(directory: str | Path) -> bool:
    return (Path(directory) / ADAPTER_CONFIG).is_file()


def load_classifier(directory: str | Path):
    """The trained classifier in ``directory`` (plain or prompt-tuned), in eval mode."""
    from transformers import AutoModelForSequenceClassification

    directory = Path(directory)
    if not is_adapter(directory):
        return AutoModelForSequenceClassification.from_pretrained(str(directory)).eval()
    from peft import PeftModel

    base = AutoModelForSequenceClassification.from_pretrained(str(directory / BASE_MODEL_DIR))
    return PeftModel.from_pretrained(base, str(directory)).eval()
