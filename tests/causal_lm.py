"""A tiny random causal-LM export for tests: what a causal-LM run's export step writes, in a second.

The model is a randomly initialised LlamaForCausalLM (hidden 32, 2 layers) with the bundled
SmolLM2-135M-Instruct tokenizer (vocabulary 49152, ChatML chat template, eos ``<|im_end|>``),
so prompts, chat templates and decoding are the real ones while generation costs nothing. Its
text is gibberish, but deterministic: the same seed gives the same weights.
"""

from __future__ import annotations

import json
from pathlib import Path

TASK = "causal-lm"
MAX_SEQ_LENGTH = 128
MAX_NEW_TOKENS = 12


def make_tiny_causal_lm(path: Path, seed: int = 0) -> Path:
    """A 2-layer, 32-wide Llama with the bundled SmolLM2's tokenizer (and chat template), random weights."""
    import torch
    from transformers import AutoTokenizer, GenerationConfig, LlamaConfig, LlamaForCausalLM

    from kftune.data.bundled import bundled_causal_lm_dir

    tokenizer = AutoTokenizer.from_pretrained(bundled_causal_lm_dir())
    ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
           "pad_token_id": tokenizer.pad_token_id}
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512,
                         tie_word_embeddings=True, **ids)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(**ids)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return Path(path)


def tiny_causal_lm_export(directory: Path, seed: int = 0) -> Path:
    """Write a causal-LM export directory (model, tokenizer, ``export_report.json``) into ``directory``."""
    directory = make_tiny_causal_lm(Path(directory), seed)
    report = {"task": TASK, "max_seq_length": MAX_SEQ_LENGTH, "max_new_tokens": MAX_NEW_TOKENS}
    (directory / "export_report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return directory


def make_preamble_lm(path: Path, text: str) -> Path:
    """A 2-layer Llama (the bundled SmolLM2 tokenizer) that answers every prompt with ``text`` and then stops, whatever
    was asked: its layers add nothing to the residual stream (zero output projections), so each next token is decided
    by the current one alone, and its embeddings and head chain the tokens of ``text`` after the generation prompt's
    last token. A base model that states its answer after a preamble, deterministically."""
    import torch

    from kftune.data.chat import render

    path = make_tiny_causal_lm(Path(path))
    from transformers import AutoTokenizer, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(path)
    start = tokenizer(render(tokenizer, [{"role": "user", "content": "?"}], generation_prompt=True),
                      add_special_tokens=False)["input_ids"][-1]
    chain = [start, *tokenizer(text, add_special_tokens=False)["input_ids"], tokenizer.eos_token_id]
    model = LlamaForCausalLM.from_pretrained(path, tie_word_embeddings=False)
    hidden = model.config.hidden_size
    assert len(set(chain)) == len(chain) <= hidden, "the chain's tokens must be distinct, one dimension each"
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.model.embed_tokens.weight.zero_()
        model.lm_head.weight.zero_()
        for i, token in enumerate(chain[:-1]):
            model.model.embed_tokens.weight[token, i] = 1.0
            model.lm_head.weight[chain[i + 1], i] = 10.0
    model.save_pretrained(path)
    return path
