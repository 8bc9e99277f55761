"""The quiet console of local runs: what reaches the screen, what only the log file gets."""

import json

from kftune.components.common.training.progress import PROGRESS_ENV, PROGRESS_MARKER, ProgressLine, parse_progress


def progress(**record) -> str:
    return PROGRESS_MARKER + json.dumps(record)


def test_progress_lines_are_silent_unless_asked_for(monkeypatch, capsys):
    monkeypatch.delenv(PROGRESS_ENV, raising=False)
    ProgressLine(10).step(1, 0.5, 3.0)
    assert capsys.readouterr().out == ""
    monkeypatch.setenv(PROGRESS_ENV, "0")
    ProgressLine(10, enabled=False).step(1, 0.5, 3.0)  # not rank 0
    assert capsys.readouterr().out == ""
    line = ProgressLine(10)
    line.start(0)
    line.step(1, 0.123456, 3.0)
    line.epoch(1, "f1_macro", 0.8)
    records = [parse_progress(x) for x in capsys.readouterr().out.splitlines()]
    assert records == [{"kind": "start", "step": 0, "total_steps": 10},
                       {"kind": "step", "step": 1, "total_steps": 10, "loss": 0.1235, "samples_per_second": 3.0},
                       {"kind": "epoch", "epoch": 1, "metric": "f1_macro", "score": 0.8}]


def test_progress_step_lines_are_throttled_but_the_last_always_comes(monkeypatch, capsys):
    monkeypatch.setenv(PROGRESS_ENV, "3600")
    line = ProgressLine(5)
    for step in range(1, 6):
        line.step(step, 0.5, 3.0)
    assert [parse_progress(x)["step"] for x in capsys.readouterr().out.splitlines()] == [1, 5]


def test_parse_progress_ignores_other_lines():
    assert parse_progress("    [default0]:" + progress(kind="step", step=1)) == {"kind": "step", "step": 1}
    assert parse_progress("epoch 1 step 8/8 loss 0.68") is None
    assert parse_progress(PROGRESS_MARKER + "{not json") is None


def test_the_training_loop_reports_progress(monkeypatch, capsys, tmp_path, prepared, tiny_model):
    from kftune.components.common.training.config import TrainConfig
    from kftune.components.common.training.loop import train

    monkeypatch.setenv(PROGRESS_ENV, "0")
    train(TrainConfig(model=str(tiny_model), num_train_epochs=2, per_device_train_batch_size=64), prepared,
          tmp_path / "model")
    records = [r for r in map(parse_progress, capsys.readouterr().out.splitlines()) if r]
    assert records[0] == {"kind": "start", "step": 0, "total_steps": 8}
    steps = [r["step"] for r in records if r["kind"] == "step"]
    assert steps == list(range(1, 9))
    assert [r["epoch"] for r in records if r["kind"] == "epoch"] == [1, 2]
    assert all(r["loss"] > 0 and r["samples_per_second"] > 0 for r in records if r["kind"] == "step")
