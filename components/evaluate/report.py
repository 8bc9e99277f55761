"""The evaluation report: model vs baselines, gate checks, per-class scores, plots."""

from __future__ import annotations

import numpy as np

from kftune.components.common.reports import figure_html, markdown_table, new_figure, page, table_html
from kftune.components.evaluate.evaluate import SUMMARY_KEYS


def comparison_rows(result: dict) -> list[tuple]:
    rows = [("fine-tuned model", *(result["model"][k] for k in SUMMARY_KEYS))]
    for name, scores in result["baselines"].items():
        rows.append((f"baseline: {name}", *(scores[k] for k in SUMMARY_KEYS)))
    rows.append(("delta vs tfidf_logreg", *(result["delta_vs_baseline"][k] for k in SUMMARY_KEYS)))
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
        table = markdown_table(["test split", *SUMMARY_KEYS], comparison_rows(result))
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
    names = result["labels"]
    matrix = np.asarray(result["model"]["confusion_matrix"])
    fig, ax = new_figure(4 + 0.4 * len(names), 3.5 + 0.4 * len(names))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for (i, j), value in np.ndenumerate(matrix):
        ax.text(j, i, str(value), ha="center", va="center",
                color="white" if value > matrix.max() / 2 else "black")
    sections = [
        f"<p>Test split: {result['test_size']} examples.</p>",
        "<h2>Model vs baselines</h2>",
        table_html(["", *SUMMARY_KEYS], comparison_rows(result)),
        "<h2>Gate</h2>",
        f"<p class='{'pass' if result['passed'] else 'fail'}'>{'PASSED' if result['passed'] else 'FAILED'}</p>",
        table_html(["check", "result"], [(c, "pass" if ok else "fail") for c, ok in result["checks"].items()]),
        "<h2>Per class</h2>",
        table_html(
            ["label", "precision", "recall", "f1", "support"],
            [(n, s["precision"], s["recall"], s["f1"], s["support"]) for n, s in result["model"]["per_class"].items()],
        ),
        "<h2>Confusion matrix</h2>",
        figure_html(fig),
    ]
    if "roc_curve" in result["model"]:
        fig, ax = new_figure(4.5, 4)
        curve = result["model"]["roc_curve"]
        ax.plot(curve["fpr"], curve["tpr"], label=f"model (AUC {result['model']['roc_auc']:.3f})")
        base = result["baselines"]["tfidf_logreg"]
        if "roc_curve" in base:
            ax.plot(base["roc_curve"]["fpr"], base["roc_curve"]["tpr"], label=f"TF-IDF (AUC {base['roc_auc']:.3f})")
        ax.plot([0, 1], [0, 1], "k:", linewidth=0.8)
        ax.set_xlabel("false positive rate")
        ax.set_ylabel("true positive rate")
        ax.legend()
        sections += ["<h2>ROC curve</h2>", figure_html(fig)]
    return page("kftune evaluation", *sections)
