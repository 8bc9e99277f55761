"""Paired bootstrap intervals of a model's test scores and of its gains over a baseline.

A resample draws the test examples with replacement (multinomial counts); the model and the baseline are scored on
the same resamples, so the interval of the gain reflects how the two differ example by example, not the two
scores' separate noise. Vectorised: a task gives per-example sufficient statistics of its scores (arrays with the
examples on axis 0; e.g. one-hot true and predicted classes) and how its scores follow from their sums, so one
matrix product scores every resample of a chunk. 1,000 resamples of a few thousand examples take well under a
second. The interval is the percentile interval of the resampled values.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

RESAMPLES = 1000
LEVEL = 0.95
SEED = 0
CELLS_PER_CHUNK = 1 << 22
"""Resample-by-example count cells made at a time (32 MiB of float64): memory stays flat for large test sets."""

Statistics = dict[str, np.ndarray]


def paired_intervals(
    model: Statistics, baseline: Statistics, scores: Callable[[Statistics], dict[str, np.ndarray]],
    gain: Callable[[str, np.ndarray, np.ndarray], np.ndarray], resamples: int = RESAMPLES, seed: int = SEED,
    level: float = LEVEL,
) -> dict[str, dict[str, float]]:
    """Per score of ``scores``: the ``level`` interval of the model's score (``model_ci_low``/``model_ci_high``) and of
    its gain over the baseline (``ci_low``/``ci_high``; ``gain(score, model, baseline)``, positive is better)."""
    n = len(next(iter(model.values())))
    rng = np.random.default_rng(seed)
    per_chunk = max(1, CELLS_PER_CHUNK // n)
    model_values: dict[str, list] = {}
    gains: dict[str, list] = {}
    done = 0
    while done < resamples:
        counts = rng.multinomial(n, np.full(n, 1.0 / n), size=min(per_chunk, resamples - done)).astype(np.float64)
        ours = scores(resampled_sums(model, counts))
        theirs = scores(resampled_sums(baseline, counts))
        for name, values in ours.items():
            model_values.setdefault(name, []).append(values)
            gains.setdefault(name, []).append(gain(name, values, theirs[name]))
        done += len(counts)
    tail = 100 * (1 - level) / 2
    intervals = {}
    for name in model_values:
        low, high = np.percentile(np.concatenate(gains[name]), [tail, 100 - tail])
        model_low, model_high = np.percentile(np.concatenate(model_values[name]), [tail, 100 - tail])
        intervals[name] = {"ci_low": float(low), "ci_high": float(high),
                           "model_ci_low": float(model_low), "model_ci_high": float(model_high)}
    return intervals


def resampled_sums(statistics: Statistics, counts: np.ndarray) -> Statistics:
    """Each statistic summed over the examples of each resample (``counts``: resamples x examples)."""
    return {name: np.tensordot(counts, values, axes=(1, 0)) for name, values in statistics.items()}


def full_sums(statistics: Statistics) -> Statistics:
    """The sums over the whole test set, as one resample: the scores they give are the point estimates."""
    return resampled_sums(statistics, np.ones((1, len(next(iter(statistics.values()))))))


def ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """``numerator / denominator``, 0 where the denominator is 0 (scikit-learn's ``zero_division=0``)."""
    numerator, denominator = np.asarray(numerator, dtype=np.float64), np.asarray(denominator, dtype=np.float64)
    return np.divide(numerator, denominator, out=np.zeros(np.broadcast_shapes(numerator.shape, denominator.shape)),
                     where=denominator != 0)


def correlation(sx, sy, sxx, syy, sxy, n) -> np.ndarray:
    """Pearson's correlation from sums (0 where either side is constant)."""
    covariance = sxy - sx * sy / n
    variance = (sxx - sx ** 2 / n) * (syy - sy ** 2 / n)
    return ratio(covariance, np.sqrt(np.clip(variance, 0, None)))
