"""What the evaluation tests of each task check of its paired bootstrap intervals, on a result of evaluate
(``tests/test_bootstrap.py`` checks how the intervals are computed, and their coverage)."""

from __future__ import annotations

import dataclasses
from pathlib import Path


def check_intervals(result: dict) -> None:
    """Every gain of ``result`` has its 95% interval around it, every score of the model too, and the KFP metrics,
    the summary table and the ``--results`` JSON carry them."""
    from kftune.components.evaluate.evaluate import flat_metrics
    from kftune.components.evaluate.report import evaluation_markdown
    from kftune.pipelines.local import LocalRunResult

    assert set(result["intervals"]) == set(result["delta_vs_baseline"]) and result["resamples"] == 1000
    flat = flat_metrics(result)
    for metric, delta in result["delta_vs_baseline"].items():
        interval = result["intervals"][metric]
        assert interval["ci_low"] <= delta <= interval["ci_high"], (metric, interval)
        assert interval["model_ci_low"] <= result["model"][metric] <= interval["model_ci_high"], (metric, interval)
        assert (flat[f"delta_{metric}_ci_low"], flat[f"delta_{metric}_ci_high"]) == (
            interval["ci_low"], interval["ci_high"])
    assert "delta, 95% interval: low (1000 paired resamples)" in evaluation_markdown(result)
    results = LocalRunResult(Path("run"), Path("model"), Path("export"), result, result["passed"], 0.0).results()
    assert results["delta_intervals"] == {k: {"ci_low": v["ci_low"], "ci_high": v["ci_high"]}
                                          for k, v in result["intervals"].items()}
    assert results["resamples"] == 1000


def check_the_gate_can_require_the_lower_bound(result: dict, task) -> None:
    """With ``gain_at_lower_bound`` the gate holds the lower bound of the primary score's gain to
    ``min_gain_over_baseline``: a bound at it passes, one just above fails on that check alone, and where the
    interval reaches below the point estimate, a bound at the point estimate passes without the setting and fails
    with it."""
    from kftune.components.evaluate.config import EvaluateConfig

    metric = result.get("primary_metric") or task.primary
    low, delta = result["intervals"][metric]["ci_low"], result["delta_vs_baseline"][metric]
    lower = EvaluateConfig(task=task.name, min_primary_score=0.0, min_gain_over_baseline=low, gain_at_lower_bound=True)
    assert all(task.checks(result, lower).values()), task.checks(result, lower)
    bounds = [low + 1e-3] + ([delta] if low < delta else [])
    for bound in bounds:
        checks = task.checks(result, dataclasses.replace(lower, min_gain_over_baseline=bound))
        assert [check for check, ok in checks.items() if not ok] == [
            f"{metric} gain over {result['baseline']}, lower bound of its 95% interval, >= {bound}"], checks
    if low < delta:  # the point estimate clears the same bound
        assert all(task.checks(result, dataclasses.replace(lower, min_gain_over_baseline=delta,
                                                           gain_at_lower_bound=False)).values())
