"""Domain-adaptive pretraining: masked-language-model training of the base encoder on in-domain text.

The texts are the preprocessed training split's (never validation or test) and/or an unlabelled
corpus (:mod:`.corpus`). A seeded 5% of them is held out; the masked-LM loss on it, with one fixed
set of masks, is measured before and after training, so the two figures compare like with like.
Masking is transformers' ``DataCollatorForLanguageModeling`` (whole words where
``pretrain_whole_word_mask``: all pieces of a word, from the fast tokenizer's offsets, are masked
together, always replaced by [MASK]). The loop is plain PyTorch: AdamW, linear warmup and decay,
length-grouped batches, gradient clipping at norm 1.

The output is a Hugging Face model directory of the base model's own architecture (the encoder
with the pretrained weights, the base model's pooler kept, no MLM head) plus the tokenizer and
``pretrain_report.json``: ``AutoModelForSequenceClassification.from_pretrained`` loads it, so it is
what the train step fine-tunes. It is written atomically: a failed step leaves nothing.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from kftune.components.pretrain.config import PretrainConfig
from kftune.components.pretrain.corpus import read_corpus
from kftune.data.bundled import resolve_model
from kftune.data.schema import TEXT, TOKENIZER_DIR, load_splits
from kftune.errors import DataError
from kftune.storage.atomic import atomic_directory, refuse_existing_artifact
from kftune.training.loop import epoch_batches, seed_everything

logger = logging.getLogger(__name__)

REPORT_FILE = "pretrain_report.json"
WARMUP_RATIO = 0.06
MAX_GRAD_NORM = 1.0
WEIGHT_DECAY = 0.01


def gather_texts(config: PretrainConfig, dataset_dir: Path) -> tuple[list[str], dict[str, int]]:
    """The pretraining texts (training split first, then the corpus) and how many came from each source."""
    texts, sources = [], {}
    if config.pretrain_on_train_texts:
        splits, _ = load_splits(dataset_dir)  # train and validation: the test split is not in it
        train = [str(t).strip() for t in splits["train"][TEXT] if str(t).strip()]
        texts += train
        sources["train_split"] = len(train)
    if config.pretrain_corpus.strip():
        corpus = read_corpus(config.pretrain_corpus.strip(), config.pretrain_text_column)
        texts += corpus
        sources["corpus"] = len(corpus)
    if len(texts) < 2:
        raise DataError(f"pretraining needs at least 2 texts (one is held out), got {len(texts)}")
    return texts, sources


def encode(tokenizer, texts: list[str], max_length: int) -> list[dict]:
    """Token ids with the offsets and special-token mask that whole-word masking reads."""
    if not tokenizer.is_fast:
        raise DataError("pretraining needs a fast tokenizer (whole-word masking reads its offsets)")
    encoded = tokenizer(texts, truncation=True, max_length=max_length, return_offsets_mapping=True,
                        return_special_tokens_mask=True)
    return [{name: encoded[name][i] for name in encoded} for i in range(len(texts))]


def collate(examples: list[dict], collator) -> dict[str, torch.Tensor]:
    """Pad and mask a batch; the offsets are padded here (the tokenizer's ``pad`` leaves them)."""
    width = max(len(e["input_ids"]) for e in examples)
    padded = [e | {"offset_mapping": list(e["offset_mapping"]) + [(0, 0)] * (width - len(e["input_ids"]))}
              for e in examples]
    return collator(padded)


def masking_collator(tokenizer, config: PretrainConfig, seed: int):
    from transformers import DataCollatorForLanguageModeling

    # whole-word masking always replaces by [MASK]; said here so that transformers needn't warn
    replace = {"mask_replace_prob": 1.0, "random_replace_prob": 0.0} if config.pretrain_whole_word_mask else {}
    return DataCollatorForLanguageModeling(tokenizer, mlm=True, whole_word_mask=config.pretrain_whole_word_mask,
                                           mlm_probability=config.pretrain_mlm_probability, seed=seed, **replace)


def mlm_head(model) -> torch.nn.Module:
    """The masked-LM head of a ``*ForMaskedLM`` model (BERT's ``cls``, RoBERTa's ``lm_head``, ...)."""
    heads = [module for name, module in model.named_children() if name != model.base_model_prefix]
    if len(heads) != 1:
        raise RuntimeError(f"{type(model).__name__}: expected one head beside the encoder, found {len(heads)}")
    return heads[0]


def masked_token_loss(model, batch: dict[str, torch.Tensor], reduction: str = "mean") -> tuple[torch.Tensor, int]:
    """Cross-entropy on the masked tokens, the head run on those tokens only.

    The model's own forward projects every position onto the vocabulary, which on a CPU costs as
    much as the encoder; the loss is the same (``test_pretrain`` checks it).
    """
    device = next(model.parameters()).device
    batch = {k: v.to(device) for k, v in batch.items()}
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    hidden = model.base_model(**inputs).last_hidden_state
    chosen = batch["labels"] != -100
    logits = mlm_head(model)(hidden[chosen])
    loss = torch.nn.functional.cross_entropy(logits, batch["labels"][chosen], reduction=reduction)
    return loss, int(chosen.sum())


@torch.no_grad()
def masked_lm_loss(model, batches: list[dict[str, torch.Tensor]]) -> float:
    """Mean loss per masked token over fixed, already masked batches."""
    model.eval()
    total, count = 0.0, 0
    for batch in batches:
        loss, n = masked_token_loss(model, batch, reduction="sum")
        total += float(loss)
        count += n
    model.train()
    return total / max(count, 1)


def encoder_of(mlm_model, base_path: str):
    """The base model's own architecture (pooler included, from the base) holding the trained encoder weights."""
    from transformers import AutoModel

    encoder = AutoModel.from_pretrained(base_path)
    missing, unexpected = encoder.load_state_dict(mlm_model.base_model.state_dict(), strict=False)
    untrained = [k for k in missing if not k.startswith("pooler.")]
    if untrained or unexpected:
        raise RuntimeError(f"pretrained encoder does not match the base model: missing {untrained[:5]}, "
                           f"unexpected {unexpected[:5]}")
    return encoder


def pretrain(config: PretrainConfig, dataset_dir: str | Path, output_dir: str | Path) -> dict:
    """Masked-LM training of ``config.model`` on the gathered texts; write the model to ``output_dir``; return the report."""  # noqa: E501
    from transformers import AutoModelForMaskedLM, AutoTokenizer, get_linear_schedule_with_warmup

    from kftune.tasks import resolve_task

    config = resolve_task(config, dataset_dir)
    config.validate()
    dataset_dir, output_dir = Path(dataset_dir), Path(output_dir)
    refuse_existing_artifact(output_dir)
    started = time.perf_counter()
    seed_everything(config.seed)
    texts, sources = gather_texts(config, dataset_dir)
    tokenizer_dir = dataset_dir / TOKENIZER_DIR
    base_path = resolve_model(config.model)
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir if tokenizer_dir.is_dir() else base_path))
    examples = encode(tokenizer, texts, config.pretrain_max_length)

    order = np.random.default_rng(config.seed).permutation(len(examples))
    n_holdout = max(1, round(config.pretrain_holdout_fraction * len(examples)))
    holdout = [examples[i] for i in order[:n_holdout]]
    train = [examples[i] for i in order[n_holdout:]]
    holdout_collator = masking_collator(tokenizer, config, seed=config.seed + 1)
    holdout_batches = [collate(holdout[i:i + config.pretrain_batch_size], holdout_collator)
                       for i in range(0, len(holdout), config.pretrain_batch_size)]

    model = AutoModelForMaskedLM.from_pretrained(base_path)
    model.to(torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")).train()
    loss_before = masked_lm_loss(model, holdout_batches)
    logger.info("held-out masked-LM loss before pretraining: %.4f (%d texts)", loss_before, len(holdout))

    lengths = np.array([len(e["input_ids"]) for e in train])
    per_epoch = math.ceil(len(train) / config.pretrain_batch_size)
    total_steps = per_epoch * config.pretrain_epochs
    if config.pretrain_max_steps:
        total_steps = min(total_steps, config.pretrain_max_steps)
    no_decay = ("bias", "LayerNorm.weight", "layer_norm.weight")
    groups = [
        {"params": [p for n, p in model.named_parameters() if not n.endswith(no_decay)], "weight_decay": WEIGHT_DECAY},
        {"params": [p for n, p in model.named_parameters() if n.endswith(no_decay)], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(groups, lr=config.pretrain_learning_rate)
    schedule = get_linear_schedule_with_warmup(optimizer, math.ceil(WARMUP_RATIO * total_steps), total_steps)
    collator = masking_collator(tokenizer, config, seed=config.seed)
    step, losses = 0, []
    with tqdm(total=total_steps, desc="pretrain (masked LM)", unit="step") as bar:
        for epoch in range(config.pretrain_epochs):
            for indices in epoch_batches(lengths, config.pretrain_batch_size, config.seed, epoch, group_by_length=True):
                if step >= total_steps:
                    break
                batch = collate([train[i] for i in indices], collator)
                loss, masked = masked_token_loss(model, batch)
                if not masked:  # nothing to predict in this batch (a few very short texts)
                    continue
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_GRAD_NORM)
                optimizer.step()
                schedule.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                losses.append(loss.item())
                bar.update(1)
                bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
    loss_after = masked_lm_loss(model, holdout_batches)
    logger.info("held-out masked-LM loss after %d steps: %.4f (before: %.4f)", step, loss_after, loss_before)

    report = {
        "base_model": config.model,
        "texts": sources,
        "train_texts": len(train),
        "holdout_texts": len(holdout),
        "steps": step,
        "epochs": config.pretrain_epochs,
        "whole_word_mask": config.pretrain_whole_word_mask,
        "mlm_probability": config.pretrain_mlm_probability,
        "learning_rate": config.pretrain_learning_rate,
        "batch_size": config.pretrain_batch_size,
        "max_length": config.pretrain_max_length,
        "seed": config.seed,
        "heldout_loss_before": loss_before,
        "heldout_loss_after": loss_after,
        "heldout_perplexity_before": math.exp(min(loss_before, 50.0)),
        "heldout_perplexity_after": math.exp(min(loss_after, 50.0)),
        "train_loss_last_epoch_mean": float(np.mean(losses[-per_epoch:])) if losses else None,
        "seconds": round(time.perf_counter() - started, 1),
    }
    encoder = encoder_of(model.cpu(), base_path)
    with atomic_directory(output_dir) as tmp:
        encoder.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        (tmp / REPORT_FILE).write_text(json.dumps(report, indent=2), encoding="utf-8")
    return report
