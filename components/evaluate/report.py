"""The evaluation report: model vs baselines, gate checks, per-class scores, plots."""

from __future__ import annotations

import numpy as np

from kftune.reports import figure_html, markdown_table, new_figure, page, table_html
from kftune.tasks import task_named


def comparison_rows(result: dict) -> list[tuple]:
    keys = task_named(result.get("task", "classification")).metrics
    rows = [("fine-tuned model", *(result["model"][k] for k in keys))]
    for name, scores in result["baselines"].items():
        rows.append((f"baseline: {name}", *(scores[k] for k in keys)))
    rows.append((f"delta vs {result['baseline']}", *(result["delta_vs_baseline"][k] for k in keys)))
    return rows


GENERATIVE_KEYS = ("answer_accuracy", "exact_match", "rouge_l", "perplexity")


def generative_rows(result: dict) -> tuple[list[str], list[tuple]]:
    keys = [k for k in GENERATIVE_KEYS if k in result["model"]]
    rows = [("fine-tuned model", *(result["model"][k] for k in keys)),
            ("baseline: base model (zero-shot, same prompts)", *(result["baselines"]["base_model"][k] for k in keys)),
            ("delta vs base model", *(result["delta_vs_baseline"].get(k) for k in keys))]
    return keys, rows


def evaluation_markdown(result: dict) -> str:
    """The model-vs-baseline table and the gate, as Markdown (also printed by the CLI)."""
    if result.get("task") == "causal-lm":
        keys, rows = generative_rows(result)
        table = markdown_table(["test split", *keys], rows)
    else:
        table = markdown_table(["test split", *task_named(result.get("task", "classification")).metrics],
                               comparison_rows(result))
    gate = "\n".join(f"- {'PASS' if ok else 'FAIL'}: {check}" for check, ok in result["checks"].items())
    return f"{table}\n\nGate: {'passed' if result['passed'] else 'failed'}\n{gate}\n"


def generative_report_html(result: dict) -> str:
    """The causal-lm report: scores of both models, the gate, a plot, and sample answers side by side."""
    keys, rows = generative_rows(result)
    fig, ax = new_figure(6, 3)
    shown = [k for k in keys if k != "perplexity"]
    x = np.arange(len(shown))
    ax.bar(x - 0.2, [result["baselines"]["base_model"][k] for k in shown], 0.4, label="base model")
    ax.bar(x + 0.2, [result["model"][k] for k in shown], 0.4, label="fine-tuned")
    ax.set_xticks(x, shown)
    ax.set_ylim(0, 1)
    ax.legend()
    samples = [(s["prompt"], s["reference"], s["base_model"], s["fine_tuned"]) for s in result["samples"]]
    sections = [
        f"<p>Test split: {result['test_size']} prompts; greedy generations of at most {result['max_new_tokens']} "
        f"tokens; base model {result['base_model']}."
        + (f" Allowed answers: {', '.join(result['answers'])}." if result["answers"] else "") + "</p>",
        "<h2>Fine-tuned vs base model</h2>",
        table_html(["", *keys], rows),
        figure_html(fig),
        "<h2>Gate</h2>",
        f"<p class='{'pass' if result['passed'] else 'fail'}'>{'PASSED' if result['passed'] else 'FAILED'}</p>",
        table_html(["check", "result"], [(c, "pass" if ok else "fail") for c, ok in result["checks"].items()]),
        "<h2>Sample answers</h2>",
        table_html(["prompt", "reference", "base model", "fine-tuned"], samples),
    ]
    return page("kftune evaluation (causal-lm)", *sections)


def evaluation_report_html(result: dict) -> str:
    """A self-contained HTML page for the KFP UI."""
    if result.get("task") == "causal-lm":
        return generative_report_html(result)
    task = task_named(result.get("task", "classification"))
    sections = [
        f"<p>Task {task.name}; test split: {result['test_size']} examples.</p>",
        "<h2>Model vs baselines</h2>",
        table_html(["", *task.metrics], comparison_rows(result)),
        "<h2>Gate</h2>",
        f"<p class='{'pass' if result['passed'] else 'fail'}'>{'PASSED' if result['passed'] else 'FAILED'}</p>",
        table_html(["check", "result"], [(c, "pass" if ok else "fail") for c, ok in result["checks"].items()]),
        *task.report_sections(result),
    ]
    return page("kftune evaluation" + ("" if task.name == "classification" else f" ({task.name})"), *sections)
