"""Profile of a training step: which operators take the time, by op and by category.

The bundled model (all-MiniLM-L6-v2, 2 labels) trains on batches of the preprocessed bundled
data as the loop trains it: the loop's ``epoch_batches`` (random batches, the default;
``--group-by-length`` for its length-grouped mega-batches), its ``Collator``, the task's loss,
its precision choice (``resolve_precision``: bf16 autocast where the CPU is fast at it), its
AdamW (``build_optimizer``, fused) and gradient clipping at 1.0. After ``--warmup`` steps,
``--steps`` steps run under ``torch.profiler`` (CPU activity, no shapes). Printed: the wall
time per profiled step (median), the top operators by self CPU time with their share, the time
by category (matmul, attention, layer_norm, gelu, dropout, embedding, optimizer, copy/cat/index,
backward autograd overhead, other) and the padding ratio (token positions / real tokens).
``--out`` writes them as JSON, ``--trace`` a Chrome trace (chrome://tracing, ui.perfetto.dev).
Switches for experiments: ``--threads N``, ``--no-dropout`` (dropout off, still a training
step), ``--no-attention-dropout`` (only the attention probabilities' dropout off), ``--foreach``
(foreach AdamW instead of fused), ``--no-mkldnn``, ``--flush-denormal`` and ``--padding-free``
(needs ``kftune.training.unpadded``). About a minute on 2 CPU cores:

    .venv/bin/python bench/profile_step.py
    .venv/bin/python bench/profile_step.py --no-dropout --threads 1 --out profile.json --trace trace.json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

UNPADDED_MODULE = "kftune.training.unpadded"
# category -> substrings of an operator's name; the first category that matches takes it
CATEGORIES = {
    "optimizer": ("optimizer.step", "optimizer.zero_grad", "_fused_adamw", "_foreach", "adamw"),
    "backward autograd overhead": ("autograd::", "backward0", "backward1", "accumulategrad"),
    "attention/sdpa/softmax": ("scaled_dot_product", "flash_attention", "softmax", "baddbmm"),
    "matmul/linear/addmm/bmm": ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear",
                                "aten::addmv", "aten::mv", "mkldnn_linear", "aten::dot", "mmbackward"),
    "layer_norm": ("layer_norm", "layernorm"),
    "gelu": ("gelu",),
    "dropout": ("dropout", "bernoulli", "aten::rand", "uniform_"),
    "embedding": ("embedding",),
    "copy/cat/index (padding, collation)": ("copy", "aten::cat", "index", "aten::stack", "aten::to",
                                            "aten::pad", "constant_pad", "aten::tensor", "aten::empty",
                                            "aten::zeros", "aten::fill_", "aten::slice", "aten::select",
                                            "aten::contiguous", "aten::clone", "aten::expand", "aten::gather",
                                            "aten::scatter"),
}


def category(name: str, labels=CATEGORIES) -> str:
    lowered = name.lower()
    for label in labels:
        if any(n in lowered for n in CATEGORIES[label]):
            return label
    return "other"


AUTOGRAD_NODE = "autograd::engine::evaluate_function: "
COPY = "copy/cat/index (padding, collation)"
ENCLOSING = [label for label in CATEGORIES if label not in ("backward autograd overhead", COPY)]


def event_category(event) -> str:
    """An operator's category. A generic one (mul, add, sum, and copies: copy_, clone, ...) takes that of the
    nearest enclosing operator that has one: addmm's bias copy and ``AddmmBackward0``'s bias-gradient sum are
    matmul, dropout's mask multiply dropout, SDPA's math path attention; copies outside any stay copies."""
    own = category(event.name)
    if own not in ("other", COPY):
        return own
    parent = event.cpu_parent
    while parent is not None:
        enclosing = category(parent.name.removeprefix(AUTOGRAD_NODE), ENCLOSING)
        if enclosing != "other":
            return enclosing
        parent = parent.cpu_parent
    return own


def summarise(prof, step_count: int, top: int) -> dict:
    """Top ops by self CPU time and the time per category, both per step and as shares of the profiled time."""
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total_us = sum(e.self_cpu_time_total for e in events)
    by_category: dict[str, float] = {}
    op_category: dict[str, dict[str, float]] = {}  # op -> category -> self time (one op can sit in several)
    for e in prof.events():
        label = event_category(e)
        by_category[label] = by_category.get(label, 0.0) + e.self_cpu_time_total
        shares = op_category.setdefault(e.name, {})
        shares[label] = shares.get(label, 0.0) + e.self_cpu_time_total
    ops = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)
    top_ops = [{"op": e.key, "self_ms_per_step": e.self_cpu_time_total / 1000 / step_count,
                "share": e.self_cpu_time_total / total_us, "calls_per_step": e.count / step_count,
                "category": ", ".join(k for k, _ in sorted(op_category.get(e.key, {}).items(),
                                                           key=lambda kv: kv[1], reverse=True) if _ > 0)}
               for e in ops[:top]]
    categories = {k: {"ms_per_step": v / 1000 / step_count, "share": v / total_us}
                  for k, v in sorted(by_category.items(), key=lambda kv: kv[1], reverse=True)}
    return {"profiled_self_cpu_ms_per_step": total_us / 1000 / step_count, "top_ops": top_ops,
            "categories": categories}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=8, help="profiled steps")
    parser.add_argument("--warmup", type=int, default=2, help="steps run before profiling")
    parser.add_argument("--group-by-length", action="store_true", help="the loop's length-grouped batches")
    parser.add_argument("--threads", type=int, default=0, help="torch.set_num_threads(N) (0: leave torch's default)")
    parser.add_argument("--no-dropout", action="store_true", help="dropout off (model.eval()), still a training step")
    parser.add_argument("--no-attention-dropout", action="store_true",
                        help="attention-probability dropout off, the other dropout on (SDPA can then take its "
                        "fused CPU kernel instead of the math path)")
    parser.add_argument("--foreach", action="store_true", help="foreach AdamW instead of the loop's fused one")
    parser.add_argument("--no-mkldnn", action="store_true", help="torch.backends.mkldnn.enabled = False")
    parser.add_argument("--flush-denormal", action="store_true", help="torch.set_flush_denormal(True)")
    parser.add_argument("--padding-free", action="store_true",
                        help=f"patch the model with {UNPADDED_MODULE}.enable_padding_free")
    parser.add_argument("--top", type=int, default=25, help="operators listed")
    parser.add_argument("--max-rows", type=int, default=0, help="preprocess a sample of this many rows")
    parser.add_argument("--out", type=Path, help="write the results as JSON")
    parser.add_argument("--trace", type=Path, help="write a Chrome trace of the profiled steps")
    args = parser.parse_args()
    if args.padding_free and importlib.util.find_spec(UNPADDED_MODULE) is None:
        parser.error(f"--padding-free needs {UNPADDED_MODULE} (enable_padding_free), which this tree does not have")

    import torch
    from torch.profiler import ProfilerActivity, profile
    from transformers import AutoTokenizer

    from kftune.components.preprocess.config import PreprocessConfig
    from kftune.components.preprocess.preprocess import preprocess
    from kftune.data.bundled import resolve_model
    from kftune.data.schema import LENGTH, dataset_task, load_splits
    from kftune.models.encoder import build_encoder_model
    from kftune.tasks import task_named, with_task
    from kftune.training.config import TrainConfig
    from kftune.training.encoder_recipe import Collator
    from kftune.training.loop import epoch_batches
    from kftune.training.optimizer import build_optimizer
    from kftune.training.precision import autocast, resolve_precision

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.no_mkldnn:
        torch.backends.mkldnn.enabled = False
    if args.flush_denormal:
        torch.set_flush_denormal(True)
    config = TrainConfig(group_by_length=args.group_by_length)
    device = torch.device("cpu")
    precision = resolve_precision(config.mixed_precision, device)
    with tempfile.TemporaryDirectory(prefix="kftune-bench-profile-") as tmp:
        data = Path(tmp) / "data"
        preprocess(PreprocessConfig(max_rows=args.max_rows), data, Path(tmp) / "test_split")
        splits, _ = load_splits(data)
        tokenizer = AutoTokenizer.from_pretrained(str(data / "tokenizer"))
        info = dataset_task(data)
        config = with_task(config, info["task"])
        task = task_named(config.task)
        train_split = splits["train"]
        lengths = np.asarray(train_split[LENGTH])
        batches = epoch_batches(lengths, args.batch_size, config.seed, 0, config.group_by_length,
                                config.length_group_batches)[: args.warmup + args.steps]
        if len(batches) < args.warmup + args.steps:
            parser.error(f"the training split gives {len(batches)} batches, fewer than --warmup + --steps")
        collate = Collator(train_split, tokenizer, config.max_train_length, task, info)
        torch.manual_seed(config.seed)
        model = build_encoder_model(config, task.head(info), resolve_model("bundled:all-MiniLM-L6-v2"), task)
        model.eval() if args.no_dropout else model.train()
        if args.no_attention_dropout:
            for module in model.modules():
                if "Attention" in type(module).__name__ and isinstance(getattr(module, "dropout", None),
                                                                       torch.nn.Dropout):
                    module.dropout.p = 0.0
        padding_free = None
        if args.padding_free:
            from importlib import import_module

            padding_free = bool(import_module(UNPADDED_MODULE).enable_padding_free(model))
            if not padding_free:
                parser.error("enable_padding_free(model) returned False: this model has no padding-free path")
        optimizer = build_optimizer(model, config, device, fused=not args.foreach)
        for group in optimizer.param_groups if args.foreach else ():
            group["foreach"] = True  # on CPU AdamW's default is the per-tensor for-loop

        positions, real = [], []

        def step(indices) -> float:
            started = time.perf_counter()
            batch = collate(indices)
            with autocast(device, precision):
                loss = task.loss(model, batch, config)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            positions.append(batch["input_ids"].numel())
            real.append(int(batch["attention_mask"].sum()))
            return time.perf_counter() - started

        for indices in batches[: args.warmup]:
            step(indices)
        positions.clear()
        real.clear()
        seconds = []
        with profile(activities=[ProfilerActivity.CPU], record_shapes=False) as prof:
            for indices in batches[args.warmup :]:
                seconds.append(step(indices))
        if args.trace:
            prof.export_chrome_trace(str(args.trace))

    result = {"batch_size": args.batch_size, "steps": args.steps, "warmup": args.warmup,
              "group_by_length": args.group_by_length, "precision": precision,
              "torch_threads": torch.get_num_threads(), "dropout": not args.no_dropout,
              "attention_dropout": not (args.no_dropout or args.no_attention_dropout),
              "optimizer": "foreach AdamW" if args.foreach else "fused AdamW",
              "mkldnn": torch.backends.mkldnn.enabled, "flush_denormal": args.flush_denormal,
              "padding_free": padding_free,
              "step_ms_median": 1000 * statistics.median(seconds), "step_ms": [1000 * s for s in seconds],
              "padding_ratio": sum(positions) / sum(real), "tokens_padded_per_step": sum(positions) / len(positions),
              **summarise(prof, args.steps, args.top)}
    print(f"step: {result['step_ms_median']:.0f} ms median over {args.steps} profiled steps (batch {args.batch_size}, "
          f"{precision}, {result['torch_threads']} threads, dropout {'on' if result['dropout'] else 'off'}, "
          f"{result['optimizer']}); padding ratio {result['padding_ratio']:.2f} "
          f"({result['tokens_padded_per_step']:.0f} token positions per step)")
    print(f"\n{'operator':<52} {'ms/step':>9} {'share':>7} {'calls':>7}  category")
    for op in result["top_ops"]:
        print(f"{op['op'][:52]:<52} {op['self_ms_per_step']:9.1f} {op['share']:7.1%} {op['calls_per_step']:7.0f}  "
              f"{op['category']}")
    print(f"\n{'category':<40} {'ms/step':>9} {'share':>7}")
    for name, c in result["categories"].items():
        print(f"{name:<40} {c['ms_per_step']:9.1f} {c['share']:7.1%}")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
