"""Causal-LM training throughput: kftune's loop against TRL's ``SFTTrainer``, in one run, on this machine.

Both LoRA-fine-tune the same model (the bundled SmolLM2-135M-Instruct unless ``--model``) on the
same token ids: the bundled instruction data (Rotten Tomatoes reviews -> positive/negative),
preprocessed once by kftune, the first ``--examples`` examples of its train split. Same settings
on both sides: LoRA r 8, alpha 16, dropout 0.1 on all linear layers (kftune's defaults), batch 8
examples, lr 1e-3 with linear warmup (10 % of the steps, counted as kftune counts them) and
linear decay, fused AdamW, weight decay 0.01, gradient clipping at 1.0, one epoch, fp32 (bf16
autocast with ``--bf16``), seed 42, no gradient checkpointing, loss on the assistant's tokens only,
torch threads = the machine's cores. Each system trains in its own fresh process:

(a) kftune: ``train(TrainConfig(task="causal-lm", ...))`` in-process (no torchrun), with
    packing (the task's default: a micro-batch's examples concatenated, no padding computed);
(b) TRL ``SFTTrainer``, given the same ``input_ids`` plus a ``completion_mask`` (1 where kftune's
    labels are not -100) and ``completion_only_loss=True``; ``padding_free=True``: the setting a
    user after speed picks, and the one that keeps 8 examples per step (``packing=True`` with
    ``packing_strategy="bfd"`` would put 8 *bins of max_length tokens* in a batch: other batches,
    fewer optimizer steps, not the same training);
(c) TRL's default padded batches (``--skip-padded`` leaves it out);
(d) kftune with ``packing=False``: the same loop and batches, each micro-batch padded to its
    longest example (``--skip-kftune-padded`` leaves it out). kftune's real tokens/s with
    packing over this run's is what packing itself gains (issue 18: packing measured as real
    tokens per second against padded batches); the padding ratio of those batches (token
    positions / real tokens) is reported with it.

TRL sees the examples in the order kftune's loop draws them (``train_sampling_strategy=
"sequential"`` over the data in that order) and the LoRA weights start equal (same seed right
before ``get_peft_model``; the output says whether the initial adapters' fingerprints match), so
the runs differ only in dropout masks and arithmetic. The held-out loss compares them at equal
data and epochs: the mean cross-entropy over the assistant's tokens of the validation split,
computed for every trained model (merged, eval mode) by the same code
(``causal_lm.token_losses`` over packed ``CausalCollator`` batches).

Reported per system: seconds of the training loop (the epoch's steps: model loading, data
preparation, validation and saving excluded), real (non-padding) tokens of the N examples /
those seconds, the tokens the trainer itself counted, held-out loss; and kftune's tokens/s over
TRL's, and kftune's with packing over kftune's padded. Runs take minutes on 2 CPU cores at the default size:

    (trl comes with the [bench] extra, which make setup installs)
    .venv/bin/python bench/causal_lm_throughput.py --out bench-results-causal-lm.json
    .venv/bin/python bench/causal_lm_throughput.py --bf16 --skip-padded
    .venv/bin/python bench/causal_lm_throughput.py --tiny    # seconds: a random 2-layer Llama, 16 examples
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SEED = 42
HYPERPARAMETERS = {"per_device_train_batch_size": 8, "learning_rate": 1e-3, "num_train_epochs": 1,
                   "warmup_ratio": 0.1, "weight_decay": 0.01, "max_grad_norm": 1.0,
                   "lora_r": 8, "lora_alpha": 16, "lora_dropout": 0.1, "seed": SEED}
LOGGING_STEPS = 10
sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_throughput import cpu_model  # noqa: E402  (the other bench's reader of /proc/cpuinfo)

EVAL_BATCH = 16
SYSTEMS = ("kftune", "trl", "trl_padded", "kftune_padded")


def machine_facts() -> dict:
    import peft
    import torch
    import transformers
    import trl

    return {"cpu": cpu_model(), "cores": os.cpu_count(), "machine": platform.machine(),
            "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "trl": trl.__version__, "peft": peft.__version__,
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def make_tiny_causal_lm(path: Path) -> Path:
    """A 2-layer, 32-wide Llama with random weights and the bundled SmolLM2's tokenizer (for ``--tiny``)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from kftune.data.bundled import bundled_causal_lm_dir

    tokenizer = AutoTokenizer.from_pretrained(bundled_causal_lm_dir())
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512,
                         tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def cut_train_split(dataset_dir: Path, out_dir: Path, examples: int) -> None:
    """A copy of the dataset artifact whose train split holds only its first ``examples`` examples."""
    import shutil

    import datasets

    from kftune.data.schema import SPLITS_DIR

    splits = datasets.load_from_disk(str(dataset_dir / SPLITS_DIR))
    if examples > len(splits["train"]):
        raise SystemExit(f"--examples {examples}: the train split has only {len(splits['train'])} examples")
    shutil.copytree(dataset_dir, out_dir, ignore=shutil.ignore_patterns(SPLITS_DIR))
    cut = datasets.DatasetDict({**splits, "train": splits["train"].select(range(examples))})
    cut.save_to_disk(str(out_dir / SPLITS_DIR))


def padded_tokens(lengths) -> int:
    """Token positions of kftune's epoch-0 batches, each padded to its longest example (packing=False)."""
    import numpy as np

    from kftune.training.loop import epoch_batches

    lengths = np.asarray(lengths)
    batches = epoch_batches(lengths, HYPERPARAMETERS["per_device_train_batch_size"], SEED, 0, False)
    return int(sum(len(b) * lengths[b].max() for b in batches))


# --- what runs in each system's own process -------------------------------------------------------


def lora_fingerprint(model) -> str:
    """sha256 of the LoRA weights in name order: equal fingerprints, equal initial adapters."""
    digest = hashlib.sha256()
    for name, param in sorted(model.named_parameters()):
        if "lora_" in name:
            digest.update(name.encode())
            digest.update(param.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def heldout_loss(model, split, pad_id: int) -> float:
    """Mean cross-entropy over the assistant's tokens of ``split``, by kftune's scoring code, in eval mode."""
    import numpy as np
    import torch

    from kftune.training.causal_lm_recipe import CausalCollator, token_losses

    model.eval()
    # A model as saved has use_cache=True; its forward then makes a cache before the attention mask, and
    # transformers builds the block-diagonal mask of packed examples only without one: with the cache on,
    # packed examples would attend to each other (0.015 off on the --tiny run).
    model.config.use_cache = False
    collate = CausalCollator(split, pad_id, packing=True)
    order = np.argsort(collate.lengths(), kind="stable")
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(order), EVAL_BATCH):
            batch = {k: v.to(model.device) for k, v in collate(order[start : start + EVAL_BATCH]).items()}
            loss, n = token_losses(model, batch)
            total, count = total + loss.item(), count + n
    return total / max(count, 1)


def kftune_order(lengths) -> list[int]:
    """The examples in the order kftune's loop draws them in epoch 0 (its own batching function)."""
    import numpy as np

    from kftune.training.loop import epoch_batches

    batches = epoch_batches(np.asarray(lengths), HYPERPARAMETERS["per_device_train_batch_size"], SEED, 0, False)
    return [int(i) for batch in batches for i in batch]


def run_kftune(spec: dict, packing: bool = True) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    from kftune.training import causal_lm_recipe, loop
    from kftune.training.config import TrainConfig

    fingerprints = []
    build = causal_lm_recipe.build_causal_lm  # the causal-lm recipe builds the model through it

    def build_and_fingerprint(*args, **kwargs):  # observe the adapter the loop starts from
        model = build(*args, **kwargs)
        fingerprints.append(lora_fingerprint(model))
        return model

    causal_lm_recipe.build_causal_lm = build_and_fingerprint
    config = TrainConfig(task="causal-lm", model=spec["model"], training_mode="lora", **HYPERPARAMETERS,
                         mixed_precision="bf16" if spec["bf16"] else "no", packing=packing, save_steps=0,
                         early_stopping_patience=0, logging_steps=LOGGING_STEPS)
    out = Path(spec["out"])
    history = loop.train(config, Path(spec["dataset"]), out)
    epoch = history["epochs"][0]
    trained = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32)  # the merged model it wrote
    return {"setup": f"TrainConfig(task='causal-lm', packing={packing}, mixed_precision={config.mixed_precision!r}), "
                     "train() in-process",
            "train_seconds": epoch["epoch_seconds"],
            "tokens_counted": round(epoch["train_tokens_per_second"] * epoch["epoch_seconds"]),
            "optimizer_steps": history["steps"][-1]["step"] if history["steps"] else None,
            "train_loss": epoch["train_loss"], "own_val_loss": epoch["val_loss"],
            "lora_init": fingerprints[0], "model": trained}


def run_trl(spec: dict, padding_free: bool) -> dict:
    import datasets
    import torch
    from peft import LoraConfig, TaskType
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from kftune.data.schema import SPLITS_DIR, TOKENIZER_DIR

    dataset_dir = Path(spec["dataset"])
    train = datasets.load_from_disk(str(dataset_dir / SPLITS_DIR))["train"]
    order = kftune_order(train["length"])
    ids, labels = train["input_ids"], train["labels"]
    data = datasets.Dataset.from_dict({
        "input_ids": [ids[i] for i in order],
        "completion_mask": [[int(t != -100) for t in labels[i]] for i in order],
    })
    steps = math.ceil(len(data) / HYPERPARAMETERS["per_device_train_batch_size"])
    tokenizer = AutoTokenizer.from_pretrained(str(dataset_dir / TOKENIZER_DIR))
    model = AutoModelForCausalLM.from_pretrained(spec["model"], dtype=torch.float32)
    lora = LoraConfig(task_type=TaskType.CAUSAL_LM, r=HYPERPARAMETERS["lora_r"],
                      lora_alpha=HYPERPARAMETERS["lora_alpha"], lora_dropout=HYPERPARAMETERS["lora_dropout"],
                      target_modules="all-linear")
    use_cpu = not torch.cuda.is_available()
    args = SFTConfig(
        output_dir=spec["out"], per_device_train_batch_size=HYPERPARAMETERS["per_device_train_batch_size"],
        learning_rate=HYPERPARAMETERS["learning_rate"], num_train_epochs=HYPERPARAMETERS["num_train_epochs"],
        lr_scheduler_type="linear",
        warmup_steps=int(HYPERPARAMETERS["warmup_ratio"] * steps),  # kftune's count (transformers rounds up)
        weight_decay=HYPERPARAMETERS["weight_decay"], max_grad_norm=HYPERPARAMETERS["max_grad_norm"],
        optim="adamw_torch_fused", seed=SEED, data_seed=SEED,
        bf16=spec["bf16"], fp16=False, use_cpu=use_cpu and spec["bf16"],
        gradient_checkpointing=False,  # TRL's default is True; kftune's is False
        completion_only_loss=True, packing=False, padding_free=padding_free,
        max_length=None if padding_free else 1024,  # padding-free refuses a max_length without packing
        train_sampling_strategy="sequential",  # the data is already in kftune's order
        eval_strategy="no", save_strategy="no", report_to=[], logging_steps=LOGGING_STEPS, disable_tqdm=True,
        dataloader_num_workers=0,
    )

    class EpochTimer(TrainerCallback):
        """The epoch's steps, as kftune's ``epoch_seconds`` times them."""

        def on_epoch_begin(self, *_, **__):
            self.started = time.perf_counter()

        def on_epoch_end(self, *_, **__):
            self.seconds = time.perf_counter() - self.started

    timer = EpochTimer()
    trainer = SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer,
                         peft_config=lora, callbacks=[timer])
    fingerprint = lora_fingerprint(trainer.model)
    started = time.perf_counter()
    result = trainer.train()
    wall = time.perf_counter() - started
    merged = trainer.model.merge_and_unload()
    setup = ("SFTTrainer(completion_only_loss=True, padding_free=True, packing=False, max_length=None)"
             if padding_free else "SFTTrainer(completion_only_loss=True, padded batches: TRL's default)")
    return {"setup": setup + f", bf16={spec['bf16']}, gradient_checkpointing=False",
            "train_seconds": timer.seconds, "train_call_seconds": wall,
            "tokens_counted": int(getattr(trainer, "_total_train_tokens", 0)) or None,
            "optimizer_steps": trainer.state.global_step, "train_loss": result.training_loss,
            "attention": model.config._attn_implementation, "lora_init": fingerprint, "model": merged}


def worker(spec_path: Path) -> None:
    """Train one system and score its model; write the result beside the spec."""
    import datasets
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from kftune.data.schema import SPLITS_DIR, TOKENIZER_DIR

    spec = json.loads(spec_path.read_text())
    torch.set_num_threads(spec["threads"])
    if spec["system"] in ("kftune", "kftune_padded"):
        result = run_kftune(spec, packing=spec["system"] == "kftune")
    else:
        result = run_trl(spec, padding_free=spec["system"] == "trl")
    dataset_dir = Path(spec["dataset"])
    validation = datasets.load_from_disk(str(dataset_dir / SPLITS_DIR))["validation"]
    tokenizer = AutoTokenizer.from_pretrained(str(dataset_dir / TOKENIZER_DIR))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    result["heldout_loss"] = heldout_loss(result.pop("model"), validation, pad_id)
    if spec.get("score_base"):
        base = AutoModelForCausalLM.from_pretrained(spec["model"], dtype=torch.float32)
        result["base_heldout_loss"] = heldout_loss(base, validation, pad_id)
    result["torch_threads"] = torch.get_num_threads()
    Path(spec["result"]).write_text(json.dumps(result, indent=2))


# --- the comparison -------------------------------------------------------------------------------


def run_system(system: str, dataset_dir: Path, work: Path, model: str, bf16: bool, threads: int) -> dict:
    """Train ``system`` in a fresh Python process (no state shared with the other runs)."""
    spec = {"system": system, "dataset": str(dataset_dir), "model": model, "bf16": bf16, "threads": threads,
            "out": str(work / system), "result": str(work / f"{system}.json"), "score_base": system == "kftune"}
    spec_path = work / f"{system}.spec.json"
    spec_path.write_text(json.dumps(spec))
    subprocess.run([sys.executable, __file__, "--worker", str(spec_path)], check=True)
    return json.loads(Path(spec["result"]).read_text())


def table(results: dict, tokens: int) -> str:
    rows = [f"{'system':<13} {'train s':>9} {'tokens':>8} {'tokens/s':>9} {'held-out loss':>14}"]
    for system, r in results.items():
        rows.append(f"{system:<13} {r['train_seconds']:>9.2f} {tokens:>8d} {r['tokens_per_second']:>9.1f} "
                    f"{r['heldout_loss']:>14.4f}")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="bundled:SmolLM2-135M-Instruct",
                        help="causal LM to fine-tune: a Hugging Face directory or a bundled name "
                        "(default: %(default)s)")
    parser.add_argument("--examples", type=int, default=400, help="training examples (default: %(default)s)")
    parser.add_argument("--max-rows", type=int, default=0,
                        help="preprocess a sample of this many rows of the bundled data (0: all 1600; smoke runs)")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast on both sides (default: fp32)")
    parser.add_argument("--skip-padded", action="store_true", help="leave out TRL's default padded batches")
    parser.add_argument("--skip-kftune-padded", action="store_true",
                        help="leave out kftune with padded batches (packing=False)")
    parser.add_argument("--tiny", action="store_true",
                        help="a random 2-layer Llama with SmolLM2's tokenizer, 16 examples of a 160-row sample")
    parser.add_argument("--threads", type=int, default=os.cpu_count(),
                        help="torch threads of each training process (default: the machine's cores, %(default)s)")
    parser.add_argument("--out", "--output", dest="out", type=Path, default=Path("bench-results-causal-lm.json"))
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.worker)
        return {}

    from kftune.components.preprocess.config import PreprocessConfig
    from kftune.components.preprocess.preprocess import preprocess
    from kftune.data.bundled import resolve_model

    command = shlex.join([Path(sys.executable).name, *([sys.argv[0]] if argv is None else [__file__]),
                          *(sys.argv[1:] if argv is None else argv)])
    systems = [s for s in SYSTEMS if not (args.skip_padded and s == "trl_padded")
               and not (args.skip_kftune_padded and s == "kftune_padded")]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model = args.model
        if args.tiny:
            model = str(make_tiny_causal_lm(work / "tiny-llama"))
            args.examples = 16 if args.examples == parser.get_default("examples") else args.examples
            args.max_rows = args.max_rows or 160
        model = resolve_model(model)
        preprocess(PreprocessConfig(task="causal-lm", model=model, max_rows=args.max_rows, seed=SEED),
                   work / "full", work / "test_split")  # the test split is not used: training and validation only
        cut_train_split(work / "full", work / "data", args.examples)
        import datasets

        splits = datasets.load_from_disk(str(work / "data" / "splits"))
        tokens = int(sum(splits["train"]["length"]))
        assistant_tokens = int(sum(sum(t != -100 for t in row) for row in splits["train"]["labels"]))
        padded_positions = padded_tokens(splits["train"]["length"])
        results = {}
        for system in systems:
            r = run_system(system, work / "data", work, model, args.bf16, args.threads)
            r["tokens_per_second"] = tokens / r["train_seconds"]
            results[system] = r
            print(f"{system}: {r['train_seconds']:.2f} s, {r['tokens_per_second']:.1f} tokens/s, "
                  f"held-out loss {r['heldout_loss']:.4f}", flush=True)

    kftune, trl = results["kftune"], results["trl"]
    report = {
        "command": command,
        "machine": machine_facts(),
        "model": args.model if not args.tiny else "random 2-layer Llama (--tiny)",
        "hyperparameters": {**HYPERPARAMETERS, "lora_target_modules": "all-linear", "optimizer": "AdamW (fused)",
                            "lr_schedule": "linear warmup, linear decay",
                            "precision": "bf16 autocast" if args.bf16 else "fp32", "torch_threads": args.threads},
        "data": {"source": "bundled:rotten-tomatoes-instructions", "train_examples": args.examples,
                 "train_tokens": tokens, "train_assistant_tokens": assistant_tokens,
                 "padded_batches_token_positions": padded_positions,
                 "padded_batches_padding_ratio": padded_positions / tokens,
                 "validation_examples": len(splits["validation"]),
                 "order": "TRL is fed the examples in kftune's epoch-0 order (sequential sampler): same batches"},
        "measures": {
            "train_seconds": "wall seconds of the epoch's training steps (model loading, data preparation, "
                             "validation and saving excluded)",
            "tokens_per_second": "real (non-padding) tokens of the training examples / train_seconds",
            "packing_speedup_vs_padded": "kftune's tokens/s with packing / kftune's tokens/s with padded batches "
                                         "(packing=False), same examples, batches and settings",
            "heldout_loss": "mean cross-entropy over the assistant's tokens of the validation split, each trained "
                            "model merged and scored in eval mode by the same code (kftune's token_losses); "
                            "a comparison at equal data and epochs",
        },
        "lora_init_identical": len({r["lora_init"] for r in results.values()}) == 1,
        "systems": results,
        "speedup_vs_trl": kftune["tokens_per_second"] / trl["tokens_per_second"],
        "heldout_loss_difference_vs_trl": kftune["heldout_loss"] - trl["heldout_loss"],
    }
    if "trl_padded" in results:
        report["speedup_vs_trl_padded"] = kftune["tokens_per_second"] / results["trl_padded"]["tokens_per_second"]
    if "kftune_padded" in results:
        padded = results["kftune_padded"]
        report["packing_speedup_vs_padded"] = kftune["tokens_per_second"] / padded["tokens_per_second"]
        report["heldout_loss_difference_vs_padded"] = kftune["heldout_loss"] - padded["heldout_loss"]
    print(table(results, tokens))
    print(f"kftune / TRL (padding-free) tokens/s: {report['speedup_vs_trl']:.2f}x"
          + (f"; kftune / TRL (padded): {report['speedup_vs_trl_padded']:.2f}x" if "trl_padded" in results else "")
          + f"; LoRA initialisation identical: {report['lora_init_identical']}")
    if "kftune_padded" in results:
        print(f"kftune real tokens/s, packing / padded batches (padding ratio "
              f"{padded_positions / tokens:.2f}): {report['packing_speedup_vs_padded']:.2f}x")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"written to {args.out}")
    return report


if __name__ == "__main__":
    main()
