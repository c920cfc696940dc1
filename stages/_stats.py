"""How far a test set's metric difference between two models can be trusted (pure numpy)."""

from __future__ import annotations

import numpy as np

CHUNK = 1000  # resamples drawn at once: bounds memory at CHUNK x examples indices


def paired_bootstrap_gap(reference, other, resamples: int = 10_000, seed: int = 0,
                         confidence: float = 0.95) -> dict[str, float]:
    """The mean of `reference - other` (per-example scores of two models on the same examples)
    and its percentile bootstrap interval, resampling examples with replacement so both models
    are scored on the same draw (the paired test the field uses: Koehn 2004, Dror et al. 2018).
    `differ`: the share of examples the two score differently."""
    reference, other = np.asarray(reference, dtype=float), np.asarray(other, dtype=float)
    if reference.ndim != 1 or reference.shape != other.shape or len(reference) == 0:
        raise ValueError(f"need two equal-length, non-empty score vectors, got shapes {reference.shape} "
                         f"and {other.shape}")
    diff = reference - other
    if resamples < 1 or not 0 < confidence < 1:
        raise ValueError("resamples must be >= 1 and confidence in (0, 1)")
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    for start in range(0, resamples, CHUNK):
        stop = min(start + CHUNK, resamples)
        means[start:stop] = diff[rng.integers(0, len(diff), size=(stop - start, len(diff)))].mean(axis=1)
    tail = 50 * (1 - confidence)
    low, high = np.percentile(means, [tail, 100 - tail])
    return {"gap": float(diff.mean()), "low": float(low), "high": float(high),
            "differ": float(np.mean(diff != 0)), "examples": float(len(diff))}
