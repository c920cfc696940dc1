"""Measure bundles the way production sees them: through bertpress.runtime (torch-free).

Latencies of several models are taken in interleaved rounds over the same real sentences, so a
comparison (candidate vs champion) is a ratio from one run, not two numbers from two noisy runs.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from bertpress.runtime import Model


def accuracy(model: Model, texts: Sequence[str], labels: Sequence[str], batch_size: int = 64) -> float:
    """Share of texts whose predicted label name equals the true label name."""
    if not texts:
        raise ValueError("no texts to evaluate on")
    probs = model.predict_proba(texts, batch_size)
    predicted = [model.labels[i] for i in probs.argmax(axis=1)]
    return float(np.mean([p == t for p, t in zip(predicted, labels, strict=True)]))


def batch1_latencies(models: dict[str, Model], texts: Sequence[str], rounds: int = 3,
                     warmup: int = 5) -> dict[str, np.ndarray]:
    """Per-call milliseconds of predict_proba([text]) for each model over the same texts,
    the models taking turns round by round (machine noise hits them alike)."""
    times: dict[str, list[float]] = {name: [] for name in models}
    for model in models.values():
        for text in texts[:warmup]:
            model.predict_proba([text])
    for _ in range(rounds):
        for name, model in models.items():
            for text in texts:
                start = time.perf_counter()
                model.predict_proba([text])
                times[name].append((time.perf_counter() - start) * 1000)
    return {name: np.asarray(ms) for name, ms in times.items()}
