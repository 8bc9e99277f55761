"""Building, saving and loading an encoder with a task's head, in each training mode.

``full`` and ``freeze_encoder`` train a plain ``AutoModelFor...`` (the task's ``auto_model``:
sequence or token classification); ``lora`` and ``prompt_tuning`` wrap it with ``peft``. What
training writes is always loadable by :func:`load_encoder_model`:

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
    """The transformers ``AutoModelFor...`` class of an encoder task (sequence classification without one)."""
    import transformers

    return getattr(transformers, task.auto_model if task is not None else "AutoModelForSequenceClassification")


def build_encoder_model(config, head: dict, model_path: str, task=None):
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
        model = task.wrap_prompt_tuned(model) if task is not None else model
    return model


def keep_text_positions(model):
    """``model`` (prompt-tuned, with a per-token head) with logits, and loss, for the text's own positions only.

    Prompt tuning puts its virtual tokens before the text, so a per-token head also scores them; the hooks
    drop those leading positions, so that logits line up with ``input_ids`` and labels in training,
    validation, inference and the exported graph alike, and compute the head's cross-entropy on them (the
    base model would compare labels with the longer logits)."""
    import torch

    labels = {}

    def before(module, args, kwargs):
        labels["batch"] = kwargs.pop("labels", None)
        return args, kwargs

    def after(module, args, kwargs, output):
        text = kwargs.get("input_ids")
        if text is None:
            text = kwargs.get("inputs_embeds") if args == () else args[0]
        output.logits = output.logits[:, -text.shape[1]:]
        target = labels.pop("batch", None)
        if target is not None:
            output.loss = torch.nn.functional.cross_entropy(output.logits.flatten(0, 1).float(), target.flatten())
        return output

    model.register_forward_pre_hook(before, with_kwargs=True)
    model.register_forward_hook(after, with_kwargs=True)
    return model


def trainable_parameters(model) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())


def save_encoder_model(model, directory: Path, training_mode: str) -> None:
    """Write ``model`` (as trained) into ``directory`` in the layout :func:`load_encoder_model` reads."""
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


def load_encoder_model(directory: str | Path, task=None):
    """The trained model of an encoder ``task`` in ``directory`` (plain or prompt-tuned), in eval mode."""
    auto = auto_model_class(task)
    directory = Path(directory)
    if not is_adapter(directory):
        return auto.from_pretrained(str(directory)).eval()
    from peft import PeftModel

    base = auto.from_pretrained(str(directory / BASE_MODEL_DIR))
    model = PeftModel.from_pretrained(base, str(directory)).eval()
    return task.wrap_prompt_tuned(model) if task is not None else model
