"""`kftune predict`: batch inference of an export over files, directories and S3 prefixes.

The classification export is the tiny fine-tuned BERT's (the `trained` fixture) exported with
the export step; its predictions are compared with the serve code's and with evaluate's
(PyTorch over a tokenized split). The causal-LM export is the tiny random Llama of
tests/causal_lm.py, whose generations are compared with the shared greedy generation.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kftune.components.predict.config import PredictConfig
from kftune.components.predict.predict import predict
from kftune.data.schema import LabelMap
from kftune.errors import ConfigError, DataError
from tests.object_servers import MotoS3

RAW = ["<p>A moving, beautifully   acted film.</p>", "tedious &amp; far too long", "Not bad at all"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory, trained, prepared, prepared_test) -> Path:
    from kftune.components.export.config import ExportConfig
    from kftune.components.export.export import export_model

    out = tmp_path_factory.mktemp("predict") / "onnx"
    export_model(trained, prepared, prepared_test, out, ExportConfig(quantize_int8=True))
    return out


@pytest.fixture(scope="module")
def reviews(small_frame) -> pd.DataFrame:
    """40 real reviews and a few raw ones (markup, entities), with string ids."""
    texts = [*small_frame["text"].head(40), *RAW]
    return pd.DataFrame({"review_id": [f"r{i:03d}" for i in range(len(texts))], "text": texts,
                         "other": range(len(texts))})


def config(source, output, **settings) -> PredictConfig:
    """Settings to predict on the file(s) ``source`` into ``output``."""
    return PredictConfig(predict_input=str(source), predict_output=str(output), **settings)


def write_input(frame: pd.DataFrame, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".csv":
        frame.to_csv(path, index=False)
    elif path.suffix == ".jsonl":
        frame.to_json(path, orient="records", lines=True)
    else:
        frame.to_parquet(path, index=False)
    return path


def read_output(path: Path) -> pd.DataFrame:
    if path.suffix == ".csv":
        return pd.read_csv(path, dtype={"id": str})
    if path.suffix == ".jsonl":
        return pd.read_json(path, lines=True, dtype={"id": str})
    return pd.read_parquet(path)


def served_predictions(model_dir: Path, texts: list[str]) -> list[dict]:
    """What `kftune serve` answers for ``texts`` over V1 (the TextModel itself, no HTTP)."""
    from kftune.components.serve.serve import TextModel

    classifier = TextModel("m", model_dir)
    classifier.load()
    return asyncio.run(classifier.predict({"instances": texts}))["predictions"]


def evaluate_probabilities(model_dir: Path, texts: list[str], max_length: int = 128) -> np.ndarray:
    """Probabilities as evaluate computes them: PyTorch over texts cleaned and tokenized as preprocess does."""
    import datasets
    from transformers import AutoTokenizer

    from kftune.data.text import clean_text
    from kftune.inference.runners import predict_logits, softmax, torch_runner
    from kftune.models.encoder import load_encoder_model

    encoded = AutoTokenizer.from_pretrained(str(model_dir))([clean_text(t) for t in texts], truncation=True,
                                                             max_length=max_length)
    return softmax(predict_logits(torch_runner(load_encoder_model(model_dir)),
                                  datasets.Dataset.from_dict(dict(encoded)), 64))


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_round_trip_predicts_what_serve_and_evaluate_do(exported, trained, reviews, tmp_path, suffix):
    source = write_input(reviews, tmp_path / f"reviews{suffix}")
    output = tmp_path / "out" / f"predictions{suffix}"
    summary = predict(exported, config(source, output, predict_id_column="review_id",
                                              predict_batch_size=8))
    assert summary["rows"] == len(reviews) and summary["files"] == 1 and summary["task"] == "classification"
    assert summary["format"] == suffix[1:] and summary["rows_per_second"] > 0
    out = read_output(output)
    names = LabelMap.load(exported / "labels.json").names
    assert list(out.columns) == ["id", "label", "label_id", "probability", *(f"p_{n}" for n in names)]
    assert out["id"].tolist() == reviews["review_id"].tolist()  # carried, in input order

    served = served_predictions(exported, reviews["text"].tolist())
    assert out["label"].tolist() == [p["label"] for p in served]
    assert out["label_id"].tolist() == [p["label_id"] for p in served]
    for name in names:  # the serve code's own numbers (CSV/JSON round their text form a little)
        np.testing.assert_allclose(out[f"p_{name}"], [p["probabilities"][name] for p in served], rtol=1e-6)
    np.testing.assert_allclose(out["probability"], out[[f"p_{n}" for n in names]].max(axis=1), rtol=1e-6)

    reference = evaluate_probabilities(trained, reviews["text"].tolist())
    assert out["label_id"].tolist() == reference.argmax(1).tolist()
    np.testing.assert_allclose(out[[f"p_{n}" for n in names]].to_numpy(), reference, atol=1e-4)


def test_default_ids_are_row_numbers_and_int8_runs_the_quantized_model(exported, reviews, tmp_path):
    source = write_input(reviews[["text"]], tmp_path / "reviews.csv")
    fp32 = predict(exported, config(source, tmp_path / "fp32.csv"))
    int8 = predict(exported, config(source, tmp_path / "int8.csv", predict_int8=True))
    a, b = pd.read_csv(tmp_path / "fp32.csv"), pd.read_csv(tmp_path / "int8.csv")
    assert fp32["rows"] == int8["rows"] == len(reviews)
    assert a["id"].tolist() == b["id"].tolist() == list(range(len(reviews)))
    assert not np.array_equal(a["probability"].to_numpy(), b["probability"].to_numpy())  # another model ran
    assert (a["label"] == b["label"]).mean() >= 0.9


def test_a_directory_of_files_in_name_order_with_their_source(exported, reviews, tmp_path):
    parts = [reviews.iloc[:10], reviews.iloc[10:25], reviews.iloc[25:]]
    folder = tmp_path / "in"
    write_input(parts[0], folder / "a.csv")
    write_input(parts[1], folder / "b.jsonl")
    write_input(parts[2], folder / "sub" / "c.parquet")
    (folder / ".hidden").write_text("not data")
    output = tmp_path / "predictions.jsonl"
    summary = predict(exported, config(folder, output))
    assert summary["files"] == 3 and summary["rows"] == len(reviews)
    out = pd.read_json(output, lines=True)
    assert out["id"].tolist() == list(range(len(reviews)))  # counted over all files
    assert out["source"].tolist() == ["a.csv"] * 10 + ["b.jsonl"] * 15 + ["sub/c.parquet"] * (len(reviews) - 25)
    single = tmp_path / "single.jsonl"
    predict(exported, config(folder / "a.csv", single))
    assert pd.read_json(single, lines=True)["label"].tolist() == out["label"].head(10).tolist()


@pytest.fixture(scope="module")
def s3(exported):
    import boto3

    moto = MotoS3().start()
    env = {"AWS_ENDPOINT_URL": moto.endpoint, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
           "AWS_REGION": "us-east-1"}
    client = boto3.client("s3", endpoint_url=moto.endpoint, region_name="us-east-1", aws_access_key_id="test",
                          aws_secret_access_key="test")
    client.create_bucket(Bucket="kftune")
    for path in exported.iterdir():
        client.upload_file(str(path), "kftune", f"models/v1/{path.name}")
    yield client, env
    moto.stop()


def test_an_s3_prefix_in_and_out_with_the_model_from_s3(exported, reviews, s3, tmp_path, monkeypatch):
    client, env = s3
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    for name, part in (("part-0.csv", reviews.iloc[:20]), ("part-1.parquet", reviews.iloc[20:])):
        local = write_input(part, tmp_path / name)
        client.upload_file(str(local), "kftune", f"data/reviews/{name}")
    summary = predict("s3://kftune/models/v1", PredictConfig(predict_input="s3://kftune/data/reviews",
                                                              predict_output="s3://kftune/out/predictions.parquet",
                                                              predict_id_column="review_id"))
    assert summary["rows"] == len(reviews) and summary["files"] == 2
    client.download_file("kftune", "out/predictions.parquet", str(tmp_path / "got.parquet"))
    got = pd.read_parquet(tmp_path / "got.parquet")
    assert got["id"].tolist() == reviews["review_id"].tolist()
    assert got["source"].tolist() == ["part-0.csv"] * 20 + ["part-1.parquet"] * (len(reviews) - 20)
    # the same predictions as from local files
    local = tmp_path / "local.parquet"
    predict(exported, config(write_input(reviews, tmp_path / "all.csv"), local))
    np.testing.assert_allclose(got["probability"], pd.read_parquet(local)["probability"], rtol=1e-6)

    # a missing column names the object, not a temporary copy; nothing is uploaded
    with pytest.raises(DataError, match=r"^s3://kftune/data/reviews/part-0\.csv: no column 'body'"):
        predict("s3://kftune/models/v1", PredictConfig(predict_input="s3://kftune/data/reviews", text_column="body",
                                                        predict_output="s3://kftune/out/bad.csv"))
    assert "Contents" not in client.list_objects_v2(Bucket="kftune", Prefix="out/bad")


@pytest.mark.parametrize("frame, settings, message", [
    (pd.DataFrame({"body": ["good film"]}), {},
     r"in\.csv: no column 'text'; the columns are: body \(set text_column\)"),
    (pd.DataFrame({"text": ["good film"]}), {"predict_id_column": "review_id"},
     r"in\.csv: no column 'review_id'; the columns are: text \(set predict_id_column\)"),
    (pd.DataFrame({"text": ["good film", "  <br/> ", "fine"]}), {},
     r"in\.csv: row 1 \(counted from 0\): column 'text' is empty; expected some text"),
    (pd.DataFrame({"text": ["good film", None]}), {}, r"in\.csv: row 1 \(counted from 0\): column 'text' is empty"),
    (pd.DataFrame({"text": ["a", "b"], "k": ["x", None]}), {"predict_id_column": "k"},
     r"in\.csv: row 1 \(counted from 0\): column 'k' \(the id\) is empty"),
])
def test_bad_input_is_one_line_naming_file_row_and_column_and_writes_nothing(exported, tmp_path, frame, settings,
                                                                             message):
    source = write_input(frame, tmp_path / "in.csv")
    output = tmp_path / "out" / "predictions.csv"
    with pytest.raises(DataError, match=message) as err:
        predict(exported, config(source, output, **settings))
    assert "\n" not in str(err.value)
    assert not output.parent.exists() or not any(output.parent.iterdir())


def test_a_failed_run_leaves_an_existing_output_as_it_was(exported, tmp_path):
    output = tmp_path / "predictions.csv"
    output.write_text("id,label\n0,old\n")
    source = write_input(pd.DataFrame({"text": ["fine", ""]}), tmp_path / "in.jsonl")
    with pytest.raises(DataError, match="row 1"):
        predict(exported, config(source, output))
    assert output.read_text() == "id,label\n0,old\n" and [p.name for p in tmp_path.iterdir()] != []
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_settings_are_checked(tmp_path):
    assert config("x", "s3://b/p/out.PARQUET").resolved_format() == "parquet"
    assert config("x", "out.txt", predict_output_format="csv").resolved_format() == "csv"
    assert PredictConfig(predict_input="x").resolved_format() == "jsonl"  # a pipeline's artifact alone
    with pytest.raises(ConfigError, match="^predict_output 'out.txt': cannot tell the format from its extension"):
        config("x", "out.txt").validate()
    with pytest.raises(ConfigError, match="^predict_output_format must be one of"):
        config("x", "o.csv", predict_output_format="xml").validate()
    with pytest.raises(ConfigError, match="^predict_input is empty"):
        PredictConfig(predict_output="o.csv").validate()
    with pytest.raises(ConfigError, match="^predict_output is empty"):
        predict(tmp_path, PredictConfig(predict_input="x"))
    with pytest.raises(DataError, match="missing.csv: no such file or directory"):
        predict(tmp_path, config(tmp_path / "missing.csv", tmp_path / "o.csv"))
    write_input(pd.DataFrame({"text": ["fine"]}), tmp_path / "in.csv")
    with pytest.raises(DataError, match=r"model .*: no model\.onnx"):
        predict(tmp_path, config(tmp_path / "in.csv", tmp_path / "o.csv"))
    with pytest.raises(DataError, match="nowhere: no such directory"):
        predict(tmp_path / "nowhere", config(tmp_path / "in.csv", tmp_path / "o.csv"))
    assert not (tmp_path / "o.csv").exists()


def test_causal_lm_generations_are_the_shared_greedy_ones(tmp_path):
    from kftune.data.chat import render
    from kftune.inference.generation import generate
    from kftune.models.causal_lm import load_causal_lm
    from tests.causal_lm import MAX_NEW_TOKENS, tiny_causal_lm_export

    export = tiny_causal_lm_export(tmp_path / "export")
    prompts = ["Is this review positive or negative? A moving film.", "Name a colour.", "Say hi", "Count to three."]
    source = write_input(pd.DataFrame({"question": prompts, "qid": [10, 11, 12, 13]}), tmp_path / "q.parquet")
    output = tmp_path / "answers.jsonl"
    summary = predict(export, config(source, output, text_column="question",
                                            predict_id_column="qid", predict_batch_size=2))
    assert summary["task"] == "causal-lm" and summary["rows"] == 4
    out = pd.read_json(output, lines=True)
    assert list(out.columns) == ["id", "generation"] and out["id"].tolist() == [10, 11, 12, 13]

    model, tokenizer = load_causal_lm(export)
    rendered = [render(tokenizer, [{"role": "user", "content": p}], generation_prompt=True) for p in prompts]
    expected = generate(model, tokenizer, rendered, MAX_NEW_TOKENS, batch_size=4)
    assert out["generation"].tolist() == expected
    assert any(expected)  # the random model says something, so the comparison means something
    shorter = tmp_path / "short.jsonl"
    predict(export, config(source, shorter, text_column="question", max_new_tokens=2))
    assert pd.read_json(shorter, lines=True)["generation"].tolist() == generate(model, tokenizer, rendered, 2)
    with pytest.raises(ConfigError, match="int8 runs an ONNX export"):
        predict(export, config(source, shorter, text_column="question", predict_int8=True))


def test_cli(exported, reviews, tmp_path):
    source = write_input(reviews, tmp_path / "reviews.jsonl")
    output = tmp_path / "predictions.csv"
    done = subprocess.run([sys.executable, "-m", "kftune", "predict", str(exported), "--predict-input", str(source),
                           "--predict-output", str(output), "--predict-id-column", "review_id",
                           "--predict-batch-size", "16"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["rows"] == len(reviews) and summary["output"] == str(output)
    assert pd.read_csv(output)["id"].tolist() == reviews["review_id"].tolist()
    assert "row/s" in done.stderr  # the progress bar

    bad = subprocess.run([sys.executable, "-m", "kftune", "predict", str(exported), "--predict-input", str(source),
                          "--predict-output", str(tmp_path / "bad.csv"), "--predict-id-column", "nope"],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and not (tmp_path / "bad.csv").exists()
    assert bad.stderr.strip().splitlines()[-1] == (f"kftune: error: {source}: no column 'nope'; the columns are: "
                                                    "review_id, text, other (set predict_id_column)")


def test_the_component_in_a_pipeline(exported, reviews, tmp_path):
    """kfp.local runs the KFP door on an imported export: a JSON Lines Dataset and the metrics; with
    predict_output, a Dataset in its format and a copy there."""
    from kfp import dsl

    from kftune.components.predict import component as predict_component
    from kftune.pipelines.local import run_pipeline_locally

    source = str(write_input(reviews, tmp_path / "reviews.parquet"))
    copy = str(tmp_path / "out" / "copy.csv")
    predict_op = predict_component.component()

    @dsl.pipeline(name="predict-only")
    def only_predict():  # no parameters: this module's annotations are strings, which KFP cannot read
        model = dsl.importer(artifact_uri=str(exported), artifact_class=dsl.Model)
        predict_op(exported_model=model.output, predict_input=source, predict_id_column="review_id")
        predict_op(exported_model=model.output, predict_input=source, predict_output=copy)

    run_pipeline_locally(only_predict, {}, tmp_path / "root")
    [task_dir] = (tmp_path / "root").glob("predict-only-*/predict")
    out = pd.read_json(task_dir / "predictions", lines=True)
    assert out["id"].tolist() == reviews["review_id"].tolist() and set(out["label"]) <= {"negative", "positive"}
    artifacts = json.loads((task_dir / "executor_output.json").read_text())["artifacts"]
    metrics = artifacts["metrics"]["artifacts"][0]["metadata"]
    assert metrics["rows"] == len(reviews) and metrics["rows_per_second"] > 0 and metrics["seconds"] > 0
    assert artifacts["predictions"]["artifacts"][0]["metadata"] == {
        "format": "jsonl", "task": "classification", "rows": len(reviews), "input": source, "output": ""}

    [second] = (tmp_path / "root").glob("predict-only-*/predict-2")
    assert (second / "predictions").read_bytes() == Path(copy).read_bytes()  # the artifact, copied
    copied = pd.read_csv(copy)  # CSV, as predict_output's extension says
    assert copied["id"].tolist() == list(range(len(reviews))) and copied["label"].tolist() == out["label"].tolist()
    metadata = json.loads((second / "executor_output.json").read_text())["artifacts"]["predictions"]["artifacts"][0]
    assert metadata["metadata"]["format"] == "csv" and metadata["metadata"]["output"] == copy


def test_the_component_compiles_with_its_image_and_settings(tmp_path):
    import yaml
    from kfp import compiler, dsl

    from kftune.cluster.images import ImageScheme
    from kftune.components.predict import component as predict_component

    predict_op = predict_component.component(ImageScheme(registry="registry.example/ml", tag="t1"))

    @dsl.pipeline(name="predict-only")
    def only_predict():
        model = dsl.importer(artifact_uri="s3://models/v1", artifact_class=dsl.Model)
        predict_op(exported_model=model.output, predict_input="s3://data/reviews/")

    compiler.Compiler().compile(only_predict, str(tmp_path / "p.yaml"))
    doc = yaml.safe_load((tmp_path / "p.yaml").read_text())
    [executor] = [e for name, e in doc["deploymentSpec"]["executors"].items() if "predict" in name]
    assert executor["container"]["image"] == "registry.example/ml/kftune-predict:t1"
    params = doc["components"]["comp-predict"]["inputDefinitions"]["parameters"]
    assert set(params) == {"predict_input", "predict_output", "predict_output_format", "text_column",
                           "predict_id_column", "predict_batch_size", "max_new_tokens", "predict_int8"}
    assert params["predict_id_column"]["description"].startswith(
        "Column of predict_input whose value each prediction carries")
