"""The task registry, and regression and multilabel end to end on tiny slices with a tiny random BERT.

The data are the cue texts of tests/task_data.py; the runs (``regression_run``, ``multilabel_run``) are fixtures
of tests/conftest.py, shared with the serving tests.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from kftune.components.evaluate.config import EvaluateConfig
from kftune.components.evaluate.evaluate import evaluate, flat_metrics
from kftune.components.evaluate.report import evaluation_markdown, evaluation_report_html
from kftune.components.export.config import ExportConfig
from kftune.components.export.export import export_model
from kftune.components.preprocess.config import PreprocessConfig
from kftune.components.preprocess.preprocess import preprocess
from kftune.data.schema import LABEL, TASK_FILE, dataset_task, load_splits, load_test_split
from kftune.errors import DataError
from kftune.inference.runners import predict_logits, torch_runner
from kftune.models.encoder import load_encoder_model
from kftune.tasks import TASKS, detect_task, task_named
from kftune.training.config import TrainConfig
from kftune.training.loop import train
from tests.conftest import held_out_split
from tests.task_data import CUES, multilabel_frame, regression_frame


def test_the_registry_is_the_one_list_of_tasks():
    from kftune.settings.catalog import settings_of
    from kftune.tasks import TaskChoice

    (task,) = settings_of(TaskChoice)
    assert task.choices == ("auto", *TASKS)
    for name, spec in TASKS.items():
        assert spec.name == name and spec.primary in spec.metrics
        assert spec.baseline and set(spec.best_metrics) <= set(spec.metrics) | {"loss", "f1_macro", "accuracy"}


def test_a_tasks_default_reaches_every_surface(monkeypatch, tmp_path, capsys):
    """A per-task default is written once, in its task package: changed there (in memory), the settings'
    description, the config built, ``--help``, the README tables and the compiled pipeline's UI form all follow."""
    import dataclasses
    import importlib

    import yaml

    import kftune.components.train.component as train_component
    from kftune.cli.main import main
    from kftune.cli.settings_docs import section
    from kftune.settings.catalog import settings_of

    monkeypatch.setitem(TASKS["regression"].defaults, "learning_rate", 0.000777)
    renamed = dataclasses.replace(TASKS["multilabel"], summary="sets of labels, said once")
    monkeypatch.setitem(TASKS, "multilabel", renamed)
    expected = "regression: 0.000777"
    try:
        assert TrainConfig(task="regression").learning_rate == 0.000777
        helps = {s.name: s.help for s in settings_of(TrainConfig)}
        assert expected in helps["learning_rate"] and "multilabel: sets of labels, said once" in helps["task"]
        with pytest.raises(SystemExit):
            main(["run", "--help"])
        assert expected in " ".join(capsys.readouterr().out.split())
        assert expected in section("components/train/README.md")
        assert "`0.000777`" in section("README.md") and "sets of labels, said once" in section("README.md")
        importlib.reload(train_component)  # a component's signature is written when its module is imported
        assert main(["compile", "--output", str(tmp_path / "finetune.yaml")]) == 0
        form = yaml.safe_load_all((tmp_path / "finetune.yaml").read_text())
        descriptions = next(form)["root"]["inputDefinitions"]["parameters"]
        assert expected in descriptions["learning_rate"]["description"]
    finally:
        monkeypatch.undo()
        # every component whose signature was written meanwhile (the pipeline imports them all) is written again
        import sys

        for name in [n for n in sys.modules if n.startswith("kftune.components.") and n.endswith(".component")]:
            importlib.reload(sys.modules[name])
    assert expected not in {s.name: s.help for s in settings_of(TrainConfig)}["learning_rate"]


@pytest.mark.parametrize("labels, separator, expected", [
    (["[\"a\", \"b\"]", "[]", "[\"b\"]"], "", "multilabel"),
    ([["a"], ["a", "b"], []], "", "multilabel"),
    (["a|b", "b", "a"], "|", "multilabel"),
    (["a|b", "b", "a"], "", "classification"),
    ([i / 7 for i in range(20)], "", "regression"),
    (["0.5", "1.25", "2", "3.75", "4", "4.5", "1.1", "2.2", "3.3", "0.1"], "", "regression"),
    ([0.5, 1.5, 0.5, 1.5], "", "classification"),  # few distinct values: classes, not a score
    ([0, 1, 2, 1, 0], "", "classification"),
    (["pos", "neg"], "", "classification"),
])
def test_detect_task_from_the_labels(labels, separator, expected):
    task, reason = detect_task(pd.DataFrame({"text": ["t"] * len(labels), "label": labels}),
                               PreprocessConfig(label_separator=separator))
    assert task == expected and "label" in reason


def test_detect_task_from_the_columns():
    assert detect_task(pd.DataFrame({"prompt": ["p"], "completion": ["c"]}), PreprocessConfig())[0] == "causal-lm"


def test_gain_is_positive_where_the_model_is_better():
    regression = TASKS["regression"]
    assert regression.gain("rmse", 0.5, 0.8) == pytest.approx(0.3)
    assert regression.gain("spearman", 0.9, 0.7) == pytest.approx(0.2)
    assert TASKS["multilabel"].gain("hamming_loss", 0.1, 0.2) == pytest.approx(0.1)


def test_regression_detected_normalised_and_stratified(regression_run):
    _, dataset, stats, history = regression_run
    assert stats["task"] == "regression" and "non-integer numbers" in stats["task_decided"]
    info = dataset_task(dataset)
    splits, _ = load_splits(dataset)
    splits = {**splits, "test": load_test_split(held_out_split(dataset))}
    every = np.concatenate([np.asarray(splits[s][LABEL]) for s in ("train", "validation", "test")])
    train = np.asarray(splits["train"][LABEL])  # the normalisation is fitted on the training split alone
    assert info["target_mean"] == pytest.approx(train.mean(), abs=1e-4)
    assert abs(info["target_mean"] - every.mean()) > 1e-6
    assert info["target_std"] == pytest.approx(train.std(), abs=1e-4)
    # quantile-stratified: each split's mean is close to the whole's
    for name in ("validation", "test"):
        assert abs(np.mean(splits[name][LABEL]) - every.mean()) < 0.35 * every.std()
    assert history["best_metric"] == "rmse"


def test_a_test_target_does_not_change_the_normalisation(tmp_path, tiny_model):
    """Nudging the target of a test row (within its quantile bin, so the split stays the same) leaves the
    recorded normalisation as it was: it is fitted on the training split alone."""
    from kftune.data.schema import TEXT

    def prepared(frame, name):
        frame.to_csv(tmp_path / f"{name}.csv", index=False)
        out = tmp_path / name
        preprocess(PreprocessConfig(data=str(tmp_path / f"{name}.csv"), model=str(tiny_model), seed=0), out,
                   tmp_path / f"{name}-test")
        return dataset_task(out), load_test_split(tmp_path / f"{name}-test")

    frame = regression_frame(150)
    info, test = prepared(frame, "before")
    row = frame.index[frame["text"] == test[0][TEXT]][0]
    frame.loc[row, "label"] += 1e-3
    nudged_info, nudged = prepared(frame, "after")
    assert nudged[TEXT] == test[TEXT]  # the same split
    assert nudged[0][LABEL] != test[0][LABEL]
    assert (nudged_info["target_mean"], nudged_info["target_std"]) == (info["target_mean"], info["target_std"])


def test_regression_learns_evaluates_exports_and_serves(regression_run):
    from kftune.components.serve.serve import TextModel

    work, dataset, _, _ = regression_run
    result = evaluate(work / "model", dataset, work / "test_split", EvaluateConfig())
    assert result["task"] == "regression" and result["baseline"] == "tfidf_ridge"
    assert set(result["baselines"]) == {"mean", "tfidf_ridge"}
    for key in ("rmse", "mae", "r2", "pearson", "spearman"):
        assert key in result["model"] and key in result["delta_vs_baseline"]
    # learnt something: better than predicting the training mean
    assert result["model"]["rmse"] < result["baselines"]["mean"]["rmse"]
    assert result["model"]["spearman"] > 0.5
    assert result["delta_vs_baseline"]["rmse"] == pytest.approx(
        result["baselines"]["tfidf_ridge"]["rmse"] - result["model"]["rmse"])
    assert "model_spearman" in flat_metrics(result) and "delta_rmse" in flat_metrics(result)
    assert "rmse" in evaluation_markdown(result) and "residual" in evaluation_report_html(result)

    exported = work / "export"
    report = export_model(work / "model", dataset, work / "test_split", exported, ExportConfig())
    assert report["task"] == "regression" and report["parity"]["max_abs_logit_diff"] < 1e-4
    assert report["accuracy"]["onnx"] == pytest.approx(result["model"]["rmse"], abs=1e-4)

    server = TextModel("m", exported)
    assert server.load()
    texts = ["the film was wonderful and superb", "awful dreadful plot"]
    import asyncio

    served = asyncio.run(server.predict({"instances": texts}))["predictions"]
    assert served[0]["score"] > served[1]["score"]
    # the score is in the target's units: the model's output de-normalised
    model = load_encoder_model(work / "model", task_named("regression"))
    info = dataset_task(work / "model")
    from transformers import AutoTokenizer

    tokens = AutoTokenizer.from_pretrained(str(work / "model"))(texts, padding=True, return_tensors="pt")
    raw = model(**tokens).logits.detach().numpy()[:, 0]
    assert [p["score"] for p in served] == pytest.approx(raw * info["target_std"] + info["target_mean"], abs=1e-3)
    assert server.get_output_types() == [{"name": "score", "datatype": "FP32", "shape": [-1]}]


def test_regression_bad_target_is_one_line_and_writes_nothing(tmp_path, tiny_model):
    frame = regression_frame(40)
    frame["label"] = frame["label"].astype(object)
    frame.loc[7, "label"] = "high"
    data = tmp_path / "bad.csv"
    frame.to_csv(data, index=False)
    with pytest.raises(DataError) as error:
        preprocess(PreprocessConfig(data=str(data), model=str(tiny_model), task="regression"), tmp_path / "out",
                   tmp_path / "test_split")
    assert str(error.value).count("\n") == 0
    assert "bad.csv" in str(error.value) and "row 8" in str(error.value) and "'label'" in str(error.value)
    assert not (tmp_path / "out").exists()


def test_multilabel_learns_with_thresholds_chosen_on_validation(multilabel_run):
    from kftune.components.serve.serve import TextModel

    work, dataset, stats, history = multilabel_run
    assert stats["task"] == "multilabel" and stats["labels"] == sorted(CUES)
    assert history["best_metric"] == "f1_micro"
    info = dataset_task(work / "model")
    assert len(info["thresholds"]) == 3 and all(0 < t < 1 for t in info["thresholds"])

    result = evaluate(work / "model", dataset, work / "test_split", EvaluateConfig())
    assert result["task"] == "multilabel" and result["baseline"] == "tfidf_ovr_logreg"
    for key in ("f1_micro", "f1_macro", "subset_accuracy", "hamming_loss"):
        assert key in result["model"] and key in result["delta_vs_baseline"]
    assert result["model"]["f1_micro"] > result["baselines"]["most_frequent_set"]["f1_micro"] + 0.2
    assert set(result["model"]["per_label"]) == set(CUES)
    assert "Per label" in evaluation_report_html(result)

    exported = work / "export"
    report = export_model(work / "model", dataset, work / "test_split", exported, ExportConfig())
    assert report["parity"]["prediction_mismatches"] == 0
    assert json.loads((exported / TASK_FILE).read_text())["thresholds"] == info["thresholds"]

    server = TextModel("m", exported)
    assert server.load()
    import asyncio

    (answer,) = asyncio.run(server.predict({"instances": ["the song and the gun fight"]}))["predictions"]
    assert set(answer) == {"labels", "probabilities", "thresholds"}
    assert answer["labels"] == [n for n in sorted(CUES) if answer["probabilities"][n] >= answer["thresholds"][n]]

    # the model's decisions are the thresholded probabilities the evaluation scored
    test = load_test_split(work / "test_split")
    logits = predict_logits(torch_runner(load_encoder_model(work / "model", task_named("multilabel"))), test, 64)
    decided = task_named("multilabel").decisions(logits, info)
    assert decided.shape == (len(test), 3)


def test_joint_thresholds_do_not_over_predict_a_weakly_learnt_label():
    """Label 0 is learnt (its positives score high), label 1 is noise. Per label, F1 is best at predicting label 1
    almost everywhere; jointly, every prediction of label 1 costs micro F1 more than it gains, so it is (all but)
    never predicted, and the joint thresholds score micro F1 at least as well as any single threshold."""
    from sklearn.metrics import f1_score

    from kftune.tasks.multilabel import THRESHOLDS, best_thresholds

    rng = np.random.default_rng(0)
    truth = np.stack([rng.random(1000) < 0.2, rng.random(1000) < 0.1], axis=1)
    probabilities = np.stack([np.where(truth[:, 0], rng.uniform(0.5, 1, 1000), rng.uniform(0, 0.6, 1000)),
                              rng.uniform(0, 1, 1000)], axis=1)
    chosen = np.asarray(best_thresholds(probabilities, truth))
    assert chosen[1] >= 0.9 and 0.5 <= chosen[0] <= 0.6

    def micro(thresholds):
        return f1_score(truth, probabilities >= thresholds, average="micro", zero_division=0)

    assert micro(chosen) >= max(micro(np.full(2, t)) for t in THRESHOLDS)
    own_best = max(THRESHOLDS, key=lambda t: f1_score(truth[:, 1], probabilities[:, 1] >= t))
    assert own_best <= 0.2  # what per-label F1 would pick for the noise label: most examples get it
    assert micro(chosen) > micro(np.array([chosen[0], own_best])) + 0.05


def test_multilabel_head_starts_at_the_training_label_rates(multilabel_run, tiny_model):
    """The output bias is each label's log-odds in the training split (``label_rates``, which validation and test
    rows do not change), so the untrained model predicts the label rates, not 0.5."""
    import torch

    from kftune.models.encoder import build_encoder_model

    work, dataset, _, _ = multilabel_run
    info, task = dataset_task(dataset), task_named("multilabel")
    train_rows = np.asarray(load_splits(dataset)[0]["train"][LABEL])
    assert info["label_rates"] == pytest.approx(dict(zip(info["labels"], train_rows.mean(axis=0), strict=True)))
    model = build_encoder_model(TrainConfig(task="multilabel", model=str(tiny_model)), task.head(info),
                                str(tiny_model), task)
    task.init_head(model, info)
    bias = torch.sigmoid(model.classifier.bias).detach().numpy()
    assert bias == pytest.approx([info["label_rates"][n] for n in info["labels"]], rel=1e-5)


def test_multilabel_separator_and_bad_cells(tmp_path, tiny_model):
    frame = multilabel_frame(60)
    frame["label"] = ["|".join(json.loads(v)) for v in frame["label"]]
    data = tmp_path / "joined.csv"
    frame.to_csv(data, index=False)
    stats = preprocess(PreprocessConfig(data=str(data), model=str(tiny_model), task="multilabel",
                                        label_separator="|", max_seq_length=32), tmp_path / "ok",
                       tmp_path / "ok-test")
    assert stats["labels"] == sorted(CUES)

    frame = multilabel_frame(60)
    frame.loc[4, "label"] = "{not a list"
    bad = tmp_path / "bad.csv"
    frame.to_csv(bad, index=False)
    with pytest.raises(DataError) as error:
        preprocess(PreprocessConfig(data=str(bad), model=str(tiny_model), task="multilabel"), tmp_path / "out",
                   tmp_path / "test_split")
    message = str(error.value)
    assert "bad.csv" in message and "row 5" in message and "list" in message and "\n" not in message
    assert not (tmp_path / "out").exists()


def test_an_explicit_task_that_the_data_contradicts_is_an_error(tmp_path, tiny_model):
    data = tmp_path / "words.csv"
    pd.DataFrame({"text": [f"text {i}" for i in range(30)], "label": ["good", "bad"] * 15}).to_csv(data, index=False)
    with pytest.raises(DataError, match="row 1.*not a number"):
        preprocess(PreprocessConfig(data=str(data), model=str(tiny_model), task="regression"), tmp_path / "out",
                   tmp_path / "test_split")


def test_bundled_regression_data_is_vader_ground_truth():
    from kftune.data.labelled import read_labelled_data

    frame = read_labelled_data("bundled:vader-sentiment")
    assert len(frame) == 4200 + 3708
    assert frame[LABEL].between(-4, 4).all() and frame[LABEL].std() > 1
    assert detect_task(frame, PreprocessConfig())[0] == "regression"
    assert PreprocessConfig(task="regression").data == "bundled:vader-sentiment"


def test_predict_round_trip_for_regression_and_multilabel(tmp_path, regression_run, multilabel_run):
    from kftune.components.predict.config import PredictConfig
    from kftune.components.predict.predict import predict

    texts = pd.DataFrame({"doc": ["r1", "r2"], "text": ["the song was wonderful", "a gun fight and awful blood"]})
    data = tmp_path / "in.csv"
    texts.to_csv(data, index=False)
    for run, column in ((regression_run, "score"), (multilabel_run, "labels")):
        work = run[0]
        export = work / "export"
        if not export.exists():
            export_model(work / "model", run[1], work / "test_split", export, ExportConfig())
        out = tmp_path / f"{column}.jsonl"
        predict(str(export), PredictConfig(predict_input=str(data), predict_output=str(out), predict_id_column="doc"))
        rows = pd.read_json(out, lines=True)
        assert rows["id"].tolist() == ["r1", "r2"] and column in rows.columns
    labels = [json.loads(v) for v in rows["labels"]]
    assert all(set(v) <= set(CUES) for v in labels)


def test_bundled_multilabel_data_is_the_entity_types_of_wnut16_tweets():
    from kftune.data.bundled import bundled_token_sentences
    from kftune.data.labelled import read_labelled_data

    sentences = bundled_token_sentences()
    frame = read_labelled_data("bundled:wnut16-entity-types")
    assert len(frame) == len(sentences) == 2394
    tokens, tags = sentences[0]
    assert frame["text"][0] == " ".join(tokens) and frame[LABEL][0] == sorted({t[2:] for t in tags if t != "O"})
    assert len({label for row in frame[LABEL] for label in row}) == 10
    assert round((frame[LABEL].map(len) == 0).mean(), 2) == 0.62  # the README's "62% mention none"
    assert detect_task(frame, PreprocessConfig())[0] == "multilabel"
    assert PreprocessConfig(task="multilabel").data == "bundled:wnut16-entity-types"


def test_data_report_says_the_task_and_shows_the_target(regression_run, multilabel_run):
    from kftune.components.preprocess.report import data_report_html

    stats = dict(regression_run[2])
    html = data_report_html(stats, stats["_lengths"])
    assert "task regression (auto:" in html and "<td>mean</td>" in html
    stats = dict(multilabel_run[2])
    assert all(f"<td>{label}</td>" in data_report_html(stats, stats["_lengths"]) for label in CUES)


def test_search_optimises_the_tasks_metric_and_lora_trains_a_regression_head(tmp_path, regression_run, tiny_model):
    from kftune.components.tune.config import SearchConfig
    from kftune.components.tune.search import optuna_search
    from kftune.training.search_space import parse_space

    _, dataset, _, _ = regression_run
    base = TrainConfig(model=str(tiny_model), num_train_epochs=1, learning_rate=3e-3, per_device_train_batch_size=16,
                       early_stopping_patience=0, save_steps=0)
    metric = TrainConfig(task="regression").metric_for_best_model
    direction = SearchConfig().direction_for(metric)
    assert (metric, direction) == ("rmse", "minimize")
    space = parse_space('{"learning_rate": {"low": 1e-4, "high": 1e-2, "log": true}}')
    record = optuna_search(base, space, dataset, tmp_path / "study", max_trials=2, seed=1, direction=direction,
                           prune=False)
    scores = [t["score"] for t in record["trials"]]
    assert record["best"]["score"] == min(scores)  # minimised: the lowest RMSE is the best trial

    lora = TrainConfig(model=str(tiny_model), training_mode="lora", lora_r=4, lora_target_modules="query,value",
                       num_train_epochs=1, learning_rate=3e-3, per_device_train_batch_size=16, save_steps=0)
    history = train(lora, dataset, tmp_path / "lora")
    assert history["training_mode"] == "lora" and history["best_metric"] == "rmse"
    assert (tmp_path / "lora" / TASK_FILE).is_file()
    logits = predict_logits(torch_runner(load_encoder_model(tmp_path / "lora", task_named("regression"))),
                            load_test_split(held_out_split(dataset)), 64)
    assert logits.shape[1] == 1 and np.isfinite(logits).all()


def test_bundled_regression_data_is_read_from_the_installed_copy_first(tmp_path, monkeypatch):
    """What the stage images do: vaderSentiment's source distribution placed beside the installation is read
    (sha256-checked) without pip and without writing to the cache."""
    import shutil
    import subprocess

    from kftune.data import bundled

    installed = tmp_path / "share"
    installed.mkdir()
    shutil.copy(bundled.vader_sdist(), installed / bundled.VADER_SDIST)
    monkeypatch.setattr(bundled, "installed_data_dir", lambda: installed)
    monkeypatch.setenv("KFTUNE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail(f"pip was run: {a}"))
    assert bundled.vader_sdist() == installed / bundled.VADER_SDIST
    assert not (tmp_path / "cache").exists()
    (installed / bundled.VADER_SDIST).write_bytes(b"not the archive")
    with pytest.raises(bundled.KftuneError, match="expected 5d7c06e0"):
        bundled.vader_sdist()


def test_the_multilabel_tfidf_baseline_picks_its_thresholds_on_validation_and_test_decides_nothing():
    """Rare labels (5 % of the texts each), cued by a word among many neutral ones: at 0.5 a one-vs-rest logistic
    regression predicts almost nothing (a baseline any model beats); with thresholds chosen on validation it finds
    the cued labels. The test labels change no prediction; the validation labels do."""
    import datasets

    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(300)]
    names = ["sport", "music", "film"]

    def split(rows: int) -> datasets.Dataset:
        labels = (rng.random((rows, 3)) < 0.05).astype(int)
        texts = [" ".join([*rng.choice(words, 12), *(n for n, on in zip(names, row, strict=True) if on)])
                 for row in labels]
        return datasets.Dataset.from_dict({"text": texts, "label": labels.tolist()})

    train, validation, test = split(600), split(200), split(200)
    task, info = task_named("multilabel"), {"labels": names}
    baselines = task.baselines(train, validation, test, info)
    predicted = baselines["tfidf_ovr_logreg"]["predictions"]
    assert baselines["tfidf_ovr_logreg"]["f1_micro"] > 0.6

    truth = np.asarray(test["label"])
    flipped = test.remove_columns("label").add_column("label", (1 - truth).tolist())
    assert (task.baselines(train, validation, flipped, info)["tfidf_ovr_logreg"]["predictions"] == predicted).all()
    emptied = validation.remove_columns("label").add_column("label", [[0, 0, 0]] * len(validation))
    assert (task.baselines(train, emptied, test, info)["tfidf_ovr_logreg"]["predictions"] != predicted).any()
