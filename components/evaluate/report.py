"""The evaluation report: model vs baselines, the gate, and the task's own tables and plots."""

from __future__ import annotations

from kftune.reports import markdown_table, page, table_html
from kftune.tasks import task_named


def gate_markdown(result: dict) -> str:
    return "\n".join(f"- {'PASS' if ok else 'FAIL'}: {check}" for check, ok in result["checks"].items())


def evaluation_markdown(result: dict) -> str:
    """The model-vs-baseline table and the gate, as Markdown (also printed by the CLI)."""
    keys, rows = task_named(result["task"]).summary_table(result)
    table = markdown_table(["test split", *keys], rows)
    return f"{table}\n\nGate: {'passed' if result['passed'] else 'failed'}\n{gate_markdown(result)}\n"


def evaluation_report_html(result: dict) -> str:
    """A self-contained HTML page for the KFP UI."""
    task = task_named(result["task"])
    keys, rows = task.summary_table(result)
    sections = [
        task.report_intro(result),
        f"<h2>{task.comparison_heading}</h2>",
        table_html(["", *keys], rows),
        *task.report_figures(result),
        "<h2>Gate</h2>",
        f"<p class='{'pass' if result['passed'] else 'fail'}'>{'PASSED' if result['passed'] else 'FAILED'}</p>",
        table_html(["check", "result"], [(c, "pass" if ok else "fail") for c, ok in result["checks"].items()]),
        *task.report_sections(result),
    ]
    return page(f"kftune evaluation ({task.name})", *sections)
