"""The data report: rows removed per rule, label distribution per split, length histogram."""

from __future__ import annotations

import numpy as np

from kftune.data.schema import SPLITS
from kftune.reports import figure_html, new_figure, page, table_html


def data_report_html(stats: dict, lengths: dict[str, np.ndarray]) -> str:
    """Render preprocessing stats (from ``preprocess``) as a self-contained HTML page."""
    removed = stats["removed"]
    rules = table_html(
        ["rule", "rows removed"],
        [*removed.items(), ("total", sum(removed.values()))],
    )
    overview = table_html(
        ["", "rows"],
        [
            ("read", stats["rows_read"]),
            ("after cleaning", stats["rows_clean"]),
            ("used (after max_rows)", stats["rows_used"]),
            ("augmented (added to train)", stats["augmented_rows"]),
            *((f"split: {s}", stats["split_sizes"][s]) for s in SPLITS),
        ],
    )
    labels = stats["labels"]
    dist = stats["label_distribution"]
    def share(split: str, label: str) -> str:
        count = dist[split].get(label, 0)
        return f"{count} ({count / max(1, stats['split_sizes'][split]):.1%})"

    if labels:
        distribution = table_html(["label", *SPLITS],
                                  [(label, *(share(s, label) for s in SPLITS)) for label in labels])
    else:  # a regression target: its statistics per split
        keys = list(dist[SPLITS[0]])
        distribution = table_html(["target", *SPLITS], [(k, *(float(dist[s][k]) for s in SPLITS)) for k in keys])
    fig, ax = new_figure()
    top = max(int(max(v.max() for v in lengths.values())), 1)
    bins = np.linspace(0, top, 41)
    for name in SPLITS:
        ax.hist(lengths[name], bins=bins, alpha=0.5, label=name, density=True)
    ax.set_xlabel("tokens per text (after truncation)")
    ax.set_ylabel("density")
    ax.legend()
    tokens = stats["token_length"]
    return page(
        "kftune data report",
        f"<p>Source: <code>{stats['source']}</code>; task {stats['task']} "
        f"({stats.get('task_decided', 'set')})</p>",
        "<h2>Rows</h2>",
        overview,
        "<h2>Removed per rule</h2>",
        rules,
        "<h2>Label distribution</h2>",
        distribution,
        "<h2>Text length</h2>",
        f"<p>median {tokens['p50']:.0f} tokens, p95 {tokens['p95']:.0f}, "
        f"{tokens['truncated_fraction']:.1%} truncated at max_seq_length</p>",
        figure_html(fig),
    )


def data_report_metrics(stats: dict) -> dict[str, float]:
    """Flat scalar metrics for a KFP ``Metrics`` artifact."""
    metrics = {
        "rows_read": stats["rows_read"],
        "rows_clean": stats["rows_clean"],
        "augmented_rows": stats["augmented_rows"],
        "num_labels": len(stats["labels"]),
        "token_length_p95": stats["token_length"]["p95"],
        "truncated_fraction": stats["token_length"]["truncated_fraction"],
    }
    metrics.update({f"removed_{rule}": n for rule, n in stats["removed"].items()})
    metrics.update({f"rows_{s}": n for s, n in stats["split_sizes"].items()})
    return metrics
