"""The search report: a table of trials and plots, as HTML for the KFP UI and Markdown for the CLI."""

from __future__ import annotations

from kftune.components.tune.search import counts
from kftune.reports import figure_html, markdown_table, new_figure, page, table_html


def _rows(search: dict) -> tuple[list[str], list[list]]:
    names = list(search["trials"][0]["params"]) if search["trials"] else []
    header = ["trial", *names, "val score", "state", "epochs", "seconds", "note"]
    rows = []
    for r in search["trials"]:
        note = r["error"] or ("best" if r["number"] == search["best"]["number"] else "")
        rows.append([r["number"], *(r["params"].get(n, "") for n in names),
                     r["score"] if r["score"] is not None else "-", r["state"], len(r["epoch_scores"]),
                     round(r["seconds"]), note])
    return header, rows


def search_markdown(search: dict) -> str:
    header, rows = _rows(search)
    best = search["best"]
    done = counts(search["trials"])
    return (
        f"{search['algorithm']} search ({search['direction']} validation {search.get('metric', 'score')}): "
        f"{len(search['trials'])} trials, {done['complete']} complete, {done['pruned']} pruned, "
        f"{done['failed']} failed; best trial {best['number']} scored {best['score']:.4f}\n\n"
        + markdown_table(header, rows) + "\n"
    )


def search_html(search: dict) -> str:
    """Scores per trial (and per epoch), the trial table and Optuna's parameter importances."""
    trials = search["trials"]
    fig, (score_ax, epoch_ax) = new_figure(11, 3.5, ncols=2)
    colors = {"complete": "tab:blue", "pruned": "tab:orange", "failed": "tab:red"}
    for state, color in colors.items():
        points = [(r["number"], r["score"]) for r in trials if r["state"] == state and r["score"] is not None]
        if points:
            score_ax.scatter(*zip(*points, strict=True), color=color, label=state)
    best = search["best"]
    score_ax.scatter([best["number"]], [best["score"]], marker="*", s=250, color="gold", edgecolor="k",
                     label="best", zorder=3)
    score_ax.set_xlabel("trial")
    score_ax.set_title(f"validation {search.get('metric', 'score')} per trial")
    score_ax.legend()
    for r in trials:
        if r["epoch_scores"]:
            epoch_ax.plot(range(1, len(r["epoch_scores"]) + 1), r["epoch_scores"], "o-",
                          color=colors[r["state"]], alpha=0.7)
    epoch_ax.set_xlabel("epoch")
    epoch_ax.set_title("validation score per epoch (orange: pruned)")
    sections = [figure_html(fig)]
    if search.get("importance"):
        names = list(search["importance"])
        fig, ax = new_figure(6, 0.5 + 0.4 * len(names))
        ax.barh(names[::-1], [search["importance"][n] for n in names][::-1])
        ax.set_title("parameter importance (Optuna, fANOVA)")
        sections.append(figure_html(fig))
    header, rows = _rows(search)
    done = counts(trials)
    intro = (f"<p>{search['algorithm']} search, {search['direction']} validation {search.get('metric', 'score')}: "
             f"{len(trials)} trials ({done['complete']} complete, {done['pruned']} pruned, {done['failed']} failed). "
             f"Best: trial {best['number']}, {best['score']:.4f}, with "
             + ", ".join(f"{k}={v}" for k, v in best["params"].items()) + ".</p>")
    return page("kftune hyperparameter search", intro, *sections, table_html(header, rows))


def write_search_outputs(search: dict, record, report, summary, metrics):
    """Write a search's KFP outputs (record JSON, HTML report, Markdown table, Metrics) and return
    ``(best_params, best_score)`` as the components' named outputs."""
    import json
    from collections import namedtuple
    from pathlib import Path

    Path(record.path).write_text(json.dumps(search, indent=2), encoding="utf-8")
    Path(report.path).write_text(search_html(search), encoding="utf-8")
    Path(summary.path).write_text(search_markdown(search), encoding="utf-8")
    best = search["best"]
    metrics.log_metric(f"best_val_{search['metric']}", best["score"])
    metrics.log_metric("best_trial", best["number"])
    for state, count in counts(search["trials"]).items():
        metrics.log_metric(f"trials_{state}", count)
    outputs = namedtuple("SearchOutputs", ["best_params", "best_score"])
    return outputs(best["params"], float(best["score"]))
