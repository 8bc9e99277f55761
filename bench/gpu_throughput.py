"""Training-step throughput and model FLOPs utilisation (MFU) of a BERT-base-sized classifier.

Runs kftune's training step (the loop's autocast precision choice, its fused AdamW with the
same parameter groups, gradient clipping) on full batches of fixed-length sequences, after a
warm-up, and reports samples/s, tokens/s and MFU against the accelerator's dense bf16 peak (the
datasheet's) and against the rate of one large matrix product in the same precision measured on
the device in the same run:

    MFU = 6 * N * tokens/s (+ attention: 12 * layers * hidden * seq * tokens/s) / peak FLOP/s

with N the non-embedding parameters (the usual estimate: forward 2N, backward 4N per token).
Meant for a GPU (``--device cuda``, bf16); on a CPU it runs too, as a smoke check.

    python bench/gpu_throughput.py --out gpu-bench.json                    # BERT-base, seq 128, batch 64
    python bench/gpu_throughput.py --device cpu --layers 2 --hidden 128 --steps 3 --batch-size 4   # smoke
"""

from __future__ import annotations

import argparse
import json
import platform
import time

# Dense bf16 tensor-core peaks (no sparsity), FLOP/s, by a substring of the device name.
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12, "A10": 125e12}


def measured_matmul_flops(device, precision: str, size: int, repeats: int = 10) -> float:
    """FLOP/s of one ``size`` x ``size`` matrix product in the training precision (bf16/fp16 autocast: that dtype;
    fp32 otherwise, TF32 allowed on CUDA), the best of ``repeats`` timed after a warm-up: the rate the device reaches
    on the operation training spends most of its time in, to set the measured MFU against."""
    import torch

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    best = float("inf")
    for attempt in range(repeats + 2):
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize()
        if attempt >= 2:
            best = min(best, time.perf_counter() - started)
    return 2 * size**3 / best


def main() -> None:
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    from kftune.training.config import TrainConfig
    from kftune.training.optimizer import build_optimizer
    from kftune.training.precision import autocast, resolve_precision

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--precision", default="auto", help="auto, bf16, fp16 or no (as TrainConfig.mixed_precision)")
    parser.add_argument("--peak-tflops", type=float, default=0, help="peak FLOP/s of the device (default: lookup)")
    parser.add_argument("--matmul-size", type=int, default=0,
                        help="side of the square matrix product timed for the measured rate (default: 8192 on a GPU, "
                        "1536 on a CPU)")
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    args.matmul_size = args.matmul_size or (8192 if args.device.startswith("cuda") else 1536)

    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    precision = resolve_precision(args.precision, device)
    config = BertConfig(hidden_size=args.hidden, num_hidden_layers=args.layers,
                        num_attention_heads=max(1, args.hidden // 64), intermediate_size=4 * args.hidden,
                        max_position_embeddings=max(512, args.seq_len), num_labels=2)
    torch.manual_seed(0)
    model = BertForSequenceClassification(config).to(device).train()
    optimizer = build_optimizer(model, TrainConfig(), device)
    scaler = torch.amp.GradScaler("cuda", enabled=precision == "fp16")
    batch = {
        "input_ids": torch.randint(1000, config.vocab_size, (args.batch_size, args.seq_len), device=device),
        "attention_mask": torch.ones(args.batch_size, args.seq_len, dtype=torch.long, device=device),
        "labels": torch.randint(0, 2, (args.batch_size,), device=device),
    }

    def step() -> None:
        with autocast(device, precision):
            loss = model(**batch).loss
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(args.warmup):
        step()
    sync()
    started = time.perf_counter()
    for _ in range(args.steps):
        step()
    sync()
    seconds = time.perf_counter() - started

    embeddings = sum(p.numel() for n, p in model.named_parameters() if "embeddings" in n)
    non_embedding = sum(p.numel() for p in model.parameters()) - embeddings
    tokens_per_second = args.steps * args.batch_size * args.seq_len / seconds
    flops_per_token = 6 * non_embedding + 12 * args.layers * args.hidden * args.seq_len
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    peak = args.peak_tflops * 1e12 or next((v for k, v in PEAK_BF16.items() if k in name), 0)
    matmul = measured_matmul_flops(device, precision, args.matmul_size)
    result = {
        "device": name, "precision": precision, "layers": args.layers, "hidden": args.hidden,
        "seq_len": args.seq_len, "batch_size": args.batch_size, "steps": args.steps,
        "non_embedding_parameters": non_embedding, "samples_per_second": args.steps * args.batch_size / seconds,
        "tokens_per_second": tokens_per_second, "model_tflops_per_second": flops_per_token * tokens_per_second / 1e12,
        "peak_tflops": peak / 1e12 or None, "mfu": flops_per_token * tokens_per_second / peak if peak else None,
        "measured_matmul_tflops": matmul / 1e12, "matmul_size": args.matmul_size,
        "mfu_vs_measured_matmul": flops_per_token * tokens_per_second / matmul,
        "torch": torch.__version__,
    }
    print(json.dumps(result, indent=2))
    if args.out:
        with open(args.out, "w", encoding="utf-8") as handle:
            json.dump(result, handle, indent=2)


if __name__ == "__main__":
    main()
