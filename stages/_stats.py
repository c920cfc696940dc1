"""How far a test set's metric difference between two models can be trusted (pure numpy)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

CHUNK = 1000  # resamples drawn at once: bounds memory at CHUNK x examples indices


@dataclass(frozen=True)
class ExampleScores:
    """Per-example values and the statistic that turns any resample of them into the metric, for
    metrics that are not a mean over examples: entity F1 from each sentence's (tp, fp, fn),
    Spearman from each pair's (cosine, gold)."""

    values: np.ndarray  # one row per example
    statistic: Callable[[np.ndarray], float]


def paired_bootstrap_gap(reference, other, resamples: int = 10_000, seed: int = 0,
                         confidence: float = 0.95) -> dict[str, float]:
    """The metric of `reference` minus that of `other` (two models' per-example scores on the same
    examples: vectors whose mean is the metric, or ExampleScores) and its percentile bootstrap
    interval, resampling examples with replacement so both models are scored on the same draw (the
    paired test the field uses: Koehn 2004, Dror et al. 2018). `differ`: the share of examples the
    two score differently."""
    if resamples < 1 or not 0 < confidence < 1:
        raise ValueError("resamples must be >= 1 and confidence in (0, 1)")
    if isinstance(reference, ExampleScores) or isinstance(other, ExampleScores):
        return _statistic_gap(reference, other, resamples, seed, confidence)
    reference, other = np.asarray(reference, dtype=float), np.asarray(other, dtype=float)
    _check_pair(reference, other, ndim=1)
    diff = reference - other
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    for start in range(0, resamples, CHUNK):
        stop = min(start + CHUNK, resamples)
        means[start:stop] = diff[rng.integers(0, len(diff), size=(stop - start, len(diff)))].mean(axis=1)
    return _summary(float(diff.mean()), means, confidence, np.mean(diff != 0), len(diff))


def _statistic_gap(reference: ExampleScores, other: ExampleScores, resamples: int, seed: int,
                   confidence: float) -> dict[str, float]:
    """The general case: the statistic recomputed on each resample (one index draw for both)."""
    if not (isinstance(reference, ExampleScores) and isinstance(other, ExampleScores)):
        raise ValueError("both models' scores must be ExampleScores, or neither")
    a, b = np.asarray(reference.values, dtype=float), np.asarray(other.values, dtype=float)
    _check_pair(a, b, ndim=a.ndim)
    rng = np.random.default_rng(seed)
    gaps = np.empty(resamples)
    for i in range(resamples):
        idx = rng.integers(0, len(a), size=len(a))
        gaps[i] = reference.statistic(a[idx]) - other.statistic(b[idx])
    differ = np.mean(np.any((a != b).reshape(len(a), -1), axis=1))
    return _summary(reference.statistic(a) - other.statistic(b), gaps, confidence, differ, len(a))


def _check_pair(a: np.ndarray, b: np.ndarray, ndim: int) -> None:
    if a.ndim != ndim or a.shape != b.shape or len(a) == 0:
        raise ValueError(f"need two equal-shape, non-empty score arrays, got shapes {a.shape} and {b.shape}")


def _summary(gap: float, draws: np.ndarray, confidence: float, differ: float, examples: int) -> dict[str, float]:
    tail = 50 * (1 - confidence)
    low, high = np.percentile(draws, [tail, 100 - tail])
    return {"gap": float(gap), "low": float(low), "high": float(high), "differ": float(differ),
            "examples": float(examples)}
