"""Training: batching, configuration, the loop in-process, and torchrun with 2 CPU processes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from kftune.errors import ConfigError
from kftune.tasks import TASKS
from kftune.training.config import Launch, TrainConfig
from kftune.training.distributed import Ranks, refuse_training_on_cpu_with_gpus_given
from kftune.training.launch import launch_training, plan_processes
from kftune.training.loop import HISTORY_FILE, epoch_batches, train


def test_epoch_batches_cover_every_example_once_and_repeat_by_seed():
    lengths = np.random.default_rng(0).integers(5, 80, size=1000)
    for grouped in (False, True):
        batches = epoch_batches(lengths, 32, seed=1, epoch=0, group_by_length=grouped)
        flat = np.concatenate(batches)
        assert sorted(flat.tolist()) == list(range(1000))
        again = epoch_batches(lengths, 32, seed=1, epoch=0, group_by_length=grouped)
        assert all((a == b).all() for a, b in zip(batches, again, strict=True))
        other = epoch_batches(lengths, 32, seed=1, epoch=1, group_by_length=grouped)
        assert not all((a == b).all() for a, b in zip(batches, other, strict=True))


def test_length_grouping_cuts_padding():
    lengths = np.random.default_rng(0).integers(5, 80, size=3200)

    def padded_tokens(grouped):
        batches = epoch_batches(lengths, 32, seed=0, epoch=0, group_by_length=grouped)
        return sum(len(b) * lengths[b].max() for b in batches)

    assert padded_tokens(True) < 0.75 * padded_tokens(False)


def test_config_rejects_bad_values():
    with pytest.raises(ConfigError, match="learning_rate"):
        TrainConfig(learning_rate=-1e-4).validate()
    with pytest.raises(ConfigError, match="metric_for_best_model must be one of"):
        TrainConfig(metric_for_best_model="bleu").validate()
    with pytest.raises(ConfigError, match="mixed_precision must be one of"):
        TrainConfig(mixed_precision="maybe").validate()
    with pytest.raises(ConfigError, match="training_mode must be one of"):
        TrainConfig(training_mode="adapters").validate()
    with pytest.raises(ConfigError, match="lora_r must be >= 1"):
        TrainConfig(lora_r=0).validate()
    with pytest.raises(ConfigError, match="save_steps must be >= 0"):
        TrainConfig(save_steps=-1).validate()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only refusal")
def test_fp16_without_gpu_is_refused_before_launch(tmp_path, prepared):
    with pytest.raises(ConfigError, match="fp16 needs a CUDA GPU"):
        launch_training(TrainConfig(mixed_precision="fp16"), prepared, tmp_path / "m")
    assert not (tmp_path / "m").exists()


def test_an_existing_model_directory_is_refused_before_launch(tmp_path, prepared):
    out = tmp_path / "m"
    out.mkdir()
    (out / "model.safetensors").write_bytes(b"an earlier model")
    with pytest.raises(FileExistsError, match=f"refusing to overwrite existing artifact at {out}"):
        launch_training(TrainConfig(), prepared, out)
    assert (out / "model.safetensors").read_bytes() == b"an earlier model"
    assert not (tmp_path / "m.checkpoints").exists()


def test_process_plan_checks_gpu_count():
    assert plan_processes(0, gpus=0) == (1, "cpu")
    assert plan_processes(2, gpus=0) == (2, "cpu")
    assert plan_processes(0, gpus=4) == (4, "cuda")
    with pytest.raises(ConfigError, match="nproc_per_node=3 but only 2 GPU"):
        plan_processes(3, gpus=2)


@pytest.mark.parametrize("visible", ["GPU-8b3c2f1e-0d4a-4c55-9f7e-1a2b3c4d5e6f", "0,1", "all",
                                     "/var/run/nvidia-container-devices"])
def test_gpus_given_to_a_cpu_torch_stop_training_naming_the_cuda_image(visible):
    """A pod that was given GPUs (NVIDIA's runtime says so in NVIDIA_VISIBLE_DEVICES) but runs the CPU build of torch
    would train on the CPU without a word: it stops, naming the CUDA images; a CUDA build that sees no GPU names the
    driver."""
    env = {"NVIDIA_VISIBLE_DEVICES": visible}
    with pytest.raises(ConfigError, match=r"torch 2.13.0\+cpu is the CPU build.*TORCH_VARIANT=cu126 .*kftune-train"):
        refuse_training_on_cpu_with_gpus_given(env, "2.13.0+cpu", None, gpus=0)
    with pytest.raises(ConfigError, match="sees none: the NVIDIA driver is not reachable"):
        refuse_training_on_cpu_with_gpus_given(env, "2.13.0+cu126", "12.6", gpus=0)
    refuse_training_on_cpu_with_gpus_given(env, "2.13.0+cu126", "12.6", gpus=2)  # the GPUs it was given: fine


@pytest.mark.parametrize("env", [{}, {"NVIDIA_VISIBLE_DEVICES": ""}, {"NVIDIA_VISIBLE_DEVICES": "none"},
                                 {"NVIDIA_VISIBLE_DEVICES": "void"}])
def test_a_container_given_no_gpus_trains_on_the_cpu_build(env):
    refuse_training_on_cpu_with_gpus_given(env, "2.13.0+cpu", None, gpus=0)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU build's refusal")
def test_launch_refuses_gpus_it_cannot_use_before_anything_starts(tmp_path, prepared, monkeypatch):
    monkeypatch.setenv("NVIDIA_VISIBLE_DEVICES", "GPU-8b3c2f1e-0d4a-4c55-9f7e-1a2b3c4d5e6f")
    with pytest.raises(ConfigError, match="NVIDIA_VISIBLE_DEVICES=GPU-8b3c2f1e.* is the CPU build"):
        launch_training(TrainConfig(), prepared, tmp_path / "m")
    assert not (tmp_path / "m").exists() and not (tmp_path / "m.checkpoints").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU build's refusal")
def test_a_worker_started_without_the_launcher_refuses_gpus_it_cannot_use(monkeypatch):
    """A TrainJob node runs torchrun and the loop directly, not through the launcher: the worker checks too."""
    monkeypatch.setenv("NVIDIA_VISIBLE_DEVICES", "all")
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(ConfigError, match="NVIDIA_VISIBLE_DEVICES=all says .* is the CPU build"):
        Ranks.start()
    monkeypatch.setenv("NVIDIA_VISIBLE_DEVICES", "void")
    assert Ranks.start().device.type == "cpu"


def test_trained_model_directory(trained, tiny_model):
    config = json.loads((trained / "config.json").read_text())
    assert config["id2label"] == {"0": "negative", "1": "positive"}
    assert config["label2id"] == {"negative": 0, "positive": 1}
    assert (trained / "model.safetensors").is_file()
    assert (trained / "tokenizer.json").is_file()
    history = json.loads((trained / HISTORY_FILE).read_text())
    assert len(history["epochs"]) == 2
    assert history["steps"] and all(s["samples_per_second"] > 0 for s in history["steps"])
    best = max(history["epochs"], key=lambda e: e["val_f1_macro"])
    assert history["best_epoch"] == best["epoch"]
    before, after = load_file(tiny_model / "model.safetensors"), load_file(trained / "model.safetensors")
    name = "bert.encoder.layer.0.attention.self.query.weight"
    assert not torch.equal(before[name], after[name])


def _weights(path):
    return load_file(path / "model.safetensors")


def test_same_seed_same_model(tmp_path, prepared, tiny_model):
    config = TrainConfig(model=str(tiny_model), num_train_epochs=1, per_device_train_batch_size=16, max_steps=6)
    train(config, prepared, tmp_path / "a")
    train(config, prepared, tmp_path / "b")
    a, b = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert all(torch.equal(a[k], b[k]) for k in a)
    config.seed = 7
    train(config, prepared, tmp_path / "c")
    c = _weights(tmp_path / "c")
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_freeze_encoder_trains_only_the_head(tmp_path, prepared, tiny_model):
    config = TrainConfig(model=str(tiny_model), num_train_epochs=1, per_device_train_batch_size=16,
                         max_steps=4, training_mode="freeze_encoder", learning_rate=1e-2)
    train(config, prepared, tmp_path / "m")
    before, after = _weights(tiny_model), _weights(tmp_path / "m")
    encoder = [k for k in after if k.startswith("bert.")]
    assert encoder and all(torch.equal(before[k], after[k]) for k in encoder)
    assert not torch.equal(before["classifier.weight"], after["classifier.weight"])


def test_early_stopping_waits_for_a_model_that_has_not_learnt(tmp_path, prepared, tiny_model, caplog):
    """lr far too small to change the model: no improvement after epoch 1, but the model never beats the training
    split's most frequent class on validation either, so patience never starts counting and every epoch runs, each
    one logged; the unit tests (tests/test_training_units.py) show patience counting once the model has learnt."""
    import logging

    config = TrainConfig(model=str(tiny_model), num_train_epochs=4, learning_rate=1e-12,
                         metric_for_best_model="accuracy", early_stopping_patience=1,
                         per_device_train_batch_size=64)
    with caplog.at_level(logging.INFO, logger="kftune.train"):
        history = train(config, prepared, tmp_path / "m")
    assert len(history["epochs"]) == 4
    assert history["best_epoch"] == 1
    waits = [r.getMessage() for r in caplog.records if "early stopping waits" in r.getMessage()]
    assert len(waits) == 4 and all("than the trivial answer" in w for w in waits), waits


def test_one_process_runs_without_torchrun_and_trains_what_torchrun_would(tmp_path, prepared, tiny_model, caplog):
    """One process, no restarts: the loop runs directly (no torchrun agent, no DDP), with the same weights as
    under torchrun (forced here by max_restarts), where DDP averages over a world of one rank."""
    import logging

    config = TrainConfig(model=str(tiny_model), num_train_epochs=1, per_device_train_batch_size=16, max_steps=6,
                         logging_steps=1, learning_rate=1e-3)
    with caplog.at_level(logging.INFO, logger="kftune.training.launch"):
        alone = launch_training(config, prepared, tmp_path / "alone")
        launched = launch_training(config, prepared, tmp_path / "torchrun", Launch(max_restarts=1))
    commands = [r.getMessage() for r in caplog.records if r.getMessage().startswith("launching")]
    assert "torch.distributed.run" not in commands[0] and "torch.distributed.run" in commands[1]
    assert [s["loss"] for s in alone["steps"]] == [s["loss"] for s in launched["steps"]] and len(alone["steps"]) == 6
    a, b = load_file(tmp_path / "alone" / "model.safetensors"), load_file(tmp_path / "torchrun" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_torchrun_two_cpu_processes(tmp_path, prepared, tiny_model):
    """The real launcher: torchrun --nproc_per_node=2, gloo, DistributedDataParallel."""
    config = TrainConfig(model=str(tiny_model), num_train_epochs=1, per_device_train_batch_size=8,
                         logging_steps=5, learning_rate=1e-3)
    history = launch_training(config, prepared, tmp_path / "m", Launch(nproc_per_node=2))
    assert history["world_size"] == 2
    # 240 examples / (2 ranks x 8) = 15 optimizer steps
    assert history["steps"][-1]["step"] == 15
    assert (tmp_path / "m" / "model.safetensors").is_file()
    assert not (tmp_path / "m.checkpoints").exists()  # pod-local checkpoints are dropped after success


def test_failed_training_raises_and_leaves_no_model(tmp_path, prepared):
    from kftune.errors import KftuneError

    config = TrainConfig(model=str(tmp_path / "no-such-model"), num_train_epochs=1)
    with pytest.raises(KftuneError, match="training failed: the training process exited"):
        launch_training(config, prepared, tmp_path / "m")
    assert not (tmp_path / "m").exists()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_bf16_training(tmp_path, prepared, tiny_model):
    config = TrainConfig(model=str(tiny_model), num_train_epochs=1, mixed_precision="bf16")
    history = launch_training(config, prepared, tmp_path / "m")
    assert history["precision"] == "bf16"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_fp16_training_with_loss_scaling(tmp_path, prepared, tiny_model):
    config = TrainConfig(model=str(tiny_model), num_train_epochs=1, mixed_precision="fp16", learning_rate=1e-3)
    history = launch_training(config, prepared, tmp_path / "m")
    assert history["precision"] == "fp16"
    assert all(np.isfinite(s["loss"]) for s in history["steps"])


def test_precision_resolution_on_cpu():
    from kftune.training.precision import cpu_has_fast_bf16, resolve_precision

    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu) == ("bf16" if cpu_has_fast_bf16() else "no")
    assert resolve_precision("no", cpu) == "no"
    with pytest.raises(ConfigError, match="fp16 needs a CUDA GPU"):
        resolve_precision("fp16", cpu)


def test_layerwise_lr_decay_scales_lower_layers(tiny_model):
    from transformers import AutoModelForSequenceClassification

    from kftune.training.optimizer import build_optimizer

    model = AutoModelForSequenceClassification.from_pretrained(str(tiny_model))
    head = model.classifier.weight
    embeddings = model.bert.embeddings.word_embeddings.weight

    def lr_of(optimizer, param):
        return next(g["lr"] for g in optimizer.param_groups if any(p is param for p in g["params"]))

    decayed = build_optimizer(model, TrainConfig(learning_rate=1e-3, layerwise_lr_decay=0.5), torch.device("cpu"))
    assert lr_of(decayed, head) == pytest.approx(1e-3)
    assert lr_of(decayed, embeddings) == pytest.approx(1e-3 * 0.5**3)  # 2 layers + head above
    plain = build_optimizer(model, TrainConfig(learning_rate=1e-3), torch.device("cpu"))
    assert {g["lr"] for g in plain.param_groups} == {1e-3} and len(plain.param_groups) == 2


def test_label_smoothing_smooths_the_cross_entropy():
    """With label smoothing the step's loss is cross-entropy against (1 - e) on the true class
    plus e spread evenly; without it, the model's own loss."""

    class Fixed(torch.nn.Module):
        def forward(self, labels=None, **inputs):
            logits = torch.tensor([[4.0, 0.0, -2.0], [0.0, 1.0, 0.0]])
            loss = torch.nn.functional.cross_entropy(logits, labels) if labels is not None else None
            return type("Out", (), {"logits": logits, "loss": loss})()

    batch = {"input_ids": torch.zeros(2, 3, dtype=torch.long), "labels": torch.tensor([0, 2])}
    log_p = torch.log_softmax(torch.tensor([[4.0, 0.0, -2.0], [0.0, 1.0, 0.0]]), dim=-1)
    plain = -(log_p[0, 0] + log_p[1, 2]) / 2
    smoothed = ((1 - 0.3) * -torch.stack([log_p[0, 0], log_p[1, 2]]) - 0.3 / 3 * log_p.sum(dim=1)).mean()
    loss = TASKS["classification"].loss
    assert loss(Fixed(), batch, TrainConfig(task="classification")) == pytest.approx(plain.item())
    assert loss(Fixed(), batch, TrainConfig(task="classification", label_smoothing=0.3)) == pytest.approx(
        smoothed.item(), rel=1e-6)
    assert smoothed > plain  # a confident, right first example now costs something


def test_label_smoothing_reaches_the_training_loop(tmp_path, prepared, tiny_model):
    base = dict(model=str(tiny_model), num_train_epochs=1, max_steps=2, logging_steps=1, learning_rate=1e-3)
    plain = train(TrainConfig(**base), prepared, tmp_path / "plain")
    smoothed = train(TrainConfig(**base, label_smoothing=0.5), prepared, tmp_path / "smoothed")
    assert smoothed["config"]["label_smoothing"] == 0.5
    assert smoothed["steps"][0]["loss"] != pytest.approx(plain["steps"][0]["loss"], abs=1e-6)
    with pytest.raises(ConfigError, match=r"label_smoothing must be in \[0, 1\)"):
        TrainConfig(label_smoothing=1.0).validate()
