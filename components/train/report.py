"""Training curves: per-epoch validation scores and per-step loss, as Metrics and HTML."""

from __future__ import annotations

from kftune.reports import figure_html, new_figure, page, table_html


def history_metrics(history: dict) -> dict[str, float]:
    """Scalars for a KFP ``Metrics`` artifact."""
    best = history["epochs"][history["best_epoch"] - 1]
    rates = [e["train_samples_per_second"] for e in history["epochs"]]
    tokens = [e.get("train_tokens_per_second", 0.0) for e in history["epochs"]]
    return {
        "best_epoch": history["best_epoch"],
        "epochs_run": len(history["epochs"]),
        f"best_val_{history['best_metric']}": history["best_score"],
        **{name: value for name, value in best.items() if name.startswith("val_")},
        "train_seconds": history["train_seconds"],
        "train_samples_per_second": sum(rates) / len(rates),
        "train_tokens_per_second": sum(tokens) / len(tokens),
    }


def validation_columns(epochs: list[dict]) -> list[str]:
    """The validation scores the epochs report besides the loss (accuracy, f1_macro; perplexity for a causal LM)."""
    return [k for k in epochs[0] if k.startswith("val_") and k != "val_loss"]


def curves_html(history: dict) -> str:
    """A self-contained HTML page with the loss and validation curves."""
    fig, (loss_ax, val_ax) = new_figure(10, 3.5, ncols=2)
    steps = history["steps"]
    if steps:
        loss_ax.plot([s["epoch"] for s in steps], [s["loss"] for s in steps], label="train loss")
    epochs = history["epochs"]
    loss_ax.plot([e["epoch"] for e in epochs], [e["val_loss"] for e in epochs], "o-", label="validation loss")
    loss_ax.set_xlabel("epoch")
    loss_ax.legend()
    scores = validation_columns(epochs)
    for name in scores:
        val_ax.plot([e["epoch"] for e in epochs], [e[name] for e in epochs], "o-", label=name[4:])
    val_ax.set_xlabel("epoch")
    val_ax.set_title("validation")
    val_ax.legend()
    rows = [
        (e["epoch"], e["train_loss"], e["val_loss"], *(e[name] for name in scores),
         e["train_samples_per_second"], e.get("train_tokens_per_second", 0.0), e["epoch_seconds"])
        for e in epochs
    ]
    return page(
        "kftune training",
        f"<p>Best epoch {history['best_epoch']} by validation {history['best_metric']} "
        f"({history['best_score']:.4f}); {history['world_size']} process(es); {history['training_mode']} "
        f"training in {history['precision']} precision; {history['train_seconds']:.0f} s.</p>",
        figure_html(fig),
        table_html(["epoch", "train loss", "val loss", *(f"val {n[4:]}" for n in scores), "samples/s", "tokens/s",
                    "seconds"], rows),
    )
