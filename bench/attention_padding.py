"""Attention of padding-free batches: the ways to run each text's attention over packed tokens, timed.

Padding-free training (``src/kftune/training/unpadded.py``) keeps a batch's T real tokens
packed (``[T, heads, head_dim]``) and must still let each text attend only to itself. This times
forward + backward of the attention product with dropout 0.1 for a batch of 32 texts whose lengths
follow the bundled reviews' (log-normal, median ~22 tokens), in four ways:

- ``index``: scatter q, k, v into the padded ``[B, heads, L, head_dim]`` layout by flat index,
  ``scaled_dot_product_attention`` with the padding mask, gather the real tokens back (what the
  loop uses);
- ``mask``: the same through boolean-mask ``masked_scatter`` and indexing;
- ``pad_sequence``: split per text, ``pad_sequence``, and ``cat`` back;
- ``nested``: nested jagged tensors (``torch.nested``) straight into SDPA.

and, for scale, SDPA on the padded batch itself. Median of ``--repeats`` after 3 warm-ups. Seconds:

    .venv/bin/python bench/attention_padding.py
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--head-dim", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()

    import torch
    import torch.nn.functional as F

    torch.manual_seed(0)
    B, heads, d = args.batch_size, args.heads, args.head_dim
    lengths = torch.tensor(np.clip(np.random.default_rng(0).lognormal(3.1, 0.5, B).astype(int), 5, 128))
    L, T = int(lengths.max()), int(lengths.sum())
    mask = torch.arange(L)[None] < lengths[:, None]
    keep = mask.reshape(-1).nonzero().squeeze(1)
    key_mask = mask[:, None, None, :]
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)])
    sizes = lengths.tolist()

    def by_index(q, k, v):
        def pad(x):
            return x.new_zeros((B * L, heads, d)).index_copy(0, keep, x).view(B, L, heads, d).transpose(1, 2)

        out = F.scaled_dot_product_attention(pad(q), pad(k), pad(v), attn_mask=key_mask, dropout_p=0.1)
        return out.transpose(1, 2).reshape(B * L, heads, d).index_select(0, keep)

    def by_mask(q, k, v):
        def pad(x):
            return x.new_zeros((B, L, heads, d)).masked_scatter(mask[:, :, None, None], x).transpose(1, 2)

        out = F.scaled_dot_product_attention(pad(q), pad(k), pad(v), attn_mask=key_mask, dropout_p=0.1)
        return out.transpose(1, 2)[mask]

    def by_pad_sequence(q, k, v):
        def pad(x):
            return torch.nn.utils.rnn.pad_sequence(x.split(sizes), batch_first=True).transpose(1, 2)

        out = F.scaled_dot_product_attention(pad(q), pad(k), pad(v), attn_mask=key_mask, dropout_p=0.1)
        out = out.transpose(1, 2)
        return torch.cat([out[i, :n] for i, n in enumerate(sizes)])

    def nested(q, k, v):
        q, k, v = (torch.nested.nested_tensor_from_jagged(x, offsets).transpose(1, 2) for x in (q, k, v))
        return F.scaled_dot_product_attention(q, k, v, dropout_p=0.1).transpose(1, 2).values()

    def timed(attention, shape) -> float:
        times = []
        for _ in range(args.repeats + 3):
            q, k, v = (torch.randn(*shape, requires_grad=True) for _ in range(3))
            started = time.perf_counter()
            attention(q, k, v).sum().backward()
            times.append(time.perf_counter() - started)
        return float(np.median(times[3:]) * 1000)

    results = {"batch": B, "longest": L, "real_tokens": T, "padding_ratio": B * L / T,
               "threads": torch.get_num_threads()}
    for name, attention in (("index", by_index), ("mask", by_mask), ("pad_sequence", by_pad_sequence),
                            ("nested", nested)):
        results[f"{name}_ms"] = timed(attention, (T, heads, d))
    results["padded_batch_ms"] = timed(
        lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask, dropout_p=0.1), (B, heads, L, d))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
