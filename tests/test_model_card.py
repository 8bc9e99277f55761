"""The model card every export writes: Hugging Face metadata that ``ModelCard.load`` reads back, the model's test
scores exactly as evaluate's result has them (with their intervals), the base model, the data's digest and licence,
and a plain statement where the model was not evaluated."""

from __future__ import annotations

import json
import re
import shutil

import pytest
from huggingface_hub import ModelCard

from kftune.components.export.config import ExportConfig
from kftune.components.export.export import export_model
from kftune.components.export.model_card import build_model_card
from kftune.data.schema import MODEL_CARD, splits_sha256
from kftune.tasks import task_named


@pytest.fixture(scope="module")
def evaluation(trained, prepared, prepared_test) -> dict:
    """Evaluate's result for the tiny trained model, as the pipeline hands it on (JSON)."""
    from kftune.components.evaluate.config import EvaluateConfig
    from kftune.components.evaluate.evaluate import evaluate

    result = evaluate(trained, prepared, prepared_test, EvaluateConfig())
    return json.loads(json.dumps({k: v for k, v in result.items() if k != "model"}
                                 | {"model": {k: v for k, v in result["model"].items() if k != "roc_curve"}}))


@pytest.fixture(scope="module")
def evaluated_export(tmp_path_factory, trained, prepared, prepared_test, evaluation) -> tuple:
    out = tmp_path_factory.mktemp("card") / "export"
    report = export_model(trained, prepared, prepared_test, out, ExportConfig(quantize_int8=False),
                          evaluation=evaluation)
    return out, report


def test_card_metadata_holds_the_evaluation_exactly(evaluated_export, evaluation, prepared, prepared_test,
                                                    tiny_model):
    out, report = evaluated_export
    card = ModelCard.load(out / MODEL_CARD)
    digest = splits_sha256(prepared, prepared_test)
    assert re.fullmatch(r"[0-9a-f]{64}", digest)
    # the Hub's schema
    assert (card.data.pipeline_tag, card.data.library_name) == ("text-classification", "onnx")
    assert "kftune" in card.data.tags and "classification" in card.data.tags
    # model-index: the model's test scores, exactly the result's, on the test split of the data with that digest
    keys = task_named("classification").result_metrics(evaluation)
    assert {r.metric_type: r.metric_value for r in card.data.eval_results} == {k: evaluation["model"][k] for k in keys}
    assert {(r.dataset_split, r.dataset_revision, r.task_type) for r in card.data.eval_results} == {
        ("test", digest, "text-classification")}
    facts = card.data.kftune
    # the bootstrap intervals, the baselines and the gate, as the result has them
    assert facts["evaluation"]["intervals"] == evaluation["intervals"]
    assert set(evaluation["intervals"]) >= {"accuracy", "f1_macro"}
    assert facts["evaluation"]["resamples"] == evaluation["resamples"]
    assert facts["evaluation"]["checks"] == evaluation["checks"]
    assert facts["evaluation"]["baselines"]["tfidf_logreg"]["accuracy"] == (
        evaluation["baselines"]["tfidf_logreg"]["accuracy"])
    assert facts["gate"] == ("passed" if evaluation["passed"] else "failed")
    # base model (a local directory: no Hub id, licence unknown), data and its digest
    assert facts["base_model"] == str(tiny_model)
    assert card.data.base_model is None and card.data.license == "unknown"
    assert facts["data"]["sha256"] == digest and facts["data"]["license"] == "unknown"
    assert facts["data"]["split_sizes"]["test"] == evaluation["test_size"]
    # the text says it too
    text = card.text
    accuracy = evaluation["intervals"]["accuracy"]
    assert f"| accuracy | {evaluation['model']['accuracy']:.4f} | [{accuracy['model_ci_low']:.4f}, " in text
    assert f"[{accuracy['ci_low']:.4f}, {accuracy['ci_high']:.4f}]" in text
    assert f"held-out test split of {evaluation['test_size']} examples" in text
    assert f"### Gate: {facts['gate']}" in text and str(tiny_model) in text and digest in text
    assert "`negative`, `positive`" in text  # the labels
    assert "| `learning_rate` | `0.001` |" in text  # the training settings the model was trained with
    assert "kftune serve EXPORT_DIR" in text and "kftune predict EXPORT_DIR" in text
    assert "/v1/models/model:predict" in text
    # the export's report and artifact metadata point to it
    assert report["files"]["model_card"] == MODEL_CARD
    assert report["model_card"] == {"file": MODEL_CARD, "base_model": str(tiny_model), "license": "unknown",
                                    "data_sha256": digest, "gate": facts["gate"]}
    assert json.loads((out / "export_report.json").read_text())["model_card"] == report["model_card"]


def test_an_export_without_evaluation_says_so(tmp_path, trained, prepared, prepared_test):
    out = tmp_path / "export"
    report = export_model(trained, prepared, prepared_test, out, ExportConfig(quantize_int8=False))
    card = ModelCard.load(out / MODEL_CARD)
    assert card.data.eval_results is None
    assert card.data.kftune["gate"] == report["model_card"]["gate"] == "not evaluated"
    assert "evaluation" not in card.data.kftune
    assert "This model was not evaluated" in card.text
    assert card.data.kftune["data"]["sha256"] == splits_sha256(prepared, prepared_test)


def test_bundled_model_and_data_give_hub_id_licence_and_language(tmp_path, trained, prepared, prepared_test):
    """A bundled base model (here as the train step names one the pretrain step pretrained further) is named by its
    Hub id with its licence; bundled data by its licence and language."""
    dataset = tmp_path / "dataset"
    shutil.copytree(prepared, dataset)
    stats = json.loads((dataset / "stats.json").read_text())
    stats["config"]["data"] = "bundled:vader-sentiment"
    (dataset / "stats.json").write_text(json.dumps(stats))
    card = build_model_card(task_named("classification"), "onnx", trained, dataset, prepared_test, {}, {},
                            base_model="bundled:all-MiniLM-L6-v2 (pretrained by the pretrain step)")
    card = ModelCard(str(card))  # as written and read back
    assert card.data.base_model == "sentence-transformers/all-MiniLM-L6-v2"
    assert card.data.license == "apache-2.0" and card.data.language == "en"
    assert card.data.kftune["base_model"] == "bundled:all-MiniLM-L6-v2 (pretrained by the pretrain step)"
    assert card.data.kftune["data"]["license"] == "mit"


def test_the_data_digest_follows_the_examples(tmp_path, prepared, prepared_test, small_csv, tiny_model):
    from kftune.components.preprocess.config import PreprocessConfig
    from kftune.components.preprocess.preprocess import preprocess

    # the same data preprocessed again, in another directory: the same digest
    again = tmp_path / "again"
    preprocess(PreprocessConfig(data=str(small_csv), model=str(tiny_model), seed=1), again / "dataset",
               again / "test_split")
    assert splits_sha256(again / "dataset", again / "test_split") == splits_sha256(prepared, prepared_test)
    # a copy gives the same; a file that is not a split's does not count; a changed split file does
    copy, test_copy = tmp_path / "dataset", tmp_path / "test_split"
    shutil.copytree(prepared, copy)
    shutil.copytree(prepared_test, test_copy)
    assert splits_sha256(copy, test_copy) == splits_sha256(prepared, prepared_test)
    (copy / "stats.json").write_text("{}")  # not a split file: no change
    assert splits_sha256(copy, test_copy) == splits_sha256(prepared, prepared_test)
    arrow = next((test_copy / "test").glob("*.arrow"))
    data = bytearray(arrow.read_bytes())
    data[-100] ^= 1
    arrow.write_bytes(bytes(data))
    assert splits_sha256(copy, test_copy) != splits_sha256(prepared, prepared_test)


def test_a_causal_lm_export_card_replaces_the_base_models_readme(tmp_path, trained_lm, prepared_lm, prepared_lm_test,
                                                                  tiny_causal_lm):
    from kftune.components.evaluate.config import EvaluateConfig
    from kftune.components.evaluate.evaluate import evaluate

    model = tmp_path / "model"
    shutil.copytree(trained_lm, model)
    (model / MODEL_CARD).write_text("---\nlicense: mit\n---\n# The base model's card\n")
    result = evaluate(model, prepared_lm, prepared_lm_test, EvaluateConfig(task="causal-lm"))
    evaluation = json.loads(json.dumps(result))  # as the pipeline hands it on
    report = export_model(model, prepared_lm, prepared_lm_test, tmp_path / "export", ExportConfig(task="causal-lm"),
                          evaluation=evaluation)
    card = ModelCard.load(tmp_path / "export" / MODEL_CARD)
    assert "The base model's card" not in card.text and card.data.license == "unknown"
    assert (card.data.pipeline_tag, card.data.library_name) == ("text-generation", "transformers")
    assert card.data.kftune["task"] == "causal-lm" and card.data.kftune["base_model"] == str(tiny_causal_lm)
    assert "lora" in card.data.tags
    # the scores the task reports (exact match, answer accuracy, ROUGE-L, perplexity, ...), exactly the result's
    keys = task_named("causal-lm").result_metrics(evaluation)
    assert {"exact_match", "perplexity"} <= set(keys)
    assert {r.metric_type: r.metric_value for r in card.data.eval_results} == {k: evaluation["model"][k] for k in keys}
    assert card.data.kftune["evaluation"]["intervals"] == evaluation["intervals"]
    assert card.data.kftune["evaluation"]["baseline"] == "base_model_few_shot"
    assert "/openai/v1/chat/completions" in card.text
    assert report["files"]["model_card"] == MODEL_CARD


def test_the_openai_model_object_names_the_card():
    from types import SimpleNamespace

    from kftune.components.serve.openai_server import OpenAIEndpoints

    with_card = SimpleNamespace(name="m", created=1, model_card=MODEL_CARD)
    assert OpenAIEndpoints(with_card)._card()["model_card"] == MODEL_CARD
    assert "model_card" not in OpenAIEndpoints(SimpleNamespace(name="m", created=1, model_card=""))._card()
