"""The quiet console of local runs: what reaches the screen, what only the log file gets."""

import contextlib
import io
import json
import logging
import os
import re
from pathlib import Path

import pytest
from kfp import dsl
from kfp.local import logging_utils, status

from kftune.cli.console import LOG_FILE, RunConsole, format_duration, local_run_console
from kftune.pipelines.local import run_pipeline_locally
from kftune.training.progress import PROGRESS_ENV, PROGRESS_MARKER, ProgressLine, parse_progress

EXECUTOR_INPUT = json.dumps({"inputs": {"parameterValues": {"seed": 42}},
                             "outputs": {"outputFile": "/runs/finetune-x/train/executor_output.json"}}, indent=4)


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def kfp_task(task: str, output: list[str], clock: Clock, seconds: float, ok: bool = True) -> None:
    """Print one task the way kfp.local's task dispatcher does (its own logging and print calls)."""
    with logging_utils.local_logger_context():
        name = logging_utils.format_task_name(task)
        logging.info(f"Executing task {name}")
        logging.info("Streamed logs:\n")
        with logging_utils.indented_print():
            for line in output:
                print(line)
            print("\n")
        clock.now += seconds
        result = logging_utils.format_status(status.Status.SUCCESS if ok else status.Status.FAILURE)
        (logging.info if ok else logging.error)(f"Task {name} finished with status {result}")
        if ok:
            logging.info("\n".join([f"Task {name} outputs:", "    metrics: Metrics( name='metrics',"]))
        logging_utils.print_horizontal_line()


def progress(**record) -> str:
    return PROGRESS_MARKER + json.dumps(record)


def feed_run(sink: RunConsole, run_dir: Path, clock: Clock, train_ok: bool = True, trials: bool = False):
    sink.start_run(run_dir)
    with contextlib.redirect_stdout(sink):
        with logging_utils.local_logger_context():
            logging.info(f"Running pipeline: {logging_utils.format_pipeline_name('finetune')}")
        kfp_task("preprocess", ["[KFP Executor 2026-11-29 08:35:46,871 INFO]: Got executor_input:",
                                *EXECUTOR_INPUT.splitlines(), "tokenizing:   0%|          | 0/239",
                                "tokenizing: 100%|██████████| 239/239"], clock, 12.2)
        train_output = [
            "[KFP Executor 2026-11-29 08:35:59,123 INFO]: Got executor_input:", *EXECUTOR_INPUT.splitlines(),
            progress(kind="start", step=0, total_steps=4),
            *[progress(kind="step", step=s, total_steps=4, loss=0.7 - s / 100, samples_per_second=40.5)
              for s in range(1, 5)],
            "2026-11-29 08:36:12,508 [rank 0] epoch 1 done in 62.6s: val accuracy 0.58",
            progress(kind="epoch", epoch=1, metric="f1_macro", score=0.3673),
        ]
        if trials:  # a search step trains more than once
            train_output += [progress(kind="start", step=0, total_steps=2),
                             progress(kind="step", step=2, total_steps=2, loss=0.5, samples_per_second=9.0)]
        if not train_ok:
            train_output += ["Traceback (most recent call last):", '  File "loop.py", line 9, in train',
                             "kftune.errors.ConfigError: out of memory in step 3"]
        kfp_task("train", train_output, clock, 71.0, ok=train_ok)
        if train_ok:
            kfp_task("evaluate", ["[KFP Executor 2026-11-29 08:37:41,740 INFO]: test accuracy 0.5667"], clock, 3.04)


def test_console_shows_steps_and_progress_and_the_log_file_holds_everything(tmp_path):
    screen, clock = io.StringIO(), Clock()
    sink = RunConsole(screen, clock=clock)
    run_dir = tmp_path / "finetune-2026-11-29-08-35-46-751080"
    feed_run(sink, run_dir, clock)
    sink.close()

    lines = screen.getvalue().split("\n")  # a bar's \r redraws stay within its line
    assert lines[0] == f"run directory: {run_dir}"
    assert lines[1] == f"log file:      {run_dir / LOG_FILE}"
    steps = [re.sub(r"^\d\d:\d\d:\d\d  ", "", line) for line in lines[2:] if re.match(r"^\d\d:\d\d:\d\d  ", line)]
    assert [s.split() for s in steps] == [
        ["preprocess", "started"], ["preprocess", "done", "in", "12.2", "s"],
        ["train", "started"], ["train", "done", "in", "1", "min", "11", "s"],
        ["evaluate", "started"], ["evaluate", "done", "in", "3.0", "s"],
    ]
    [bar] = [line for line in lines if "steps [" in line]
    final = bar.split("\r")[-1]
    assert re.match(r" {10}train {10}100%", final) and "4/4 steps" in final
    assert "loss 0.6600" in final and "40.5 samples/s" in final and "val f1_macro 0.3673" in final
    assert lines.index(bar) == next(i for i, line in enumerate(lines) if re.search("train +done", line)) - 1
    assert len([line for line in lines if line]) == 9
    shown = screen.getvalue()
    assert "executor_input" not in shown and "tokenizing" not in shown and PROGRESS_MARKER not in shown

    log = (run_dir / LOG_FILE).read_text()
    assert "\x1b[" not in log  # colour codes are for terminals
    assert "Running pipeline: 'finetune'" in log and "Executing task 'train'" in log
    assert "    [KFP Executor 2026-11-29 08:35:59,123 INFO]: Got executor_input:" in log
    assert '"outputFile": "/runs/finetune-x/train/executor_output.json"' in log
    assert "tokenizing: 100%" in log and "metrics: Metrics( name='metrics'," in log
    assert log.count(PROGRESS_MARKER) == 6 and "[rank 0] epoch 1 done" in log


def test_each_training_run_of_a_step_gets_its_own_bar(tmp_path):
    screen, clock = io.StringIO(), Clock()
    sink = RunConsole(screen, clock=clock)
    feed_run(sink, tmp_path / "run", clock, trials=True)
    sink.close()
    bars = [line.split("\r")[-1] for line in screen.getvalue().split("\n") if "steps [" in line]
    assert [bar.split("100%")[0].strip() for bar in bars] == ["train", "train #2"]
    assert "4/4 steps" in bars[0] and "2/2 steps" in bars[1] and "loss 0.5000" in bars[1]


def test_a_failed_step_shows_the_end_of_its_log_and_the_error_points_to_the_log_file(tmp_path):
    screen, clock = io.StringIO(), Clock()
    sink = RunConsole(screen, clock=clock)
    feed_run(sink, tmp_path / "run", clock, train_ok=False)
    sink.close()
    shown = screen.getvalue()
    assert re.search(r"\d\d:\d\d:\d\d  train +FAILED after 1 min 11 s; the end of its log:", shown)
    tail = shown.split("the end of its log:\n", 1)[1].splitlines()
    assert tail[-1] == "    kftune.errors.ConfigError: out of memory in step 3"
    assert tail[-3:-1] == ["    Traceback (most recent call last):", '      File "loop.py", line 9, in train']
    assert len(tail) <= 12 and not any(PROGRESS_MARKER in line for line in tail)
    assert "evaluate" not in shown
    message = sink.failure_message(RuntimeError("Pipeline 'finetune' finished with status FAILURE."))
    assert message == f"the pipeline failed: step 'train' failed (full log: {tmp_path / 'run' / LOG_FILE})"


def test_verbose_streams_everything_as_kfp_local_prints_it(tmp_path):
    screen, clock = io.StringIO(), Clock()
    sink = RunConsole(screen, verbose=True, clock=clock)
    feed_run(sink, tmp_path / "run", clock)
    sink.close()
    shown = screen.getvalue()
    assert "Got executor_input" in shown and "tokenizing: 100%" in shown
    assert "\x1b[96m'train'\x1b[0m" in shown  # untouched, colours included
    assert "started" not in shown and "steps [" not in shown  # kfp.local's own lines say it
    assert (tmp_path / "run" / LOG_FILE).read_text().count("\n") == shown.count("\n") - 2


def test_lines_before_the_run_directory_is_known_reach_the_log_file(tmp_path):
    sink = RunConsole(io.StringIO())
    sink.write("early line\npartial")
    sink.start_run(tmp_path / "run")
    sink.write(" line\n")
    sink.write("unterminated")
    sink.close()
    assert (tmp_path / "run" / LOG_FILE).read_text() == "early line\npartial line\nunterminated\n"


def test_durations():
    assert format_duration(3.04) == "3.0 s"
    assert format_duration(59.9) == "59.9 s"
    assert format_duration(59.97) == "1 min 00 s"
    assert format_duration(3725) == "62 min 05 s"


@dsl.component(base_image="python:3.11")  # this interpreter runs it: no image locally
def noisy_step(rows: int) -> int:
    import json
    import sys

    print(json.dumps({"rows": rows, "padding": list(range(20))}, indent=2))
    print('kftune-progress {"kind": "start", "step": 0, "total_steps": 2}', flush=True)
    print('kftune-progress {"kind": "step", "step": 2, "total_steps": 2, "loss": 0.5, "samples_per_second": 9.0}')
    print("to stderr", file=sys.stderr)
    return rows * 2


@dsl.component(base_image="python:3.11")  # this interpreter runs it: no image locally
def failing_step(rows: int):
    raise ValueError(f"no good: {rows} rows")


@dsl.pipeline(name="console-check")
def two_steps(rows: int = 3) -> int:
    first = noisy_step(rows=rows)
    return noisy_step(rows=first.output).output


@dsl.pipeline(name="console-failure")
def fails(rows: int = 3):
    failing_step(rows=noisy_step(rows=rows).output)


def test_a_real_kfp_local_run_is_captured(tmp_path, monkeypatch):
    monkeypatch.delenv(PROGRESS_ENV, raising=False)
    screen = io.StringIO()
    with local_run_console(tmp_path, console=screen) as sink:
        task = run_pipeline_locally(two_steps, {"rows": 3}, tmp_path)
        assert os.environ[PROGRESS_ENV] == "1"
    assert task.output == 12
    assert PROGRESS_ENV not in os.environ
    [run_dir] = tmp_path.glob("console-check-*")
    assert sink.run_dir == run_dir and sink.log_path == run_dir / LOG_FILE
    lines = [line for line in screen.getvalue().split("\n") if line]
    assert lines[:2] == [f"run directory: {run_dir}", f"log file:      {run_dir / LOG_FILE}"]
    assert [line.split()[1:3] for line in lines if re.match(r"\d\d:\d\d:\d\d ", line)] == [
        ["noisy-step", "started"], ["noisy-step", "done"], ["noisy-step-2", "started"], ["noisy-step-2", "done"]]
    assert sum("2/2 steps" in line for line in lines) == 2 and len(lines) == 8
    log = sink.log_path.read_text()
    assert "Got executor_input" in log and '"padding": [' in log and "to stderr" in log
    assert "Pipeline 'console-check' finished with status SUCCESS" in log


def test_a_real_failed_kfp_local_run_names_the_step_and_the_log(tmp_path):
    screen = io.StringIO()
    with pytest.raises(RuntimeError) as failure:
        with local_run_console(tmp_path, console=screen) as sink:
            run_pipeline_locally(fails, {"rows": 3}, tmp_path)
    shown = screen.getvalue()
    assert "failing-step FAILED after" in re.sub(" +", " ", shown)
    assert "ValueError: no good: 6 rows" in shown.split("the end of its log:")[1]
    assert sink.failure_message(failure.value) == (
        f"the pipeline failed: step 'failing-step' failed (full log: {sink.log_path})")
    assert "ValueError: no good: 6 rows" in sink.log_path.read_text()


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
    from kftune.training.config import TrainConfig
    from kftune.training.loop import train

    monkeypatch.setenv(PROGRESS_ENV, "0")
    train(TrainConfig(model=str(tiny_model), num_train_epochs=2, per_device_train_batch_size=64), prepared,
          tmp_path / "model")
    records = [r for r in map(parse_progress, capsys.readouterr().out.splitlines()) if r]
    assert records[0] == {"kind": "start", "step": 0, "total_steps": 8}
    steps = [r["step"] for r in records if r["kind"] == "step"]
    assert steps == list(range(1, 9))
    assert [r["epoch"] for r in records if r["kind"] == "epoch"] == [1, 2]
    assert all(r["loss"] > 0 and r["samples_per_second"] > 0 for r in records if r["kind"] == "step")
