"""A quiet console for local runs: steps, a training progress bar and results on screen, the rest in a log file.

kfp.local prints everything to ``sys.stdout``: its own log records (a fresh
``StreamHandler(sys.stdout)`` for each message), each task's output (read line by line from the
task's pipe and ``print``-ed, indented), the executor-input JSON each task dumps and every
``\\r`` redraw of a progress bar inside a task, which the pipe delivers as a line of its own.
:func:`local_run_console` therefore takes ``sys.stdout`` and ``sys.stderr`` over for the length
of a run and hands every line to a :class:`RunConsole`, which

- writes it (colour codes removed) to ``<run directory>/kftune.log``,
- shows one line when a step starts and one when it ends, with its duration,
- draws a tqdm bar from the training loop's ``kftune-progress`` lines (see
  :mod:`kftune.training.progress`), and
- on a failed step shows the last lines of that step's log.

With ``verbose`` every line also reaches the console as kfp.local printed it, as before.
The run directory (``<pipeline_root>/<pipeline>-<timestamp>``) is named inside kfp.local; the
console learns the name by wrapping ``kfp.local.executor_input_utils.get_local_pipeline_resource_name``,
which kfp.local calls once, before the first step starts.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import time
from collections import deque
from pathlib import Path
from typing import TextIO

from kftune.training.progress import PROGRESS_ENV, parse_progress

LOG_FILE = "kftune.log"
TAIL_LINES = 12  # of a failed step's log, shown on the console
NAME_WIDTH = 14  # step names are aligned to it

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
# kfp.local's own records: "08:35:46.756 - INFO - Executing task 'preprocess'"
_KFP_RECORD = re.compile(r"^\d\d:\d\d:\d\d\.\d{3} - [A-Z]+ - (?P<message>.*)$")
_STARTED = re.compile(r"^Executing task '(?P<task>.+)'$")
_FINISHED = re.compile(r"^Task '(?P<task>.+)' finished with status (?P<status>[A-Z]+)$")


def format_duration(seconds: float) -> str:
    if seconds < 59.95:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest:02d} s"


class RunConsole:
    """A text stream that sorts a local run's output lines between the console and the run's log file."""

    def __init__(self, console: TextIO, verbose: bool = False, clock=time.monotonic):
        self.console = console
        self.verbose = verbose
        self.clock = clock
        self.run_dir: Path | None = None
        self.log_path: Path | None = None
        self.failed_tasks: list[str] = []
        self._log: TextIO | None = None
        self._early: list[str] = []  # lines that came before the run directory was known
        self._partial = ""
        self._task: str | None = None
        self._task_started = 0.0
        self._trainings = 0  # training runs in this step so far (a search step trains once per trial)
        self._tail: deque[str] = deque(maxlen=TAIL_LINES)
        self._bar = None
        self._postfix: dict[str, str] = {}

    # the text-stream side, for print(), logging handlers and warnings
    def write(self, text: str) -> int:
        lines = (self._partial + text).split("\n")
        self._partial = lines.pop()
        for line in lines:
            self.feed(line)
        self.flush()  # someone may be following the log file
        return len(text)

    def flush(self) -> None:
        if self._log:
            self._log.flush()

    def isatty(self) -> bool:
        return False

    def start_run(self, run_dir: Path) -> None:
        """Open the log file in ``run_dir`` and say where the run and its log are."""
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._open_log(self.run_dir / LOG_FILE)
        self._show(f"run directory: {self.run_dir}")
        self._show(f"log file:      {self.log_path}")

    def feed(self, raw: str) -> None:
        """Take one complete line (without its newline)."""
        line = _ANSI.sub("", raw).rstrip("\r")
        if self._log:
            self._log.write(line + "\n")
        else:
            self._early.append(line)
        if self.verbose:
            self.console.write(raw + "\n")
        record = parse_progress(line)
        if record is not None:
            if not self.verbose:
                self._progress(record)
            return
        kfp = _KFP_RECORD.match(line)
        started = kfp and _STARTED.match(kfp["message"])
        finished = kfp and _FINISHED.match(kfp["message"])
        if started:
            self._step_started(started["task"])
        elif finished:
            self._step_finished(finished["task"], finished["status"])
        elif self._task and line.strip():
            self._tail.append(line.removeprefix("    ").rstrip())  # kfp.local indents a task's output by 4

    def close(self, fallback_dir: Path | None = None) -> None:
        """End the run: the last partial line, the bar and the log file (in ``fallback_dir`` if no run started)."""
        if self._partial:
            self.feed(self._partial)
            self._partial = ""
        self._close_bar()
        if self._log is None and self._early and fallback_dir is not None:
            Path(fallback_dir).mkdir(parents=True, exist_ok=True)
            self._open_log(Path(fallback_dir) / f"kftune-{time.strftime('%Y%m%d-%H%M%S')}.log")
            self._show(f"log file:      {self.log_path}")
        if self._log:
            self._log.close()
            self._log = None

    def failure_message(self, error: Exception) -> str:
        """One line for a failed run, pointing to the log file."""
        if self.failed_tasks:
            what = f"step '{self.failed_tasks[-1]}' failed"
        else:
            what = (_ANSI.sub("", str(error)).strip().splitlines() or ["kfp.local stopped"])[0]
        return f"the pipeline failed: {what} (full log: {self.log_path})"

    def _open_log(self, path: Path) -> None:
        self.log_path = path
        self._log = path.open("a", encoding="utf-8")
        for line in self._early:
            self._log.write(line + "\n")
        self._early.clear()

    def _show(self, text: str) -> None:
        """A line on the console (above the bar, if one is drawn)."""
        if self._bar is not None:
            self._bar.write(text, file=self.console)
        else:
            self.console.write(text + "\n")
            self.console.flush()

    def _step_line(self, task: str, what: str) -> None:
        if not self.verbose:
            self._show(f"{time.strftime('%H:%M:%S')}  {task:<{NAME_WIDTH}} {what}")

    def _step_started(self, task: str) -> None:
        self._close_bar()
        self._task, self._task_started, self._trainings = task, self.clock(), 0
        self._tail.clear()
        self._step_line(task, "started")

    def _step_finished(self, task: str, status: str) -> None:
        self._close_bar()
        took = format_duration(self.clock() - self._task_started)
        if status == "SUCCESS":
            self._step_line(task, f"done in {took}")
        else:
            self.failed_tasks.append(task)
            self._step_line(task, f"FAILED after {took}; the end of its log:")
            if not self.verbose:
                for line in self._tail:
                    self._show(f"    {line}")
        self._task = None

    def _progress(self, record: dict) -> None:
        from tqdm import tqdm

        kind = record["kind"]
        if kind == "start" or (self._bar is None and "total_steps" in record):
            self._close_bar()
            self._trainings += 1
            name = (self._task or "training") + (f" #{self._trainings}" if self._trainings > 1 else "")
            tty = self.console.isatty()
            self._bar = tqdm(
                total=record["total_steps"], initial=record.get("step", 0), file=self.console,
                desc=f"{'':10}{name:<{NAME_WIDTH}}", unit="step", dynamic_ncols=tty, leave=True,
                mininterval=0.5 if tty else 60, bar_format="{desc} {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} "
                "steps [{elapsed}<{remaining}{postfix}]",
            )
            self._postfix = {}
        if kind == "step":
            self._postfix["loss"] = f"loss {record['loss']:.4f}"
            self._postfix["rate"] = f"{record['samples_per_second']:.1f} samples/s"
        elif kind == "epoch":
            self._postfix["val"] = f"epoch {record['epoch']} val {record['metric']} {record['score']:.4f}"
        if self._bar is not None:
            self._bar.set_postfix_str(", ".join(self._postfix.values()), refresh=False)
            self._bar.update(record.get("step", self._bar.n) - self._bar.n)

    def _close_bar(self) -> None:
        if self._bar is not None:
            self._bar.close()  # draws the last state and leaves it on screen
            self._bar = None


@contextlib.contextmanager
def local_run_console(pipeline_root: str | Path, verbose: bool = False, console: TextIO | None = None):
    """Route all that a kfp.local run under ``pipeline_root`` prints through a :class:`RunConsole`.

    Within the block ``sys.stdout``, ``sys.stderr`` and the root logger feed the console object;
    training loops are asked for progress lines (``KFTUNE_PROGRESS``) unless ``verbose``.
    """
    from kfp.local import executor_input_utils

    sink = RunConsole(console or sys.stdout, verbose=verbose)
    name_run = executor_input_utils.get_local_pipeline_resource_name

    def name_run_and_open_its_log(pipeline_name: str) -> str:
        name = name_run(pipeline_name)
        if sink.run_dir is None:
            sink.start_run(Path(pipeline_root) / name)
        return name

    root = logging.getLogger()
    handlers = root.handlers[:]
    to_sink = logging.StreamHandler(sink)
    to_sink.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    progress_setting = os.environ.get(PROGRESS_ENV)
    executor_input_utils.get_local_pipeline_resource_name = name_run_and_open_its_log
    root.handlers = [to_sink]
    if not verbose:
        os.environ[PROGRESS_ENV] = "1"  # seconds between two progress lines
    try:
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            yield sink
    finally:
        executor_input_utils.get_local_pipeline_resource_name = name_run
        root.handlers = handlers
        if progress_setting is None:
            os.environ.pop(PROGRESS_ENV, None)
        else:
            os.environ[PROGRESS_ENV] = progress_setting
        sink.close(fallback_dir=Path(pipeline_root))
