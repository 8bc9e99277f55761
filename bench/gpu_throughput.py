"""Training-step throughput and model FLOPs utilisation (MFU) of a BERT-base-sized classifier.

Runs kftune's training step (the loop's autocast precision choice, its fused AdamW with the
same parameter groups, gradient clipping) on full batches of fixed-length sequences, after a
warm-up, and reports samples/s, tokens/s and MFU against the GPU's dense datasheet peak for the
precision it trains in (:func:`datasheet_peak`: bf16 or fp16 tensor cores; for fp32, the TF32
tensor cores, as the loop allows TF32 matmuls) and against the rate of one large matrix product in
the same precision measured on the device in the same run:

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
import re
import time

DATASHEET_TFLOPS = (
    (r"\bH100 NVL\b", {"fp32": 60, "tf32": 417.5, "bf16": 835, "fp16": 835}),
    (r"\bH100\b.*\bPCIe\b", {"fp32": 51, "tf32": 378, "bf16": 756, "fp16": 756}),
    (r"\bH100\b", {"fp32": 67, "tf32": 494.7, "bf16": 989.4, "fp16": 989.4}),  # SXM5: "NVIDIA H100 80GB HBM3"
    (r"\bH200 NVL\b", {"fp32": 60, "tf32": 417.5, "bf16": 835, "fp16": 835}),
    (r"\bH200\b", {"fp32": 67, "tf32": 494.7, "bf16": 989.4, "fp16": 989.4}),  # SXM: "NVIDIA H200"
    (r"\bA100\b", {"fp32": 19.5, "tf32": 156, "bf16": 312, "fp16": 312}),  # SXM4 and PCIe alike
    (r"\bA10\b", {"fp32": 31.2, "tf32": 62.5, "bf16": 125, "fp16": 125}),
    (r"\bL40S\b", {"fp32": 91.6, "tf32": 183, "bf16": 362.05, "fp16": 362.05}),
    (r"\bL40\b", {"fp32": 90.5, "tf32": 90.5, "bf16": 181.05, "fp16": 181.05}),
    (r"\bL4\b", {"fp32": 30.3, "tf32": 60, "bf16": 121, "fp16": 121}),
    (r"\bT4\b", {"fp32": 8.1, "fp16": 65}),
    (r"\bV100S\b", {"fp32": 16.4, "fp16": 130}),
    (r"\bV100\b.*\bSXM", {"fp32": 15.7, "fp16": 125}),
    (r"\bV100\b.*\bPCIe\b", {"fp32": 14, "fp16": 112}),
)
"""NVIDIA's datasheet peaks, dense (without 2:4 sparsity, which the datasheets' headline tensor figures assume),
TFLOPS: fp32 on the CUDA cores, tf32/bf16/fp16 on the tensor cores (fp16 with fp32 accumulation). Each row's
pattern is searched (case-insensitively, whole words) in the name torch reports, the rows in order, most specific
first: "H100 NVL" and "H100 PCIe" before the SXM5 module's "H100 80GB HBM3", "L40S" apart from "L40" and "L4".
Missing on purpose: the A10G (AWS's variant of the A10, with fewer tensor FLOP/s; NVIDIA publishes no datasheet
for it), bf16 and tf32 on T4 and V100 (they have no such tensor cores), and any GPU not listed."""


def datasheet_peak(device_name: str, precision: str, tf32: bool) -> tuple[str, float] | None:
    """(the unit, its dense datasheet peak in FLOP/s) that training in ``precision`` (bf16, fp16 or no) runs its
    matrix products on, for the GPU torch names ``device_name``: the bf16 or fp16 tensor cores; for fp32 the TF32
    tensor cores where ``tf32`` (TF32 matmuls allowed, as the training loop allows them) and the GPU has them, else
    its fp32 CUDA cores. None for a GPU not in :data:`DATASHEET_TFLOPS`, a precision it has no peak for, and a MIG
    slice (a fraction of the GPU's peak)."""
    if re.search(r"\bMIG\b", device_name):
        return None
    for pattern, peaks in DATASHEET_TFLOPS:
        if re.search(pattern, device_name, re.IGNORECASE):
            unit = precision if precision in ("bf16", "fp16") else "tf32" if tf32 and "tf32" in peaks else "fp32"
            return (unit, peaks[unit] * 1e12) if unit in peaks else None
    return None


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
    parser.add_argument("--peak-tflops", type=float, default=0,
                        help="peak TFLOP/s of the device in the precision trained (default: its datasheet's, where "
                        "bench/gpu_throughput.py's table knows the device)")
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
    tf32 = device.type == "cuda" and torch.backends.cuda.matmul.allow_tf32
    unit, peak = datasheet_peak(name, precision, tf32) or (None, 0)  # a CPU's name is in no row: none
    peak_source = f"datasheet, dense {unit}" if unit else None
    if args.peak_tflops:
        peak, peak_source = args.peak_tflops * 1e12, "--peak-tflops"
    matmul = measured_matmul_flops(device, precision, args.matmul_size)
    result = {
        "device": name, "precision": precision, "layers": args.layers, "hidden": args.hidden,
        "seq_len": args.seq_len, "batch_size": args.batch_size, "steps": args.steps,
        "non_embedding_parameters": non_embedding, "samples_per_second": args.steps * args.batch_size / seconds,
        "tokens_per_second": tokens_per_second, "model_tflops_per_second": flops_per_token * tokens_per_second / 1e12,
        "peak_tflops": peak / 1e12 or None, "peak_source": peak_source,
        "mfu": flops_per_token * tokens_per_second / peak if peak else None,
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
