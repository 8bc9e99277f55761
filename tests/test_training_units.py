"""The training loop's units, each on its own: the TrainState through a real checkpoint file, the out-of-memory
micro-batch splitter, the validator's decisions, precision, the batch schedule and the training log."""

from __future__ import annotations

import logging
from dataclasses import asdict, fields, is_dataclass, replace

import numpy as np
import pytest
import torch

from kftune.errors import ConfigError
from kftune.training import precision
from kftune.training.checkpoint import STATE_FILE, Checkpointer, save_checkpoint, verify_checkpoint
from kftune.training.config import TrainConfig
from kftune.training.distributed import Ranks
from kftune.training.history import TrainingLog
from kftune.training.loop import Schedule
from kftune.training.microbatch import MicroBatchSplitter, is_out_of_memory, pieces
from kftune.training.pruning import PruningTarget
from kftune.training.state import BestModel, MicroBatching, Records, TrainState
from kftune.training.validation import EpochScores, Validator

ALONE = Ranks(rank=0, world=1, local_rank=0, device=torch.device("cpu"), distributed=False)


def _same(a, b) -> bool:
    """Equality that looks into dicts and lists of tensors."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def _leaves(obj, prefix: str = "") -> dict:
    """Every field of a (nested) dataclass, by dotted name."""
    found = {}
    for f in fields(obj):
        value = getattr(obj, f.name)
        found.update(_leaves(value, f"{prefix}{f.name}.") if is_dataclass(value) else {prefix + f.name: value})
    return found


# --- TrainState and the Checkpointer ---------------------------------------------------------------------------


def _training_objects(seed: int):
    torch.manual_seed(seed)
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (step + 1))
    return model, optimizer, scheduler, precision.loss_scaler("no")


def _a_state(config: TrainConfig) -> TrainState:
    """A state whose every field differs from that of a run that has not started."""
    history = {"epochs": [{"epoch": 1, "val_loss": 0.5}], "steps": [{"step": 2, "loss": 0.7}], "config": {"seed": 3},
               "world_size": 1}
    return TrainState(
        records=Records(history, loss_sum=2.5, loss_count=3),
        best=BestModel(score=0.75, epoch=2, weights={"weight": torch.arange(6.0).view(2, 3)}, stale_epochs=1,
                       beat_trivial=True, pruned_at_epoch=4),
        micro_batching=MicroBatching(split=4, sync_after_backward=True, changes=[
            {"step": 3, "micro_batch": 8, "gradient_accumulation": 2, "reason": "out of memory"}]),
        step=17, epoch=3, micro=5, done=True,
    )


def test_every_field_of_the_train_state_survives_a_checkpoint_file(tmp_path):
    config = TrainConfig(task="classification", save_total_limit=0)
    state = _a_state(config)
    fresh = _leaves(TrainState.start(config, world=1))
    unchanged = [name for name, value in _leaves(state).items() if _same(value, fresh[name])]
    assert not unchanged, f"give these fields a value that is not the default: {unchanged}"

    model, optimizer, scheduler, scaler = _training_objects(seed=0)
    model(torch.ones(4, 3)).sum().backward()
    optimizer.step()
    scheduler.step()
    rng_before = torch.get_rng_state()
    path = Checkpointer(tmp_path, config, model, optimizer, scheduler, scaler, ALONE).save(state)
    assert verify_checkpoint(path) is None
    torch.load(path / STATE_FILE, weights_only=True)  # plain values and tensors only

    torch.rand(100)  # move the generator on: restore must set it back
    other = _training_objects(seed=1)
    restored = Checkpointer(tmp_path, config, *other, ALONE).restore()
    assert _same(restored.to_checkpoint(), state.to_checkpoint())
    assert all(_same(_leaves(restored)[name], value) for name, value in _leaves(state).items())
    assert _same(other[0].state_dict(), model.state_dict())
    assert _same(other[1].state_dict(), optimizer.state_dict())
    assert other[2].state_dict() == scheduler.state_dict()
    assert torch.equal(torch.get_rng_state(), rng_before)


def test_a_checkpoint_of_an_older_format_is_refused_with_a_message(tmp_path):
    config = TrainConfig(task="classification")
    model, optimizer, scheduler, scaler = _training_objects(seed=0)
    checkpointer = Checkpointer(tmp_path, config, model, optimizer, scheduler, scaler, ALONE)
    assert checkpointer.restore() is None  # nothing there yet
    old = {"step": 4, "epoch": 0, "micro": 4, "done": False, "best_score": 0.5, "history": {}, "config": asdict(config)}
    save_checkpoint(tmp_path, 4, old)
    with pytest.raises(ConfigError, match=r"cannot be resumed: no records, best, micro_batching"):
        checkpointer.restore()


def test_checkpoints_of_a_frozen_base_keep_the_trained_weights_only(tmp_path):
    model, optimizer, scheduler, scaler = _training_objects(seed=0)
    model.bias.requires_grad_(False)
    config = TrainConfig(task="classification")
    checkpointer = Checkpointer(tmp_path, config, model, optimizer, scheduler, scaler, ALONE, trained_only=True)
    assert list(checkpointer.model_weights()) == ["weight"]
    checkpointer.load_model_weights({"weight": torch.zeros(2, 3)})  # the frozen bias is the base model's
    assert torch.equal(model.weight, torch.zeros(2, 3))
    with pytest.raises(ConfigError, match="do not fit the model"):
        checkpointer.load_model_weights({"weight": torch.zeros(2, 3), "lora_extra": torch.zeros(1)})
    full = Checkpointer(tmp_path, config, model, optimizer, scheduler, scaler, ALONE)
    assert list(full.model_weights()) == ["weight", "bias"]


# --- the out-of-memory micro-batch splitter ---------------------------------------------------------------------

X, Y = torch.randn(64, 4, generator=torch.Generator().manual_seed(0)), torch.randn(64)


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.linear = torch.nn.Linear(4, 1)
        self.dropout = torch.nn.Dropout(0.5)  # draws from the generator: a redone step must draw the same masks

    def loss(self, indices) -> torch.Tensor:
        out = self.dropout(self.linear(X[torch.as_tensor(indices)])).squeeze(-1)
        return ((out - Y[torch.as_tensor(indices)]) ** 2).mean()


def _splitter(model: Net, loss=None, **kwargs) -> MicroBatchSplitter:
    return MicroBatchSplitter(model, loss or model.loss, ALONE, precision.loss_scaler("no"), batch_size=8,
                              accumulation=2, state=MicroBatching(), **kwargs)


def _run_out_of_memory_after(model: Net, forwards: int, rows_over: int, seen: list, error=None):
    """The model's loss, raising CUDA's out-of-memory error (or ``error``) on pieces of more than ``rows_over``
    examples from the ``forwards``-th forward pass (0-based) on."""

    def loss(indices):
        seen.append(len(indices))
        if len(seen) > forwards and len(indices) > rows_over:
            raise error or torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 MiB")
        return model.loss(indices)

    return loss


def test_pieces_are_as_many_on_every_rank():
    indices = np.arange(10)
    assert all(np.array_equal(a, b) for a, b in zip(pieces(indices, 4), np.array_split(indices, 4), strict=True))
    # a short micro-batch (the epoch's last) still makes `split` pieces: the empty ones first, so the last piece,
    # whose backward pass averages the gradients under DDP, holds examples on every rank
    short = pieces(np.arange(3), 4)
    assert [p.tolist() for p in short] == [[], [0], [1], [2]]
    assert [len(p) for p in pieces(np.arange(8), 1)] == [8]


def test_an_out_of_memory_error_halves_the_micro_batch_and_redoes_the_step_as_a_halved_run_would(caplog):
    micro_batches = [np.arange(0, 8), np.arange(8, 16)]
    reference = Net()
    torch.manual_seed(1)
    halved = _splitter(reference, halve_at_steps={3})
    expected = halved.step(micro_batches, step=2)

    model, seen = Net(), []
    splitter = _splitter(model, _run_out_of_memory_after(model, forwards=1, rows_over=4, seen=seen))
    torch.manual_seed(1)
    with caplog.at_level(logging.WARNING, logger="kftune.train"):
        losses = splitter.step(micro_batches, step=2)
    # the first micro-batch whole, the second fails, then the step again in halves
    assert seen == [8, 8, 4, 4, 4, 4]
    assert splitter.state.split == 2 and losses == expected
    assert torch.equal(model.linear.weight.grad, reference.linear.weight.grad)
    assert splitter.state.changes == [
        {"step": 3, "micro_batch": 4, "gradient_accumulation": 4, "reason": "out of memory"}]
    assert halved.state.changes[0]["reason"] == "halving requested"
    assert caplog.messages == ["out of memory in optimizer step 3: micro-batch 8 -> 4, gradient accumulation 2 -> 4 "
                               "(the same 16 examples per step); redoing the step"]
    # later steps keep the split
    seen.clear()
    splitter.step(micro_batches, step=3)
    assert seen == [4, 4, 4, 4]


CUDA_LIBRARY_OUT_OF_MEMORY = [
    "CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`",
    "cuDNN error: CUDNN_STATUS_NOT_ENOUGH_WORKSPACE",
    "cuDNN error: CUDNN_STATUS_ALLOC_FAILED",
    "CUDA error: out of memory\nCUDA kernel errors might be asynchronously reported at some other API call",
    "NCCL error in: ProcessGroupNCCL.cpp:1970, unhandled cuda error (run with NCCL_DEBUG=INFO for details), NCCL "
    "version 2.27.3\nncclUnhandledCudaError: Call to CUDA function failed.\nLast error:\nCuda failure 'out of memory'",
]


def test_out_of_memory_is_torchs_error_or_a_cuda_librarys():
    assert is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 MiB"))
    for message in CUDA_LIBRARY_OUT_OF_MEMORY:
        assert is_out_of_memory(RuntimeError(message)), message
    for other in (RuntimeError("mat1 and mat2 shapes cannot be multiplied (8x4 and 3x1)"),
                  RuntimeError("Expected all tensors to be on the same device, but found at least two devices"),
                  RuntimeError("CUDA error: device-side assert triggered"),
                  RuntimeError("NCCL error: remote process exited or there was a network error"),
                  ValueError("CUDA out of memory")):
        assert not is_out_of_memory(other), other


def test_a_cuda_librarys_out_of_memory_error_is_recovered_and_others_end_the_step():
    micro_batches = [np.arange(0, 8), np.arange(8, 16)]
    reference = Net()
    torch.manual_seed(1)
    expected = _splitter(reference, halve_at_steps={1}).step(micro_batches, step=0)
    model, seen = Net(), []
    cublas = RuntimeError(CUDA_LIBRARY_OUT_OF_MEMORY[0])
    splitter = _splitter(model, _run_out_of_memory_after(model, forwards=0, rows_over=4, seen=seen, error=cublas))
    torch.manual_seed(1)
    assert splitter.step(micro_batches, step=0) == expected
    assert seen == [8, 4, 4, 4, 4] and splitter.state.changes[0]["reason"] == "out of memory"
    assert torch.equal(model.linear.weight.grad, reference.linear.weight.grad)

    model, seen = Net(), []
    shapes = RuntimeError("mat1 and mat2 shapes cannot be multiplied (8x4 and 3x1)")
    splitter = _splitter(model, _run_out_of_memory_after(model, forwards=0, rows_over=4, seen=seen, error=shapes))
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        splitter.step(micro_batches, step=0)
    assert seen == [8] and splitter.state.split == 1 and not splitter.state.changes


def test_pieces_are_weighted_by_their_share_of_the_examples():
    model = Net()
    model.dropout.p = 0.0
    splitter = _splitter(model)
    splitter.state.split = 3  # pieces of 3, 3 and 2
    (loss,) = splitter.step([np.arange(8)], step=0)
    whole = model.loss(np.arange(8)).item()
    assert loss == pytest.approx(whole, rel=1e-6)


def test_out_of_memory_at_one_example_is_a_clear_error():
    model, seen = Net(), []
    splitter = _splitter(model, _run_out_of_memory_after(model, forwards=0, rows_over=0, seen=seen))
    with pytest.raises(ConfigError, match="out of memory at micro-batch 1"):
        splitter.step([np.arange(8)], step=0)
    assert seen == [8, 4, 2, 1]


# --- the validator ------------------------------------------------------------------------------------------------


def _validator(config: TrainConfig, scores: list[float], best: BestModel, higher_is_better: bool = True):
    weights = {"w": torch.zeros(2)}
    scripted = iter(scores)
    validator = Validator(config, lambda: {"loss": 1.0, config.metric_for_best_model: next(scripted)},
                          lambda: weights, ALONE, higher_is_better, best)
    return validator, weights


def _run(validator: Validator, weights: dict, epochs: int) -> list[bool]:
    decisions = []
    for epoch in range(epochs):
        weights["w"] += 1  # the model trains on: the best epoch's weights must be a copy
        decisions.append(validator.should_stop(epoch, validator.validate(epoch)))
        if decisions[-1]:
            break
    return decisions


def test_early_stopping_after_patience_epochs_without_improvement():
    config = TrainConfig(task="classification", metric_for_best_model="accuracy", early_stopping_patience=2,
                         num_train_epochs=10)
    best = BestModel()
    validator, weights = _validator(config, [0.5, 0.7, 0.6, 0.7, 0.9], best)
    assert _run(validator, weights, 10) == [False, False, False, True]  # 0.7 again is no improvement
    assert (best.epoch, best.score, best.stale_epochs) == (1, 0.7, 2)
    assert torch.equal(best.weights["w"], torch.full((2,), 2.0))

    lower = BestModel()
    validator, weights = _validator(replace(config, metric_for_best_model="loss"), [0.9, 0.8, 0.85, 0.7], lower,
                                    higher_is_better=False)
    assert _run(validator, weights, 4) == [False, False, False, False]
    assert (lower.epoch, lower.score, lower.stale_epochs) == (3, 0.7, 0)


def test_early_stopping_waits_until_the_model_beats_the_trivial_answer(caplog):
    """The multi-label run of issue 34: micro F1 flat for three epochs while subset accuracy is below predicting no
    label (0.62). Patience counts only from the epoch that beats the empty set (better on one score, worse on
    none), so the run goes on to learn; each waiting epoch is logged with the score that holds it back."""
    import logging

    from kftune.tasks import task_named

    config = TrainConfig(task="multilabel", metric_for_best_model="f1_micro", early_stopping_patience=2,
                         num_train_epochs=10)
    epochs = [{"f1_micro": 0.155, "subset_accuracy": 0.00, "hamming_loss": 0.380},
              {"f1_micro": 0.161, "subset_accuracy": 0.00, "hamming_loss": 0.377},
              {"f1_micro": 0.117, "subset_accuracy": 0.04, "hamming_loss": 0.475},
              {"f1_micro": 0.160, "subset_accuracy": 0.44, "hamming_loss": 0.314},
              {"f1_micro": 0.450, "subset_accuracy": 0.66, "hamming_loss": 0.047},
              {"f1_micro": 0.440, "subset_accuracy": 0.66, "hamming_loss": 0.048},
              {"f1_micro": 0.430, "subset_accuracy": 0.65, "hamming_loss": 0.049}]
    empty_set = {"f1_micro": 0.0, "subset_accuracy": 0.62, "hamming_loss": 0.049}
    task, scripted = task_named("multilabel"), iter(epochs)
    weights = {"w": torch.zeros(2)}
    best = BestModel()
    validator = Validator(config, lambda: {"loss": 1.0, **next(scripted)}, lambda: weights, ALONE, True, best,
                          trivial=lambda: empty_set, gain=task.gain)
    with caplog.at_level(logging.INFO, logger="kftune.train"):
        decisions = _run(validator, weights, 10)
    # without the trivial answer, patience 2 would have stopped after epoch 4 (best: epoch 2, 0.161)
    assert decisions == [False] * 6 + [True]
    assert (best.epoch, best.score, best.beat_trivial) == (4, 0.450, True)
    waits = [r.getMessage() for r in caplog.records if "early stopping waits" in r.getMessage()]
    assert len(waits) == 4 and "subset_accuracy 0.0000 against 0.6200" in waits[0]
    assert "subset_accuracy 0.4400 against 0.6200, hamming_loss 0.3140 against 0.0490" in waits[3]

    tie = BestModel()  # equal to the trivial answer everywhere: not learnt either
    scripted = iter([empty_set] * 4)
    validator = Validator(config, lambda: {"loss": 1.0, **next(scripted)}, lambda: weights, ALONE, True, tie,
                          trivial=lambda: empty_set, gain=task.gain)
    assert _run(validator, weights, 4) == [False] * 4 and not tie.beat_trivial

    plain = BestModel()  # a task without a trivial answer: patience counts from the first epoch
    scripted = iter(epochs)
    validator = Validator(config, lambda: {"loss": 1.0, **next(scripted)}, lambda: weights, ALONE, True, plain)
    assert _run(validator, weights, 10) == [False, False, False, True]


def test_each_encoder_tasks_trivial_answer_is_the_one_fitted_on_training():
    """The logits early stopping scores as the trivial answer: the training split's most frequent class, the
    training mean (0 in the head's normalised units), no label, and O for every word."""
    import numpy as np

    from kftune.tasks import task_named

    logits = np.random.default_rng(0).normal(size=(5, 3))
    classification = task_named("classification")
    trivial = classification.trivial_logits(logits, {"labels": ["a", "b", "c"], "majority_label": 2})
    assert (trivial.argmax(-1) == 2).all()
    assert classification.trivial_logits(logits, {"labels": ["a", "b", "c"]}) is None  # a dataset without it

    regression = task_named("regression")
    info = {"target_mean": 3.5, "target_std": 2.0}
    assert np.allclose(regression.predictions(regression.trivial_logits(logits[:, :1], info), info), 3.5)

    multilabel = task_named("multilabel")
    truth = np.array([[0, 1, 0], [0, 0, 0], [1, 0, 0], [0, 0, 0], [0, 0, 0]])
    scores = multilabel.scores(multilabel.trivial_logits(logits, {"labels": ["x", "y", "z"]}), truth,
                               {"labels": ["x", "y", "z"]})
    assert scores["subset_accuracy"] == 0.6 and scores["f1_micro"] == 0.0

    token = task_named("token-classification")
    tags = ["B-PER", "I-PER", "O"]
    trivial = token.trivial_logits(np.zeros((2, 4, 3)), {"labels": tags})
    assert (trivial.argmax(-1) == 2).all()
    assert token.trivial_logits(np.zeros((2, 4, 2)), {"labels": ["B-PER", "I-PER"]}) is None


def test_classification_records_its_training_splits_most_frequent_class():
    import datasets

    from kftune.tasks import task_named

    train = datasets.Dataset.from_dict({"label": [0, 1, 1, 2, 1]})
    assert task_named("classification").train_info(train, {"labels": ["a", "b", "c"]}) == {"majority_label": 1}


def test_training_on_validation_keeps_the_last_epoch_and_never_stops_early():
    config = TrainConfig(task="classification", metric_for_best_model="accuracy", early_stopping_patience=1,
                         num_train_epochs=4, train_on="train+validation")
    best = BestModel()
    validator, weights = _validator(config, [0.9, 0.5, 0.4, 0.3], best)
    assert _run(validator, weights, 4) == [False] * 4
    assert (best.epoch, best.score) == (3, 0.3)


class FakeTrial:
    def __init__(self, prune_at: set[int]):
        self.prune_at, self.reports = prune_at, []

    def report(self, value: float, epoch: int) -> bool:
        self.reports.append((epoch, value))
        return epoch in self.prune_at


def test_a_pruned_trial_stops_unless_it_is_the_last_epoch_and_early_stopping_comes_first():
    target = PruningTarget("unused.journal", "s", 0).to_json()
    config = TrainConfig(task="classification", metric_for_best_model="accuracy", early_stopping_patience=0,
                         num_train_epochs=3, pruning=target)
    best = BestModel()
    validator, weights = _validator(config, [0.5, 0.6, 0.7], best)
    validator.pruning = FakeTrial(prune_at={2})
    assert _run(validator, weights, 3) == [False, True]
    assert best.pruned_at_epoch == 2 and validator.pruning.reports == [(1, 0.5), (2, 0.6)]

    last = BestModel()
    validator, weights = _validator(config, [0.5, 0.6, 0.7], last)
    validator.pruning = FakeTrial(prune_at={3})  # after the last epoch there is nothing left to save
    assert _run(validator, weights, 3) == [False, False, False] and last.pruned_at_epoch == 0

    patient = replace(config, early_stopping_patience=1)
    pruned = BestModel()
    validator, weights = _validator(patient, [0.5, 0.4], pruned)
    validator.pruning = FakeTrial(prune_at={1, 2})
    assert _run(validator, weights, 2) == [True] and pruned.pruned_at_epoch == 1
    validator, weights = _validator(patient, [0.5, 0.4], BestModel())
    validator.pruning = FakeTrial(prune_at=set())
    assert _run(validator, weights, 2) == [False, True]
    assert validator.pruning.reports == [(1, 0.5)]  # epoch 2 stopped early: not reported to the search


# --- precision ----------------------------------------------------------------------------------------------------


def test_precision_resolution(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    monkeypatch.setattr(precision, "cpu_has_fast_bf16", lambda: True)
    assert precision.resolve_precision("auto", cpu) == "bf16"
    monkeypatch.setattr(precision, "cpu_has_fast_bf16", lambda: False)
    assert precision.resolve_precision("auto", cpu) == "no"
    assert precision.resolve_precision("bf16", cpu) == "bf16" and precision.resolve_precision("no", cpu) == "no"
    with pytest.raises(ConfigError, match="fp16 needs a CUDA GPU"):
        precision.resolve_precision("fp16", cpu)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    assert precision.resolve_precision("auto", cuda) == "fp16" and precision.resolve_precision("fp16", cuda) == "fp16"
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    assert precision.resolve_precision("auto", cuda) == "bf16"


@pytest.mark.parametrize("capability, chosen", [((7, 0), "fp16"), ((7, 5), "fp16"), ((8, 0), "bf16"), ((8, 6), "bf16"),
                                                ((9, 0), "bf16"), ((12, 0), "bf16")])
def test_auto_precision_on_cuda_follows_the_compute_capability(monkeypatch, capability, chosen):
    """V100 (7.0) and T4 (7.5) only emulate bf16, which torch.cuda.is_bf16_supported() counts as support by default:
    auto must pick fp16 with loss scaling there, bf16 from Ampere (8.0) on."""
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)  # what an emulating GPU says
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    assert precision.bf16_is_native_at(capability) == (chosen == "bf16")
    assert precision.resolve_precision("auto", torch.device("cuda", 0)) == chosen
    assert precision.has_native_bf16(torch.device("cuda", 0)) == (chosen == "bf16")


def test_autocast_and_loss_scaling_follow_the_precision():
    cpu = torch.device("cpu")
    x = torch.randn(4, 4)
    with precision.autocast(cpu, "bf16"):
        assert (x @ x).dtype == torch.bfloat16
    with precision.autocast(cpu, "no"):
        assert (x @ x).dtype == torch.float32
    if torch.cuda.is_available():
        assert precision.loss_scaler("fp16").is_enabled()
    assert not precision.loss_scaler("bf16").is_enabled() and not precision.loss_scaler("no").is_enabled()


# --- the batch schedule and the training log --------------------------------------------------------------------


def test_every_rank_gets_as_many_micro_batches_and_steps_group_them():
    lengths = np.arange(1, 121)  # 120 examples in 15 batches of 8: 7 per rank for 2 ranks, the 15th dropped
    config = TrainConfig(task="classification", per_device_train_batch_size=8, gradient_accumulation_steps=3,
                         num_train_epochs=2)
    ranks = [Ranks(rank, 2, rank, torch.device("cpu"), True) for rank in (0, 1)]
    plans = [Schedule.plan(lengths, config, r) for r in ranks]
    assert [p.micro_per_epoch for p in plans] == [7, 7] and plans[0].total_steps == 3 * 2
    mine = [p.micro_batches(0) for p in plans]
    assert [len(m) for m in mine] == [7, 7]
    seen = np.concatenate([*mine[0], *mine[1]])
    assert len(set(seen.tolist())) == len(seen) == 7 * 2 * 8
    assert plans[0].steps(0) == [range(0, 3), range(3, 6), range(6, 7)]
    assert plans[0].steps(3) == [range(3, 6), range(6, 7)]  # a resumed epoch
    with pytest.raises(ValueError, match="fewer than 2 batches"):
        Schedule.plan(np.arange(1, 9), config, ranks[0])


def test_the_training_log_records_steps_epochs_and_how_the_run_went():
    config = TrainConfig(task="classification")
    state = TrainState.start(config, world=1)
    records = TrainingLog(state.records, total_steps=5, logging_steps=2, ranks=ALONE)
    records.start(0)
    records.start_epoch(resumed_mid_epoch=False)
    lengths = np.full(16, 10)
    for step in range(1, 6):
        records.micro_batches([float(step)], [np.arange(2)], lengths)
        records.step(step, 0, step / 5, 1e-3)
    assert [r["step"] for r in state.records.history["steps"]] == [2, 4, 5]  # every 2nd, and the last
    assert state.records.history["steps"][-1]["loss"] == pytest.approx(3.0)
    records.epoch(0, 2.0, EpochScores({"loss": 0.5, "f1_macro": 0.8}, improved=True), "f1_macro")
    (epoch,) = state.records.history["epochs"]
    assert epoch["train_samples_per_second"] == 10 / 2.0 and epoch["train_tokens_per_second"] == 100 / 2.0
    assert epoch["val_f1_macro"] == 0.8
    history = records.finish(BestModel(score=0.8, epoch=0), MicroBatching(), "f1_macro", "no", "full")
    assert history["best_epoch"] == 1 and history["best_score"] == 0.8
    assert "micro_batch_changes" not in history and "pruned_at_epoch" not in history
    changed = MicroBatching(changes=[{"step": 1}])
    history = records.finish(BestModel(score=0.8, epoch=0, pruned_at_epoch=1), changed, "f1_macro", "no", "full")
    assert history["micro_batch_changes"] == [{"step": 1}] and history["pruned_at_epoch"] == 1


def test_the_training_modes_and_sharding_a_task_takes_follow_its_kind_of_model():
    """Encoder tasks take freeze_encoder and prompt_tuning, not qlora or fsdp; the causal LM the other way round."""
    TrainConfig(task="causal-lm", training_mode="qlora", sharding="ddp").validate()
    TrainConfig(task="causal-lm", training_mode="lora", sharding="fsdp").validate()
    for mode in ("freeze_encoder", "prompt_tuning"):
        with pytest.raises(ConfigError, match=f"training_mode {mode} is for tasks classification, regression"):
            TrainConfig(task="causal-lm", training_mode=mode).validate()
    for task in ("classification", "regression", "multilabel", "token-classification"):
        TrainConfig(task=task, training_mode="prompt_tuning").validate()
        with pytest.raises(ConfigError, match="qlora is for tasks causal-lm, dpo;"):
            TrainConfig(task=task, training_mode="qlora").validate()
        with pytest.raises(ConfigError, match="sharding fsdp is for task causal-lm"):
            TrainConfig(task=task, sharding="fsdp").validate()


def test_qlora_is_refused_under_fsdp_in_one_line():
    """Sharding bitsandbytes' 4-bit parameters drops their quantisation state: the combination stops at validation,
    before anything is launched, with one line saying what to use instead."""
    config = TrainConfig(task="causal-lm", training_mode="qlora", sharding="fsdp")
    with pytest.raises(ConfigError, match="qlora cannot be sharded with sharding fsdp") as refused:
        config.validate()
    assert "\n" not in str(refused.value) and "use sharding ddp" in str(refused.value)
