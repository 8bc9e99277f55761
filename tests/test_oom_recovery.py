"""Out-of-memory recovery in the training loop: an OOM in a micro-batch halves it and redoes the optimizer step,
giving bit for bit the run that halves deliberately at that step, on one process and agreed by 2 gloo ranks; and
the CPU memory estimate that refuses runs which cannot fit."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers.models.bert import modeling_bert

from kftune.errors import ConfigError
from kftune.training import memory
from kftune.training.checkpoint import checkpoint_step, list_checkpoints
from kftune.training.config import TrainConfig
from kftune.training.loop import HISTORY_FILE, train

OOM_MESSAGE = "CUDA out of memory. Tried to allocate 20.00 MiB (GPU 0; 15.77 GiB total capacity)"


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(path / "model.safetensors")


def _same_weights(a: Path, b: Path) -> bool:
    wa, wb = _weights(a), _weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def _losses(history: dict) -> list[float]:
    return [record["loss"] for record in history["steps"]]


def oom_encoder(monkeypatch, rows_over: int, from_forward: int = 0) -> list[int]:
    """Make the BERT encoder raise CUDA's out-of-memory error on training batches of more than ``rows_over`` rows,
    from the ``from_forward``-th training forward pass (0-based) on; returns the batch sizes it saw."""
    original = modeling_bert.BertEncoder.forward
    seen = []

    def forward(self, hidden_states, *args, **kwargs):
        if torch.is_grad_enabled():
            unpadding = kwargs.get("unpadding")  # padding-free batches reach the encoder as one row of real tokens
            seen.append(unpadding.shape[0] if unpadding is not None else hidden_states.shape[0])
            if len(seen) > from_forward and seen[-1] > rows_over:
                raise torch.OutOfMemoryError(OOM_MESSAGE)
        return original(self, hidden_states, *args, **kwargs)

    monkeypatch.setattr(modeling_bert.BertEncoder, "forward", forward)
    return seen


@pytest.fixture
def config(tiny_model, tmp_path) -> TrainConfig:
    # 239 examples in micro-batches of 16, 2 per optimizer step: 8 steps an epoch; 6 steps in all
    return TrainConfig(model=str(tiny_model), num_train_epochs=1, per_device_train_batch_size=16,
                       gradient_accumulation_steps=2, max_steps=6, logging_steps=1, learning_rate=1e-3,
                       early_stopping_patience=0, save_steps=2, save_total_limit=0,
                       checkpoint_dir=str(tmp_path / "ckpt"))


def test_oom_mid_step_equals_halving_at_that_step(tmp_path, prepared, config, monkeypatch, caplog):
    """OOM in the second micro-batch of step 3 (after the first one's gradients were accumulated)."""
    config_b = replace(config, checkpoint_dir=str(tmp_path / "ckpt_b"))
    history_b = train(config_b, prepared, tmp_path / "b", halve_at_steps={3})
    seen = oom_encoder(monkeypatch, rows_over=8, from_forward=5)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="kftune.train"):
        history_a = train(config, prepared, tmp_path / "a")
    # forwards 0-4 whole (steps 1, 2 and step 3's first micro-batch), the 6th fails, step 3 is redone in halves
    assert seen[:7] == [16, 16, 16, 16, 16, 16, 8] and max(seen[6:]) == 8
    assert _same_weights(tmp_path / "a", tmp_path / "b")
    assert _losses(history_a) == _losses(history_b) and len(_losses(history_a)) == 6
    assert history_a["micro_batch_changes"] == [
        {"step": 3, "micro_batch": 8, "gradient_accumulation": 4, "reason": "out of memory"}
    ]
    assert history_b["micro_batch_changes"][0]["reason"] == "halving requested"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        "out of memory in optimizer step 3: micro-batch 16 -> 8, gradient accumulation 2 -> 4 "
        "(the same 32 examples per step); redoing the step"
    ]
    # a resume from step 4's checkpoint keeps running in halves (the split is in the checkpoint)
    monkeypatch.undo()
    for path in list_checkpoints(tmp_path / "ckpt"):
        if checkpoint_step(path) > 4:
            path.rename(path.with_name("old-" + path.name))
    train(config, prepared, tmp_path / "resumed")
    assert _same_weights(tmp_path / "a", tmp_path / "resumed")


def test_without_oom_the_run_is_unchanged(tmp_path, prepared, config, monkeypatch):
    config = replace(config, save_steps=0, checkpoint_dir="")  # each run its own checkpoints
    plain = train(config, prepared, tmp_path / "plain")
    seen = oom_encoder(monkeypatch, rows_over=16)  # never triggers
    watched = train(config, prepared, tmp_path / "watched")
    assert seen[:12] == [16] * 12 and "micro_batch_changes" not in watched
    assert _same_weights(tmp_path / "plain", tmp_path / "watched") and _losses(plain) == _losses(watched)
    # halving is not a no-op: the comparison above could fail
    monkeypatch.undo()
    train(config, prepared, tmp_path / "halved", halve_at_steps={1})
    assert not _same_weights(tmp_path / "plain", tmp_path / "halved")


def test_oom_at_micro_batch_1_is_a_clear_error(tmp_path, prepared, config, monkeypatch, caplog):
    seen = oom_encoder(monkeypatch, rows_over=0)
    with caplog.at_level(logging.WARNING, logger="kftune.train"), pytest.raises(
        ConfigError, match="out of memory at micro-batch 1: use a smaller model or max_train_length"
    ):
        train(config, prepared, tmp_path / "m")
    assert seen == [16, 8, 4, 2, 1]
    assert "micro-batch 2 -> 1, gradient accumulation 16 -> 32" in caplog.text
    assert not (tmp_path / "m").exists()


RANK1_OOM = textwrap.dedent('''
    """argv: oom|halve CONFIG DATASET OUTPUT. oom: on rank 1 only, the encoder runs out of memory on batches of more
    than 4 rows in step 2 (the gradient-synchronising micro-batch) and of more than 2 rows in step 4 (a piece under
    no_sync). halve: no error, the micro-batch halved deliberately before steps 2 and 4."""
    import logging
    import os
    import sys
    from pathlib import Path

    import torch
    from transformers.models.bert import modeling_bert

    from kftune.training.config import TrainConfig
    from kftune.training.loop import train

    original = modeling_bert.BertEncoder.forward
    forwards = []

    def forward(self, hidden_states, *args, **kwargs):
        if torch.is_grad_enabled():
            unpadding = kwargs.get("unpadding")  # padding-free: one row of real tokens
            rows = unpadding.shape[0] if unpadding is not None else hidden_states.shape[0]
            forwards.append(rows)
            n = len(forwards)
            if (n == 2 and rows > 4) or (n >= 7 and rows > 2):
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 MiB")
        return original(self, hidden_states, *args, **kwargs)

    mode, config, dataset, output = sys.argv[1:]
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    if mode == "oom" and os.environ["RANK"] == "1":
        modeling_bert.BertEncoder.forward = forward
    train(TrainConfig.from_json(config), Path(dataset), Path(output), halve_at_steps={2, 4} if mode == "halve" else ())
''')


def _torchrun_2(tmp_path: Path, mode: str, config: Path, prepared: Path) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--local-addr=127.0.0.1",
               "--nproc_per_node=2", str(tmp_path / "rank1_oom.py"), mode, str(config), str(prepared),
               str(tmp_path / mode)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def test_ranks_agree_to_halve_when_one_runs_out_of_memory(tmp_path, prepared, tiny_model):
    """2 gloo processes under torchrun; OOM on rank 1 only; both halve (no hang) in steps 2 and 4, and end where
    a run halving deliberately before those steps does."""
    config = TrainConfig(model=str(tiny_model), num_train_epochs=1, per_device_train_batch_size=8, max_steps=5,
                         logging_steps=1, learning_rate=1e-3, early_stopping_patience=0)
    config.to_json(tmp_path / "config.json")
    (tmp_path / "rank1_oom.py").write_text(RANK1_OOM)
    done = _torchrun_2(tmp_path, "oom", tmp_path / "config.json", prepared)
    history = json.loads((tmp_path / "oom" / HISTORY_FILE).read_text())
    assert [(c["step"], c["micro_batch"], c["reason"]) for c in history["micro_batch_changes"]] == [
        (2, 4, "out of memory"), (4, 2, "out of memory")
    ]
    assert [r["step"] for r in history["steps"]] == [1, 2, 3, 4, 5]
    assert "out of memory in optimizer step 2: micro-batch 8 -> 4" in done.stdout
    _torchrun_2(tmp_path, "halve", tmp_path / "config.json", prepared)
    assert _same_weights(tmp_path / "oom", tmp_path / "halve")
    halved = json.loads((tmp_path / "halve" / HISTORY_FILE).read_text())
    assert _losses(history) == _losses(halved)


BACKWARD_OOM = textwrap.dedent('''
    """argv: oom|halve CONFIG DATASET OUTPUT. oom: on rank 1 only, the backward pass of step 2's micro-batch of 8
    runs out of memory (raised by a hook on the encoder's output, inside autograd). halve: no error, the
    micro-batch halved deliberately before step 2."""
    import logging
    import os
    import sys
    from pathlib import Path

    import torch
    from transformers.models.bert import modeling_bert

    from kftune.training.config import TrainConfig
    from kftune.training.loop import train

    original = modeling_bert.BertEncoder.forward
    forwards = []

    def fail(grad):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 MiB")

    def forward(self, hidden_states, *args, **kwargs):
        output = original(self, hidden_states, *args, **kwargs)
        if torch.is_grad_enabled():
            unpadding = kwargs.get("unpadding")  # padding-free: one row of real tokens
            forwards.append(unpadding.shape[0] if unpadding is not None else hidden_states.shape[0])
            if len(forwards) == 2 and forwards[-1] > 4:
                output[0].register_hook(fail)
        return output

    mode, config, dataset, output = sys.argv[1:]
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    if mode == "oom" and os.environ["RANK"] == "1":
        modeling_bert.BertEncoder.forward = forward
    train(TrainConfig.from_json(config), Path(dataset), Path(output), halve_at_steps={2} if mode == "halve" else ())
''')


def test_an_out_of_memory_error_in_the_backward_pass_is_recovered_with_gradients_averaged_after_it(
    tmp_path, prepared, tiny_model
):
    """ddp_gradient_sync=after_backward: rank 1 runs out of memory inside step 2's backward pass, where DDP would
    be averaging gradients; both ranks halve and redo the step. The run ends where one with DDP's in-backward
    averaging (overlap) does when it halves deliberately before step 2 (and so switches to after_backward
    there): the same weights, so the gradients averaged after the backward equal DDP's in step 1."""
    config = TrainConfig(model=str(tiny_model), num_train_epochs=1, per_device_train_batch_size=8, max_steps=4,
                         logging_steps=1, learning_rate=1e-3, early_stopping_patience=0)
    replace(config, ddp_gradient_sync="after_backward").to_json(tmp_path / "after.json")
    config.to_json(tmp_path / "overlap.json")
    (tmp_path / "rank1_oom.py").write_text(BACKWARD_OOM)
    done = _torchrun_2(tmp_path, "oom", tmp_path / "after.json", prepared)
    history = json.loads((tmp_path / "oom" / HISTORY_FILE).read_text())
    assert [(c["step"], c["micro_batch"], c["reason"]) for c in history["micro_batch_changes"]] == [
        (2, 4, "out of memory")
    ]
    assert [r["step"] for r in history["steps"]] == [1, 2, 3, 4]
    assert "out of memory in optimizer step 2: micro-batch 8 -> 4" in done.stdout + done.stderr
    halved = _torchrun_2(tmp_path, "halve", tmp_path / "overlap.json", prepared)
    assert "gradients are averaged after the backward pass" in halved.stdout + halved.stderr
    assert _same_weights(tmp_path / "oom", tmp_path / "halve")
    assert _losses(history) == _losses(json.loads((tmp_path / "halve" / HISTORY_FILE).read_text()))


SHORT_LAST_BATCH = textwrap.dedent('''
    """argv: CONFIG DATASET OUTPUT: the micro-batch halved before steps 1 to 4, to 16 pieces."""
    import logging
    import sys
    from pathlib import Path

    from kftune.training.config import TrainConfig
    from kftune.training.loop import train

    config, dataset, output = sys.argv[1:]
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    train(TrainConfig.from_json(config), Path(dataset), Path(output), halve_at_steps={1, 2, 3, 4})
''')


def test_a_rank_with_the_short_last_micro_batch_runs_as_many_pieces(tmp_path, prepared, tiny_model):
    """239 examples in micro-batches of 15: 16 batches, the last of 14 examples, rank 1's 8th. Halved to 16 pieces,
    rank 0's micro-batches of 15 run 15 pieces of one example and an empty one, rank 1's last 14 and two empty ones:
    as many agreements on both ranks, so the collective calls pair up (with one piece per example the ranks made
    15 and 14 pieces, and rank 1's gradient all-reduce met rank 0's last agreement)."""
    config = TrainConfig(model=str(tiny_model), num_train_epochs=1, per_device_train_batch_size=15, max_steps=8,
                         logging_steps=1, learning_rate=1e-3, early_stopping_patience=0, save_steps=0)
    config.to_json(tmp_path / "config.json")
    (tmp_path / "short.py").write_text(SHORT_LAST_BATCH)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--local-addr=127.0.0.1",
               "--nproc_per_node=2", str(tmp_path / "short.py"), str(tmp_path / "config.json"), str(prepared),
               str(tmp_path / "m")]
    done = subprocess.run(command, env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"},
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    history = json.loads((tmp_path / "m" / HISTORY_FILE).read_text())
    assert [c["micro_batch"] for c in history["micro_batch_changes"]] == [8, 4, 2, 1]
    assert [r["step"] for r in history["steps"]] == list(range(1, 9))


# --- the CPU memory estimate -------------------------------------------------------------------------------


def test_estimate_grows_with_batch_and_length():
    base = dict(total_params=110_000_000, trainable_params=110_000_000, hidden_size=768, num_layers=12,
                num_heads=12)
    small = memory.estimate_training_memory(batch_size=8, seq_len=128, **base)
    assert small.weights == 440_000_000 and small.optimizer == 3 * 440_000_000
    bigger = memory.estimate_training_memory(batch_size=16, seq_len=128, **base)
    longer = memory.estimate_training_memory(batch_size=8, seq_len=256, **base)
    assert bigger.activations == 2 * small.activations and longer.activations > 2 * small.activations
    lora = memory.estimate_training_memory(batch_size=8, seq_len=128, **{**base, "trainable_params": 300_000})
    assert lora.total < small.total - 1_000_000_000
    # BERT-base at batch 32 x 128 needs several GiB (weights, optimizer, activations)
    assert 3 < memory.estimate_training_memory(batch_size=32, seq_len=128, **base).total / memory.GIB < 8


def test_available_memory_respects_a_cgroup_limit(tmp_path):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:  16000000 kB\nMemAvailable:    8000000 kB\n")
    cgroup = tmp_path / "cgroup"
    cgroup.mkdir()
    assert memory.available_memory(meminfo, cgroup) == 8_000_000 * 1024
    (cgroup / "memory.max").write_text("max\n")
    assert memory.available_memory(meminfo, cgroup) == 8_000_000 * 1024
    (cgroup / "memory.max").write_text(f"{4 * memory.GIB}\n")
    (cgroup / "memory.current").write_text(f"{memory.GIB}\n")
    assert memory.available_memory(meminfo, cgroup) == 3 * memory.GIB
    assert memory.available_memory(tmp_path / "none", tmp_path / "none") is None


def test_a_run_that_cannot_fit_is_refused_before_training(tmp_path, prepared, config, monkeypatch, caplog):
    monkeypatch.setattr(memory, "available_memory", lambda: 100 * 1024**2)
    with caplog.at_level(logging.INFO, logger="kftune.train"), pytest.raises(ConfigError) as refused:
        train(config, prepared, tmp_path / "m")
    message = str(refused.value)
    assert "only 0.1 GiB more is available" in message and "\n" not in message
    assert "per_device_train_batch_size" in message and "max_train_length" in message
    assert "training_mode=lora" in message
    assert "estimated peak memory per process" in caplog.text
    assert not (tmp_path / "m").exists() and not (tmp_path / "ckpt").exists()


def test_causal_lm_runs_in_halves(tmp_path, prepared_lm, tiny_causal_lm):
    """causal-lm (LoRA) in pieces: a mean of the pieces' token means, close to the whole micro-batch's loss."""
    config = TrainConfig(task="causal-lm", model=str(tiny_causal_lm), num_train_epochs=1, learning_rate=1e-2,
                         per_device_train_batch_size=8, max_steps=3, logging_steps=1)
    whole = train(config, prepared_lm, tmp_path / "whole")
    halves = train(config, prepared_lm, tmp_path / "halves", halve_at_steps={1})
    assert halves["micro_batch_changes"] == [
        {"step": 1, "micro_batch": 4, "gradient_accumulation": 2, "reason": "halving requested"}
    ]
    # step 1 starts from the same weights and sees the same tokens; every completion in this slice has 3 tokens,
    # so the mean of the halves' token means is the token mean
    first_whole, first_halves = _losses(whole)[0], _losses(halves)[0]
    assert abs(first_whole - first_halves) < 1e-5 * first_whole
    assert len(_losses(halves)) == 3 and (tmp_path / "halves" / "adapter").is_dir()
