"""The evaluation report: model vs baselines, the gate, and the task's own tables and plots."""

from __future__ import annotations

from html import escape

from kftune.reports import markdown_table, page, table_html
from kftune.tasks import task_named
from kftune.tracking.champion import champion_rows


def gate_markdown(result: dict) -> str:
    return "\n".join(f"- {'PASS' if ok else 'FAIL'}: {check}" for check, ok in result["checks"].items())


def summary(result: dict) -> tuple[list[str], list[tuple]]:
    """The task's model-vs-baselines table, with the champion's rows where the registry has one."""
    keys, rows = task_named(result["task"]).summary_table(result)
    return keys, rows + champion_rows(result, keys)


def promotion_line(result: dict) -> str:
    """Whether the model replaces the champion, and why ('' for a result from before promotions)."""
    if "promotion" not in result:
        return ""
    decision = result["promotion"]
    return f"Promotion: {'promote' if decision['promote'] else 'keep the champion'} ({decision['reason']})"


def evaluation_markdown(result: dict) -> str:
    """The model-vs-baseline table, the gate and the promotion, as Markdown (also printed by the CLI)."""
    keys, rows = summary(result)
    table = markdown_table(["test split", *keys], rows)
    promoted = promotion_line(result)
    return (f"{table}\n\nGate: {'passed' if result['passed'] else 'failed'}\n{gate_markdown(result)}\n"
            + (f"\n{promoted}\n" if promoted else ""))


def evaluation_report_html(result: dict) -> str:
    """A self-contained HTML page for the KFP UI."""
    task = task_named(result["task"])
    keys, rows = summary(result)
    promoted = promotion_line(result)
    sections = [
        task.report_intro(result),
        f"<h2>{task.comparison_heading}</h2>",
        table_html(["", *keys], rows),
        *task.report_figures(result),
        "<h2>Gate</h2>",
        f"<p class='{'pass' if result['passed'] else 'fail'}'>{'PASSED' if result['passed'] else 'FAILED'}</p>",
        table_html(["check", "result"], [(c, "pass" if ok else "fail") for c, ok in result["checks"].items()]),
        *([f"<h2>Champion</h2><p>{escape(promoted)}</p>"] if promoted else []),
        *task.report_sections(result),
    ]
    return page(f"kftune evaluation ({task.name})", *sections)
