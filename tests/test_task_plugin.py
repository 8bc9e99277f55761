"""A task plugs in as one package plus one registration: ``tests/pair_task`` (a score for a pair of texts, which no
kftune module knows) runs through preprocess, train, evaluate, export and predict in the local pipeline
(``kftune run``), then is served (``kftune serve``) over V1 and Open Inference. Every kftune process of the run
learns the task from ``KFTUNE_TASKS`` alone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from tests.pair_task import pair_frame
from tests.serving import Server

REPO = Path(__file__).resolve().parents[1]
PLUGIN = {"KFTUNE_TASKS": "tests.pair_task",
          "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
PAIRS = [("a wonderful superb film", "the plot was dull"), ("the story and its scene", "awful boring clumsy acting"),
         ("moving clever and wonderful", "a scene with the actor"), ("a wonderful superb film", "the plot was fine")]


def kftune(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kftune", *args], cwd=cwd, env={**os.environ, **PLUGIN},
                          capture_output=True, text=True, timeout=1800)


def test_without_its_registration_the_task_is_unknown(tmp_path):
    done = kftune("run", "--task", "sentence-pair", "--help", cwd=tmp_path)
    assert done.returncode == 0 and "--text-pair-column" in done.stdout  # registered: its setting is a flag
    bare = subprocess.run([sys.executable, "-m", "kftune", "run", "--task", "sentence-pair"], cwd=tmp_path,
                          env={k: v for k, v in os.environ.items() if k != "KFTUNE_TASKS"}, capture_output=True,
                          text=True, timeout=120)
    assert bare.returncode == 2 and "invalid choice: 'sentence-pair'" in bare.stderr


@pytest.mark.slow
def test_a_task_from_outside_kftune_runs_the_whole_pipeline_and_is_served(tmp_path, tiny_model):
    data = tmp_path / "pairs.csv"
    pair_frame(360, pair_column="second").to_csv(data, index=False)
    asked = tmp_path / "asked.jsonl"
    pd.DataFrame({"id": [f"p{i}" for i in range(len(PAIRS))], "text": [a for a, _ in PAIRS],
                  "second": [b for _, b in PAIRS]}).to_json(asked, orient="records", lines=True)
    done = kftune("run", "--task", "sentence-pair", "--data", str(data), "--text-pair-column", "second",
                  "--model", str(tiny_model), "--num-train-epochs", "6", "--predict-input", str(asked),
                  # TF-IDF + ridge reads this additive score off the word counts; the gate here is not the point
                  "--min-gain-over-baseline", "-100",
                  "--predict-output", str(tmp_path / "scores.jsonl"), "--predict-id-column", "id",
                  "--results", str(tmp_path / "results.json"), "--output-dir", str(tmp_path / "runs"), cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    results = json.loads((tmp_path / "results.json").read_text())
    assert results["task"] == "sentence-pair" and results["baseline"]["name"] == "tfidf_ridge" and results["passed"]
    assert set(results["baselines"]) == {"mean", "tfidf_ridge"}
    assert results["model"]["rmse"] < 0.8 * results["baselines"]["mean"]["rmse"]  # it learnt from both texts
    scores = pd.read_json(tmp_path / "scores.jsonl", lines=True)
    assert scores["id"].tolist() == [f"p{i}" for i in range(len(PAIRS))]
    # the second text is read: without its complaint the pair scores higher (by 1 in the data; the tiny model, six
    # epochs on 360 pairs, learns part of it)
    assert scores["score"][3] > scores["score"][0] + 0.2
    # its model card shows a request with both texts
    card = (Path(results["artifacts"]["exported"]) / "README.md").read_text()
    assert '{"instances": [{"text": "...", "text_pair": "..."}]}' in card

    server = Server(results["artifacts"]["exported"], tmp_path / "serve.log", "--no-grpc", model_name="pairs",
                    env=PLUGIN).wait_ready()
    try:
        v1 = server.v1({"instances": [{"text": a, "text_pair": b} for a, b in PAIRS]})
        assert v1.status_code == 200, v1.text
        assert [p["score"] for p in v1.json()["predictions"]] == pytest.approx(scores["score"].tolist(), abs=1e-4)
        v2 = server.v2({"inputs": [
            {"name": "text", "datatype": "BYTES", "shape": [len(PAIRS)], "data": [a for a, _ in PAIRS]},
            {"name": "text_pair", "datatype": "BYTES", "shape": [len(PAIRS)], "data": [b for _, b in PAIRS]}]})
        assert v2.status_code == 200, v2.text
        (output,) = v2.json()["outputs"]
        assert output["name"] == "score" and output["data"] == pytest.approx(scores["score"].tolist(), abs=1e-4)
        alone = server.v1({"instances": ["a text without its pair"]})
        assert alone.status_code == 400 and '"text_pair"' in alone.json()["error"]
    finally:
        server.stop()
