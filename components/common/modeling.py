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


def auto_model_class(task=None):
    """The transformers ``AutoModelFor...`` class of an encoder task (sequence classification by default)."""
    import transformers

    return getattr(transformers, task.auto_model if task is not None else "AutoModelForSequenceClassification")


def build_classifier(config, head: dict, model_path: str, task=None):
    """The model to train for ``config.training_mode`` (a TrainConfig), on top of ``model_path``, with the head
    ``head`` describes (``num_labels``, ``id2label``, ``label2id``, ``problem_type``: the task's ``head(info)``)."""
    model = auto_model_class(task).from_pretrained(model_path, ignore_mismatched_sizes=True, **head)
    peft_type = task.peft_task_type if task is not None else "SEQ_CLS"
    mode = config.training_mode
    if mode == "freeze_encoder":
        for param in model.base_model.parameters():
            param.requires_grad = False
    elif mode == "lora":
        from peft import LoraConfig, TaskType, get_peft_model

        lora = LoraConfig(
            task_type=TaskType[peft_type],
            r=config.lora_r,
            lora_alpha=config.lora_alpha,
            lora_dropout=config.lora_dropout,
            target_modules=config.lora_targets(),
        )
        model = get_peft_model(model, lora)
    elif mode == "prompt_tuning":
        from peft import PromptTuningConfig, TaskType, get_peft_model

        model = get_peft_model(
            model, PromptTuningConfig(task_type=TaskType[peft_type], num_virtual_tokens=config.num_virtual_tokens)
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


def load_classifier(directory: str | Path, task=None):
    """The trained model of an encoder ``task`` in ``directory`` (plain or prompt-tuned), in eval mode."""
    auto = auto_model_class(task)
    directory = Path(directory)
    if not is_adapter(directory):
        return auto.from_pretrained(str(directory)).eval()
    from peft import PeftModel

    base = auto.from_pretrained(str(directory / BASE_MODEL_DIR))
    return PeftModel.from_pretrained(base, str(directory)).eval()
