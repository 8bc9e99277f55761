"""Causal language models in each training mode: building the model to train, writing what training made of it,
loading a trained or exported one.

``full`` trains every weight of an ``AutoModelForCausalLM``; ``lora`` wraps it with peft (all linear layers
unless ``lora_target_modules`` names others); ``qlora`` loads the base in 4 bits with bitsandbytes first (CUDA
only). What training writes is the merged model (LoRA folded into the base weights: an ordinary Hugging Face
model) and, for LoRA, the adapter alone in ``adapter/``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from kftune.errors import ConfigError

ADAPTER_DIR = "adapter"
PEFT_MODES = ("lora", "qlora")


def build_causal_lm(config, model_path: str, device: torch.device):
    """The causal LM to train for ``config.training_mode`` (full, lora or qlora)."""
    from transformers import AutoModelForCausalLM

    mode = config.training_mode
    kwargs: dict = {"dtype": torch.float32}
    if mode == "qlora":
        if device.type != "cuda":
            raise ConfigError("training_mode qlora quantizes the base model with bitsandbytes on a CUDA GPU; on a CPU "
                              "use lora")
        from transformers import BitsAndBytesConfig

        kwargs = {"quantization_config": BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16), "device_map": {"": device.index or 0}}
    model = AutoModelForCausalLM.from_pretrained(model_path, **kwargs)
    model.config.use_cache = False
    if mode == "qlora":
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=config.gradient_checkpointing)
    elif config.gradient_checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        if mode in PEFT_MODES:
            model.enable_input_require_grads()
    if mode in PEFT_MODES:
        from peft import LoraConfig, TaskType, get_peft_model

        lora = LoraConfig(task_type=TaskType.CAUSAL_LM, r=config.lora_r, lora_alpha=config.lora_alpha,
                          lora_dropout=config.lora_dropout, target_modules=config.lora_targets() or "all-linear")
        model = get_peft_model(model, lora)
    return model


def save_causal_lm(model, directory: Path, config, base_path: str) -> None:
    """The merged model in ``directory``; for LoRA the adapter alone in ``directory/adapter``."""
    if config.training_mode not in PEFT_MODES:
        model.save_pretrained(str(directory), safe_serialization=True)
        return
    model.save_pretrained(str(directory / ADAPTER_DIR), safe_serialization=True)
    if config.training_mode == "qlora":  # merge into the full-precision base, not the 4-bit one
        from peft import PeftModel
        from transformers import AutoModelForCausalLM

        base = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
        model = PeftModel.from_pretrained(base, str(directory / ADAPTER_DIR))
    merged = model.merge_and_unload()
    merged.config.use_cache = True
    merged.save_pretrained(str(directory), safe_serialization=True)


def load_causal_lm(directory: str | Path):
    """(model in eval mode, fp32; tokenizer) from a Hugging Face directory."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(directory), dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(str(directory))
