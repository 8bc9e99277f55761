"""The pretrain step: masked-LM training lowers the held-out loss, whole-word masking masks words
whole, its model fine-tunes through the train step, bad corpora fail in one line with nothing
written, and the local pipeline runs with pretraining on."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from kftune.components.pretrain.config import PretrainConfig
from kftune.components.pretrain.corpus import read_corpus
from kftune.components.pretrain.pretrain import REPORT_FILE, collate, masking_collator, pretrain
from kftune.errors import ConfigError, DataError


def tiny_config(tiny_model: Path, **overrides) -> PretrainConfig:
    values = dict(pretrain=True, model=str(tiny_model), pretrain_epochs=4, pretrain_learning_rate=3e-3,
                  pretrain_batch_size=16, seed=1)
    return PretrainConfig(**(values | overrides))


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory, prepared, tiny_model) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("pretrained") / "model"
    report = pretrain(tiny_config(tiny_model, pretrain_corpus="bundled:rotten-tomatoes-plots",
                                  pretrain_max_steps=60), prepared, out)
    return out, report


def test_masked_lm_steps_lower_the_held_out_loss(pretrained):
    out, report = pretrained
    assert report["steps"] == 60
    assert report["texts"]["corpus"] > 1000 and report["texts"]["train_split"] > 200
    assert report["heldout_loss_after"] < report["heldout_loss_before"] - 0.5
    assert json.loads((out / REPORT_FILE).read_text()) == report
    assert (out / "tokenizer.json").is_file()


def test_whole_word_masking_masks_every_piece_of_a_word(tiny_model):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model))
    text = "An unforgettably mesmerizing, overwrought melodrama about hyperventilating thespians."
    pieces = tokenizer.tokenize(text)
    assert sum(p.startswith("##") for p in pieces) >= 4  # real multi-piece words to test on
    encoded = [dict(tokenizer(text, return_offsets_mapping=True, return_special_tokens_mask=True))] * 64
    offsets = encoded[0]["offset_mapping"]
    words = []  # token positions per whitespace-separated word
    for position, (start, end) in enumerate(offsets):
        if start == end:
            continue
        if words and text[offsets[words[-1][-1]][1]:start] == "":
            words[-1].append(position)
        else:
            words.append([position])
    batch = collate(encoded, masking_collator(tokenizer, PretrainConfig(pretrain_mlm_probability=0.3), seed=0))
    masked = batch["labels"] != -100
    partly = 0
    for row in masked:
        for word in words:
            picked = row[word]
            assert bool(picked.all()) or not bool(picked.any()), f"word {word} masked in part"
            partly += int(picked.any() and len(word) > 1)
        assert not row[0] and not row[len(offsets) - 1]  # [CLS] and [SEP] are never masked
    assert partly > 0  # multi-piece words were masked, each whole
    assert (batch["input_ids"][masked] == tokenizer.mask_token_id).all()
    token_mask = collate(encoded, masking_collator(tokenizer, PretrainConfig(pretrain_whole_word_mask=False,
                                                                             pretrain_mlm_probability=0.3), seed=0))
    split_words = sum(bool(r[w].any()) and not bool(r[w].all()) for r in token_mask["labels"] != -100 for w in words)
    assert split_words > 0  # token-level masking does split words: the check above could fail


def test_the_output_fine_tunes_through_the_train_step(pretrained, prepared, tmp_path):
    from transformers import AutoModelForSequenceClassification

    from kftune.training.config import TrainConfig
    from kftune.training.loop import train

    out, _ = pretrained
    classifier = AutoModelForSequenceClassification.from_pretrained(str(out), num_labels=2)
    from transformers import AutoModelForMaskedLM

    adapted = AutoModelForMaskedLM.from_pretrained(str(out))  # the encoder weights are the pretrained ones
    embeddings = classifier.bert.embeddings.word_embeddings.weight
    assert torch.equal(embeddings, adapted.bert.embeddings.word_embeddings.weight)
    history = train(TrainConfig(model=str(out), num_train_epochs=1, learning_rate=1e-3,
                                per_device_train_batch_size=16, logging_steps=5), prepared, tmp_path / "model")
    assert (tmp_path / "model" / "config.json").is_file()
    assert history["best_epoch"] == 1


def test_the_encoder_differs_from_the_base_and_keeps_its_pooler(pretrained, tiny_model):
    from transformers import AutoModel

    base, adapted = AutoModel.from_pretrained(str(tiny_model)), AutoModel.from_pretrained(str(pretrained[0]))
    assert not torch.equal(base.encoder.layer[0].attention.self.query.weight,
                           adapted.encoder.layer[0].attention.self.query.weight)
    assert torch.equal(base.pooler.dense.weight, adapted.pooler.dense.weight)


@pytest.mark.parametrize("content, column, message", [
    (pd.DataFrame({"body": ["a plot", "another"]}), "text", "no column 'text'; the columns are: body"),
    (pd.DataFrame({"text": ["", "   ", None]}), "text", "holds no non-empty text"),
])
def test_a_bad_corpus_is_one_clear_line_and_nothing_is_written(tmp_path, prepared, tiny_model, content, column,
                                                                message):
    corpus = tmp_path / "corpus.csv"
    content.to_csv(corpus, index=False)
    out = tmp_path / "out"
    with pytest.raises(DataError) as error:
        pretrain(tiny_config(tiny_model, pretrain_corpus=str(corpus), pretrain_text_column=column), prepared, out)
    assert message in str(error.value) and str(corpus) in str(error.value)
    assert "\n" not in str(error.value)
    assert not out.exists() and list(tmp_path.iterdir()) == [corpus]


def test_corpus_formats_and_errors(tmp_path):
    (tmp_path / "plots.txt").write_text("first plot\n\n  second plot  \n", encoding="utf-8")
    assert read_corpus(str(tmp_path / "plots.txt")) == ["first plot", "second plot"]
    pd.DataFrame({"plot": ["x y", "z"]}).to_json(tmp_path / "p.jsonl", orient="records", lines=True)
    assert read_corpus(str(tmp_path / "p.jsonl"), "plot") == ["x y", "z"]
    (tmp_path / "empty.csv").write_text("", encoding="utf-8")
    with pytest.raises(DataError, match="empty.csv: file is empty"):
        read_corpus(str(tmp_path / "empty.csv"))
    with pytest.raises(DataError, match="no such file"):
        read_corpus(str(tmp_path / "missing.csv"))
    (tmp_path / "plots.doc").write_text("x", encoding="utf-8")
    with pytest.raises(DataError, match="unknown corpus format '.doc'"):
        read_corpus(str(tmp_path / "plots.doc"))
    plots = read_corpus("bundled:rotten-tomatoes-plots")
    assert 1000 < len(plots) < 1200 and all(p.strip() == p and p for p in plots)


def test_config_refuses_nothing_to_train_on_and_other_tasks():
    with pytest.raises(ConfigError, match="nothing to train on"):
        PretrainConfig(pretrain=True, pretrain_on_train_texts=False).validate()
    with pytest.raises(ConfigError, match="not of task causal-lm"):
        PretrainConfig(pretrain=True, task="causal-lm").validate()
    with pytest.raises(ConfigError, match="pretrain_mlm_probability"):
        PretrainConfig(pretrain_mlm_probability=1.5).validate()


def test_pretrain_settings_do_not_collide_with_the_pipelines():
    from kftune.pipelines.finetune import SETTINGS
    from kftune.settings.catalog import settings_of

    names = [s.name for s in settings_of(*SETTINGS)]
    assert len(names) == len(set(names))
    assert {"pretrain", "pretrain_corpus", "pretrain_learning_rate"} <= set(names)


@pytest.mark.slow
def test_the_bundled_model_adapts_in_a_few_steps(prepared, tmp_path):
    """The real all-MiniLM-L6-v2 (its MLM head is new: the held-out loss starts high) for 15 steps."""
    from transformers import AutoModelForSequenceClassification

    report = pretrain(PretrainConfig(pretrain=True, pretrain_corpus="bundled:rotten-tomatoes-plots",
                                     pretrain_max_steps=15, pretrain_holdout_fraction=0.01, seed=1),
                      prepared, tmp_path / "model")
    assert report["heldout_loss_after"] < report["heldout_loss_before"]
    AutoModelForSequenceClassification.from_pretrained(str(tmp_path / "model"), num_labels=2)


def test_the_loss_on_masked_tokens_only_equals_the_models_own(tiny_model, prepared):
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    from kftune.components.pretrain.pretrain import encode, masked_token_loss

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model))
    model = AutoModelForMaskedLM.from_pretrained(str(tiny_model)).eval()
    examples = encode(tokenizer, ["a quietly moving film", "an overlong, overwrought mess of a sequel"], 32)
    batch = collate(examples * 8, masking_collator(tokenizer, PretrainConfig(), seed=3))
    with torch.no_grad():
        mine, masked = masked_token_loss(model, batch)
        theirs = model(**batch).loss
    assert masked > 0
    assert torch.allclose(mine, theirs, atol=1e-5)


def test_the_step_is_a_no_op_when_off_and_train_then_keeps_its_model(tmp_path):
    from types import SimpleNamespace

    from kftune.components.pretrain import component

    out = SimpleNamespace(path=str(tmp_path / "pretrained"), metadata={})
    component.pretrain(dataset=SimpleNamespace(path=str(tmp_path / "no-dataset")), pretrained_model=out,
                       metrics=SimpleNamespace(log_metric=None))
    assert json.loads((tmp_path / "pretrained" / REPORT_FILE).read_text()) == {"skipped": True}
    assert not (tmp_path / "pretrained" / "config.json").exists() and out.metadata["skipped"] is True


def test_the_compiled_pipeline_feeds_pretrain_into_train(tmp_path):
    import yaml
    from kfp import compiler

    from kftune.pipelines.finetune import finetune

    compiler.Compiler().compile(finetune, str(tmp_path / "finetune.yaml"))
    pipeline = next(yaml.safe_load_all((tmp_path / "finetune.yaml").read_text()))
    tasks = pipeline["root"]["dag"]["tasks"]
    artifact = tasks["train"]["inputs"]["artifacts"]["pretrained_model"]["taskOutputArtifact"]
    assert artifact == {"outputArtifactKey": "pretrained_model", "producerTask": "pretrain"}
    assert tasks["pretrain"]["inputs"]["artifacts"]["dataset"]["taskOutputArtifact"]["producerTask"] == "preprocess"
    params = pipeline["root"]["inputDefinitions"]["parameters"]
    assert params["pretrain"]["defaultValue"] is False  # off unless asked for
    train_inputs = pipeline["components"]["comp-train"]["inputDefinitions"]["artifacts"]
    assert train_inputs["pretrained_model"]["isOptional"] is True  # the tune pipeline's train goes without
