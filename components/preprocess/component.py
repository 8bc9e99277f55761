"""KFP component: clean, split and tokenize labelled text (thin door over preprocess.py; its
settings come from PreprocessConfig)."""

from kfp import dsl
from kfp.dsl import HTML, Dataset, Metrics, Output

from kftune.cluster.images import ImageScheme
from kftune.components.preprocess.config import PreprocessConfig
from kftune.settings.signatures import with_settings


@with_settings(PreprocessConfig)
def preprocess(
    dataset: Output[Dataset],
    test_split: Output[Dataset],
    report: Output[HTML],
    metrics: Output[Metrics],
):
    """Clean, deduplicate, split (stratified) and tokenize labelled text.

    Args:
        dataset: Output: tokenized train and validation splits, label map, tokenizer and task: what training and search see.
        test_split: Output: the tokenized test split alone, given only to evaluate and export.
        report: Output: HTML data report (rows removed per rule, label distribution, lengths).
        metrics: Output: the data report's figures as scalars.
    """
    values = dict(locals())
    import json
    from pathlib import Path

    from kftune.components.preprocess.config import PreprocessConfig
    from kftune.components.preprocess.preprocess import preprocess as run
    from kftune.components.preprocess.report import data_report_html, data_report_metrics
    from kftune.data.schema import TEST_SPLIT, TRAINING_SPLITS
    from kftune.settings.fields import settings_from

    stats = run(settings_from(PreprocessConfig, values), dataset.path, test_split.path)
    lengths = stats.pop("_lengths")
    Path(report.path).write_text(data_report_html(stats, lengths), encoding="utf-8")
    for name, value in data_report_metrics(stats).items():
        metrics.log_metric(name, value)
    sizes = stats["split_sizes"]
    dataset.metadata.update({"labels": json.dumps(stats["labels"]),
                             "splits": json.dumps({name: sizes[name] for name in TRAINING_SPLITS})})
    test_split.metadata.update({"split": TEST_SPLIT, "rows": sizes[TEST_SPLIT]})


def component(images: ImageScheme = ImageScheme()):
    """The preprocess component running in its image under ``images``."""
    return dsl.component(preprocess, base_image=images.image("preprocess"), install_kfp_package=False)
