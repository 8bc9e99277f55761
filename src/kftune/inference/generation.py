"""Greedy generation with a causal LM: what evaluate, export and (for its checks) serve share.

Prompts are rendered conversations (the dataset's ``prompt`` column); they are batched in
length order, left-padded, and answered greedily, with a progress bar.
"""

from __future__ import annotations

import numpy as np
import torch

GENERATION_LIMIT = 256
"""Most new tokens an evaluation generates by default."""


@torch.no_grad()
def generate(model, tokenizer, prompts: list[str], max_new_tokens: int, batch_size: int = 16,
             desc: str = "generating", progress: bool = True) -> list[str]:
    """Greedy completions of rendered ``prompts`` (in order), batched in length order, left-padded
    (``progress``: with a progress bar of the batches)."""
    from tqdm.auto import tqdm

    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    lengths = [len(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts]
    order = np.argsort(lengths, kind="stable")
    out: list[str] = [""] * len(prompts)
    for start in tqdm(range(0, len(order), batch_size), desc=desc, unit="batch", mininterval=2,
                      disable=not progress):
        chunk = order[start : start + batch_size]
        enc = tokenizer([prompts[i] for i in chunk], return_tensors="pt", padding=True, add_special_tokens=False)
        ids = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                             pad_token_id=tokenizer.pad_token_id)
        texts = tokenizer.batch_decode(ids[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
        for i, text in zip(chunk, texts, strict=True):
            out[i] = text
    return out


def max_new_tokens_for(info: dict, setting: int) -> int:
    """``setting``, or (0) the longest training completion plus a margin, at most :data:`GENERATION_LIMIT`."""
    return setting or min(GENERATION_LIMIT, int(info.get("completion_max_tokens", 64)) + 4)
