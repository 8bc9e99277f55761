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
COMPUTE_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "no": torch.float32}
"""The dtype QLoRA's 4-bit layers compute in, for each training precision: the one autocast computes the rest in (a
GPU without native bf16 trains in fp16; bf16 there would be emulated)."""
CHECKPOINTING_KWARGS = {"use_reentrant": False}
"""Activation checkpointing's recompute: non-reentrant, as torch recommends. Its default when not told (reentrant,
with a warning) recomputes nothing unless an input requires grad, and is fragile under DDP (its recompute runs
inside the backward pass, where DDP's gradient hooks are firing)."""


def quantization_config(precision: str):
    """QLoRA's 4-bit base (NF4, double quantisation) as bitsandbytes loads it, computing in the training precision's
    dtype (:data:`COMPUTE_DTYPES`); ``precision`` as resolved (bf16, fp16 or no)."""
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=COMPUTE_DTYPES[precision])


def build_causal_lm(config, model_path: str, device: torch.device, precision: str):
    """The causal LM to train for ``config.training_mode`` (full, lora or qlora) in ``precision`` (the resolved
    autocast precision: bf16, fp16 or no)."""
    from transformers import AutoModelForCausalLM

    mode = config.training_mode
    kwargs: dict = {"dtype": torch.float32}
    if mode == "qlora":
        if device.type != "cuda":
            raise ConfigError("training_mode qlora quantizes the base model with bitsandbytes on a CUDA GPU; on a CPU "
                              "use lora")
        kwargs = {"quantization_config": quantization_config(precision), "device_map": {"": device.index or 0}}
    model = AutoModelForCausalLM.from_pretrained(model_path, **kwargs)
    model.config.use_cache = False
    model = prepare_for_training(model, config)
    if mode in PEFT_MODES:
        from peft import LoraConfig, TaskType, get_peft_model

        lora = LoraConfig(task_type=TaskType.CAUSAL_LM, r=config.lora_r, lora_alpha=config.lora_alpha,
                          lora_dropout=config.lora_dropout, target_modules=config.lora_targets() or "all-linear")
        model = get_peft_model(model, lora)
    return model


def prepare_for_training(model, config):
    """``model`` as loaded, readied for training before any adapter wraps it: for qlora peft's preparation of a
    quantised base (frozen, norms in fp32); activation checkpointing (non-reentrant) where
    ``config.gradient_checkpointing`` asks for it."""
    if config.training_mode == "qlora":
        from peft import prepare_model_for_kbit_training

        return prepare_model_for_kbit_training(model, use_gradient_checkpointing=config.gradient_checkpointing,
                                               gradient_checkpointing_kwargs=dict(CHECKPOINTING_KWARGS))
    if config.gradient_checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=dict(CHECKPOINTING_KWARGS))
        if config.training_mode in PEFT_MODES:
            model.enable_input_require_grads()
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
