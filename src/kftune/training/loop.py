"""The training loop, run in every process that torchrun starts.

Read :func:`train` top to bottom: set up this rank (:mod:`~kftune.training.distributed`), ask the task for its
recipe (:mod:`~kftune.training.recipe`: model, batches, loss, validation, output), load the tokenized splits and
the pretrained model, place it (DistributedDataParallel, or FSDP2 shards), resume from the newest valid
checkpoint if there is one (:mod:`~kftune.training.checkpoint`), then for each epoch run length-grouped (or plain
shuffled) micro-batches (:mod:`~kftune.training.microbatch`, which also recovers from out-of-memory errors) under
bf16 autocast (or fp16 with loss scaling: :mod:`~kftune.training.precision`), step AdamW with linear warmup and
decay (:mod:`~kftune.training.optimizer`), checkpoint every ``save_steps`` and at each epoch end (and on
SIGTERM), validate, keep the best weights and stop early or when a search prunes the run
(:mod:`~kftune.training.validation`). Rank 0 writes the best model as a Hugging Face directory, atomically.

    python -m torch.distributed.run --standalone --nproc_per_node=N \\
        -m kftune.training.loop --config C --dataset D --output O
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import signal
import sys
from collections.abc import Collection
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch

from kftune.data.bundled import resolve_model
from kftune.data.schema import LENGTH, TOKENIZER_DIR, dataset_task, load_splits
from kftune.models.encoder import trainable_parameters
from kftune.storage.atomic import atomic_directory
from kftune.tasks import resolve_task, task_named
from kftune.training.checkpoint import Checkpointer
from kftune.training.config import TrainConfig
from kftune.training.distributed import Preemption, Ranks
from kftune.training.history import TrainingLog
from kftune.training.memory import check_model_fits
from kftune.training.microbatch import MicroBatchSplitter
from kftune.training.monitors import keep_tensorboard, start_monitors, tensorboard_dir
from kftune.training.optimizer import build_optimizer, build_scheduler, optimizer_step
from kftune.training.precision import autocast, loss_scaler, resolve_precision
from kftune.training.recipe import Recipe, Run, Split
from kftune.training.rng import seed_everything
from kftune.training.sharding import shard_model
from kftune.training.state import TrainState
from kftune.training.validation import Validator

log = logging.getLogger("kftune.train")

HISTORY_FILE = "training_history.json"


def epoch_batches(
    lengths: np.ndarray, batch_size: int, seed: int, epoch: int, group_by_length: bool, group_batches: int = 8
) -> list[np.ndarray]:
    """The epoch's batches of example indices, the same on every rank.

    With ``group_by_length`` the shuffled order is cut into mega-batches of ``group_batches`` batches, each
    sorted by length (so batches hold texts of similar length and need little padding), and
    the batch order is shuffled again so that the loss sees lengths in random order; this is
    the scheme of transformers' ``LengthGroupedSampler`` (which uses 50).
    """
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(lengths))
    if group_by_length:
        mega = batch_size * group_batches
        chunks = np.split(order, range(mega, len(order), mega))
        order = np.concatenate([chunk[np.argsort(-lengths[chunk], kind="stable")] for chunk in chunks])
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    if group_by_length:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches


@dataclass(frozen=True)
class Schedule:
    """Which micro-batches this rank runs in each epoch, and how they group into optimizer steps.

    Every rank runs as many micro-batches (the epoch's batches dealt out in turn; the remainder that would leave
    some ranks one short is dropped), so the ranks' optimizer steps pair up."""

    lengths: np.ndarray
    batch_size: int
    accumulation: int
    seed: int
    group_by_length: bool
    group_batches: int
    rank: int
    world: int
    micro_per_epoch: int
    total_steps: int

    @classmethod
    def plan(cls, lengths: np.ndarray, config: TrainConfig, ranks: Ranks) -> Schedule:
        batch_size, accumulation = config.per_device_train_batch_size, config.gradient_accumulation_steps
        micro_per_epoch = len(epoch_batches(lengths, batch_size, config.seed, 0, False)) // ranks.world
        if micro_per_epoch == 0:
            raise ValueError(f"{len(lengths)} training examples are fewer than {ranks.world} batches")
        total_steps = math.ceil(micro_per_epoch / accumulation) * config.num_train_epochs
        if config.max_steps:
            total_steps = min(total_steps, config.max_steps)
        return cls(lengths, batch_size, accumulation, config.seed, config.group_by_length,
                   config.length_group_batches, ranks.rank, ranks.world, micro_per_epoch, total_steps)

    def micro_batches(self, epoch: int) -> list[np.ndarray]:
        """This rank's micro-batches (example indices) of ``epoch``."""
        batches = epoch_batches(self.lengths, self.batch_size, self.seed, epoch, self.group_by_length,
                                self.group_batches)
        return batches[self.rank : self.micro_per_epoch * self.world : self.world]

    def steps(self, start: int) -> list[range]:
        """The micro-batches of each optimizer step of an epoch, from micro-batch ``start`` on."""
        return [range(first, min(first + self.accumulation, self.micro_per_epoch))
                for first in range(start, self.micro_per_epoch, self.accumulation)]


def default_checkpoint_dir(output_dir: Path) -> Path:
    return output_dir.with_name(output_dir.name + ".checkpoints")


def load_data(recipe: Recipe, run: Run) -> tuple[object, Split, Split]:
    """(tokenizer, train split, validation split) of the dataset, the texts cut to ``max_train_length``; with
    ``train_on=train+validation`` the validation examples are trained on too."""
    from transformers import AutoTokenizer

    splits, _ = load_splits(run.dataset_dir)
    tokenizer = AutoTokenizer.from_pretrained(str(run.dataset_dir / TOKENIZER_DIR))
    train_split, val_split = splits["train"], splits["validation"]
    if run.config.train_on == "train+validation":
        from datasets import concatenate_datasets

        train_split = concatenate_datasets([train_split, val_split])
    return tokenizer, loop_split(train_split, tokenizer, recipe, run), loop_split(val_split, tokenizer, recipe, run)


def loop_split(split, tokenizer, recipe: Recipe, run: Run) -> Split:
    """A tokenized split as the loop draws from it: the recipe's collator, and lengths cut to max_train_length."""
    lengths = np.asarray(split[LENGTH])
    if run.config.max_train_length:
        lengths = np.minimum(lengths, run.config.max_train_length)
    return Split(recipe.collator(split, tokenizer, run), lengths)


def place_model(model: torch.nn.Module, config: TrainConfig, ranks: Ranks, precision: str) -> torch.nn.Module:
    """Put ``model`` on this rank's device in training mode, shared as ``config.sharding`` says; the module the
    training forward passes run through (DistributedDataParallel's wrapper, or the model itself)."""
    if ranks.distributed and config.sharding == "fsdp":
        # FSDP2: each decoder layer's weights (and their gradients, optimizer state) split over the ranks, gathered
        # in ``precision``. No model.to(device) first: fully_shard moves each unit to the device as it shards it,
        # so the whole model is never there at once.
        shard_model(model, precision)
        return model.train()
    if config.training_mode != "qlora":  # a 4-bit model is placed on its device as it loads
        model.to(ranks.device)
    model.train()
    if not ranks.distributed:
        return model
    return torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[ranks.local_rank] if ranks.device.type == "cuda" else None)


def training_loss(model, collate, recipe: Recipe, run: Run, indices: np.ndarray) -> torch.Tensor:
    """The task's training loss of the examples ``indices`` through ``model``: collated, on the device, under
    autocast."""
    batch = {k: v.to(run.device, non_blocking=True) for k, v in collate(indices).items()}
    with autocast(run.device, run.precision):
        return recipe.loss(model, batch, run.config)


def log_start(config: TrainConfig, model, schedule: Schedule, run: Run) -> None:
    trainable, total = trainable_parameters(model)
    log.info(
        "training %s (%s: %d of %d parameters trainable): %d examples, %d epochs, %d process(es) x batch %d "
        "x accumulation %d, %d optimizer steps, precision=%s, device=%s, threads=%d",
        config.model, config.training_mode, trainable, total, len(schedule.lengths), config.num_train_epochs,
        schedule.world, schedule.batch_size, schedule.accumulation, schedule.total_steps, run.precision,
        run.device.type, torch.get_num_threads(),
    )


def stop_preempted(checkpointer: Checkpointer, state: TrainState, ranks: Ranks) -> None:
    """SIGTERM reached the job: checkpoint where it is and exit (a restart resumes from there)."""
    path = checkpointer.save(state)
    ranks.finish()
    if ranks.is_main:
        log.warning("SIGTERM: stopped at step %d after writing %s; a restart resumes from it", state.step, path)
    raise SystemExit(128 + signal.SIGTERM)


def write_model(model, recipe: Recipe, run: Run, tokenizer, validation: Split, history: dict,
                output_dir: Path) -> None:
    """The trained model directory, written atomically: the recipe's model and task files, the tokenizer and the
    training history."""
    with atomic_directory(output_dir) as tmp:
        recipe.write_model(model, tmp, validation, run)
        tokenizer.save_pretrained(str(tmp))
        (tmp / HISTORY_FILE).write_text(json.dumps(history, indent=2), encoding="utf-8")
        keep_tensorboard(output_dir, tmp)
    shutil.rmtree(tensorboard_dir(output_dir), ignore_errors=True)


def train(config: TrainConfig, dataset_dir: Path, output_dir: Path, halve_at_steps: Collection[int] = ()) -> dict:
    """Fine-tune in this process (one rank of a torchrun job); return the history on rank 0.

    Resumes from the newest valid checkpoint in the checkpoint directory if there is one: the resumed run
    continues with the same batches, RNG states and optimizer state, so its result equals that of a run that
    was never interrupted. Out of GPU memory in a micro-batch, the loop halves the micro-batch, doubles gradient
    accumulation and redoes the optimizer step (:mod:`~kftune.training.microbatch`); ``halve_at_steps`` (1-based
    optimizer steps) halves deliberately before those steps, as an out-of-memory error in them would: for
    tests, not a setting.
    """
    info = dataset_task(dataset_dir)
    config = resolve_task(config, dataset_dir)
    task = task_named(config.task)
    recipe: Recipe = task.recipe()
    preemption = Preemption()
    with Ranks.start() as ranks:  # which leaves the process group at the end, on an error too
        fsdp = ranks.distributed and config.sharding == "fsdp"
        precision = resolve_precision(config.mixed_precision, ranks.device)
        seed_everything(config.seed)
        run = Run(config, dataset_dir, info, resolve_model(config.model), ranks.device, precision)
        tokenizer, train_split, val_split = load_data(recipe, run)
        model = recipe.build_model(run)
        forward = place_model(model, config, ranks, precision)  # what the training forward passes run through
        recipe.start(model, train_split, val_split, run)  # from the starting weights, before any restore
        schedule = Schedule.plan(train_split.lengths, config, ranks)
        if ranks.device.type == "cpu":
            check_model_fits(model, schedule.batch_size, int(train_split.lengths.max()), recipe.vocabulary_size(model),
                             log_estimate=ranks.is_main)
        optimizer = build_optimizer(model, config, ranks.device, fused=not fsdp)
        scheduler = build_scheduler(optimizer, config, schedule.total_steps)
        scaler = loss_scaler(precision)
        checkpointer = Checkpointer(
            Path(config.checkpoint_dir) if config.checkpoint_dir else default_checkpoint_dir(output_dir), config,
            model, optimizer, scheduler, scaler, ranks, fsdp=fsdp, trained_only=recipe.trains_adapters_only(config))

        state = checkpointer.restore() or TrainState.start(config, ranks.world)
        splitter = MicroBatchSplitter(
            forward, partial(training_loss, forward, train_split.collate, recipe, run), ranks, scaler,
            schedule.batch_size, schedule.accumulation, state.micro_batching, fsdp=fsdp, halve_at_steps=halve_at_steps)
        validator = Validator(
            config, partial(recipe.validate, model, val_split, run), checkpointer.model_weights, ranks,
            task.higher_is_better(config.metric_for_best_model), state.best, every_rank=fsdp,
            trivial=recipe.trivial_scores, gain=task.gain)
        records = TrainingLog(state.records, schedule.total_steps, config.logging_steps, ranks,
                              start_monitors(output_dir, asdict(config)) if ranks.is_main else ())
        if ranks.is_main:
            log_start(config, model, schedule, run)
        records.start(state.step)
        for epoch in range(state.epoch, config.num_train_epochs):
            if state.done:
                break
            batches = schedule.micro_batches(epoch)
            records.start_epoch(resumed_mid_epoch=state.micro > 0)
            for group in schedule.steps(state.micro):  # one optimizer step's micro-batches
                micro_batches = [batches[m] for m in group]
                records.micro_batches(splitter.step(micro_batches, state.step), micro_batches, schedule.lengths)
                optimizer_step(model, optimizer, scheduler, scaler, config.max_grad_norm)
                state.step, state.micro = state.step + 1, group.stop
                records.step(state.step, epoch, (group.stop - 1) / schedule.micro_per_epoch, scheduler.get_last_lr()[0])
                if state.step >= schedule.total_steps:
                    break
                if preemption.agreed(ranks):
                    stop_preempted(checkpointer, state, ranks)
                if config.save_steps and state.step % config.save_steps == 0:
                    checkpointer.save(state)
            seconds = records.epoch_seconds()
            validated = validator.validate(epoch)
            if ranks.is_main:
                records.epoch(epoch, seconds, validated, config.metric_for_best_model)
            stop = validator.should_stop(epoch, validated)
            state.epoch, state.micro = epoch + 1, 0
            state.done = stop or state.step >= schedule.total_steps or epoch + 1 == config.num_train_epochs
            checkpointer.save(state)
        preemption.restore()

        history = state.records.history
        if ranks.is_main:
            history = records.finish(state.best, state.micro_batching, config.metric_for_best_model, precision,
                                     config.training_mode)
            if fsdp:  # the best weights into an unsharded copy of the model, which this rank alone writes
                model = recipe.build_model(run)
                model.load_state_dict(state.best.weights, strict=not recipe.trains_adapters_only(config))
            else:
                checkpointer.load_model_weights(state.best.weights)
            write_model(model, recipe, run, tokenizer, val_split, history, output_dir)
            log.info("best epoch %d (%s %.4f); model written to %s", state.best.epoch + 1, config.metric_for_best_model,
                     state.best.score, output_dir)
        return history


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="kftune training worker (started by torchrun, or alone for one process)"
    )
    parser.add_argument("--config", required=True, type=Path, help="TrainConfig as JSON")
    parser.add_argument("--dataset", required=True, type=Path, help="preprocessed dataset artifact")
    parser.add_argument("--output", required=True, type=Path, help="model directory to write")
    args = parser.parse_args(argv)
    rank = int(os.environ.get("RANK", 0))
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING,
        format=f"%(asctime)s [rank {rank}] %(message)s",
        stream=sys.stdout,
    )
    config = TrainConfig.from_json(args.config)
    train(config, args.dataset, args.output)


if __name__ == "__main__":
    main()
