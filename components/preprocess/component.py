"""KFP component: clean, split and tokenize labelled text (thin layer over preprocess.py)."""

from kfp import dsl
from kfp.dsl import HTML, Dataset, Metrics, Output

from kftune.components.common.images import ImageScheme


def preprocess(
    dataset: Output[Dataset],
    report: Output[HTML],
    metrics: Output[Metrics],
    data: str = "bundled:rotten-tomatoes",
    text_column: str = "text",
    label_column: str = "label",
    data_format: str = "auto",
    model: str = "bundled:all-MiniLM-L6-v2",
    max_seq_length: int = 128,
    min_chars: int = 3,
    max_chars: int = 5000,
    max_rows: int = 0,
    validation_fraction: float = 0.1,
    test_fraction: float = 0.1,
    seed: int = 42,
    augment_copies: int = 0,
    augment_probability: float = 0.1,
):
    """Clean, deduplicate, split (stratified) and tokenize labelled text.

    Args:
        dataset: Output: tokenized train/validation/test splits, label map and tokenizer.
        report: Output: HTML data report (rows removed per rule, label distribution, lengths).
        metrics: Output: the data report's figures as scalars.
        data: Input data: a CSV/TSV/JSONL/Parquet file, a directory of shards or a datasets.save_to_disk directory, local or s3:// / gs:// (credentials from the environment), or bundled:rotten-tomatoes.
        text_column: Column holding the text.
        label_column: Column holding the label (strings or integers).
        data_format: auto (from the file name), csv, tsv, jsonl, parquet or hf-disk.
        model: Model whose fast tokenizer encodes the text: local directory, bundled name or hub id.
        max_seq_length: Texts are truncated to this many tokens.
        min_chars: Texts shorter than this (after cleaning) are dropped.
        max_chars: Texts longer than this (after cleaning) are dropped.
        max_rows: Keep a stratified sample of this many cleaned rows (0 keeps all).
        validation_fraction: Share of rows in the validation split.
        test_fraction: Share of rows in the test split.
        seed: Seed of the split, the sample and the augmentation.
        augment_copies: Noisy copies added per training example (0 turns augmentation off).
        augment_probability: Per-word probability of deletion and replacement, and swap rate.
    """
    import json
    from pathlib import Path

    from kftune.components.preprocess.preprocess import PreprocessConfig
    from kftune.components.preprocess.preprocess import preprocess as run
    from kftune.components.preprocess.report import data_report_html, data_report_metrics

    config = PreprocessConfig(
        data=data, text_column=text_column, label_column=label_column, data_format=data_format,
        model=model, max_seq_length=max_seq_length, min_chars=min_chars, max_chars=max_chars,
        max_rows=max_rows, validation_fraction=validation_fraction, test_fraction=test_fraction,
        seed=seed, augment_copies=augment_copies, augment_probability=augment_probability,
    )
    stats = run(config, dataset.path)
    lengths = stats.pop("_lengths")
    Path(report.path).write_text(data_report_html(stats, lengths), encoding="utf-8")
    for name, value in data_report_metrics(stats).items():
        metrics.log_metric(name, value)
    dataset.metadata.update({"labels": json.dumps(stats["labels"]), "splits": json.dumps(stats["split_sizes"])})


def component(images: ImageScheme = ImageScheme()):
    """The preprocess component running in its image under ``images``."""
    return dsl.component(preprocess, base_image=images.image("preprocess"), install_kfp_package=False)
