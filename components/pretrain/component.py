"""KFP component: optional domain-adaptive masked-LM pretraining before fine-tuning (thin door over
pretrain.py; its settings come from PretrainConfig).

The step is always in the finetune pipeline, since kfp.local cannot pass a model out of a
conditional branch (``dsl.OneOf`` of artifacts); with ``pretrain`` off it writes only a report that
says so, and the train step, seeing no model in the artifact, fine-tunes ``model`` as before.
"""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from kftune.cluster.images import ImageScheme
from kftune.components.pretrain.config import PretrainConfig
from kftune.settings.signatures import with_settings


@with_settings(PretrainConfig)
def pretrain(
    dataset: Input[Dataset],
    pretrained_model: Output[Model],
    metrics: Output[Metrics],
):
    """Continue the base model's masked-language-model training (whole-word masking) on the training texts and/or an unlabelled corpus.

    Args:
        dataset: Train and validation splits from preprocess (the train split's texts, and the tokenizer).
        pretrained_model: Output: the adapted encoder as a Hugging Face model directory (tokenizer, pretrain_report.json), which train fine-tunes; with pretrain off, only pretrain_report.json ({"skipped": true}).
        metrics: Output: held-out masked-LM loss and perplexity before and after, steps, texts.
    """  # noqa: E501
    values = dict(locals())
    import json
    import logging
    from pathlib import Path

    from kftune.components.pretrain.config import PretrainConfig
    from kftune.components.pretrain.pretrain import REPORT_FILE
    from kftune.components.pretrain.pretrain import pretrain as run
    from kftune.settings.fields import settings_from

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = settings_from(PretrainConfig, values)
    if not config.pretrain:
        Path(pretrained_model.path).mkdir(parents=True, exist_ok=True)
        (Path(pretrained_model.path) / REPORT_FILE).write_text(json.dumps({"skipped": True}), encoding="utf-8")
        pretrained_model.metadata["skipped"] = True
        return
    report = run(config, dataset.path, pretrained_model.path)
    for name in ("heldout_loss_before", "heldout_loss_after", "heldout_perplexity_before", "heldout_perplexity_after",
                 "steps", "train_texts", "seconds"):
        metrics.log_metric(name, report[name])
    pretrained_model.metadata.update({"framework": "pytorch", "format": "huggingface", "base_model": config.model,
                                      "skipped": False})


def component(images: ImageScheme = ImageScheme()):
    """The pretrain component running in its image under ``images``."""
    return dsl.component(pretrain, base_image=images.image("pretrain"), install_kfp_package=False)
