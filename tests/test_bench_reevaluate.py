"""bench/reevaluate.py on a run directory laid out as kftune run leaves it, holding the tiny causal LM's artifacts."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench" / "reevaluate.py"


def test_reevaluate_runs_the_evaluate_stage_on_a_finished_run(tmp_path, trained_lm, prepared_lm, prepared_lm_test,
                                                              capsys):
    run = tmp_path / "finetune-run"
    (run / "preprocess").mkdir(parents=True)
    (run / "train").mkdir()
    (run / "preprocess" / "dataset").symlink_to(prepared_lm)
    (run / "preprocess" / "test_split").symlink_to(prepared_lm_test)
    (run / "train" / "finetuned_model").symlink_to(trained_lm)
    spec = importlib.util.spec_from_file_location("reevaluate", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)

    out = tmp_path / "result.json"
    result = bench.main([str(run), "--set", "few_shot_examples=2", "--set", "min_gain_over_baseline=-1",
                         "--out", str(out)])
    written = json.loads(out.read_text())
    assert written["task"] == "causal-lm" and written["settings"] == {"few_shot_examples": "2",
                                                                       "min_gain_over_baseline": "-1"}
    assert written["few_shot"]["examples"] == 2 and written["baseline"] == "base_model_few_shot"
    assert written["model"] == result["model"] and written["seconds"] > 0 and written["cpu"]
    printed = capsys.readouterr().out
    assert "| baseline: base model (2-shot" in printed and f"evaluate: {written['seconds']} s" in printed
