"""Time bundles the way production sees them: through bertpress.runtime (torch-free).

Latencies of several models are taken in interleaved rounds over the same real inputs, so a
comparison (candidate vs champion) is a ratio from one run, not two numbers from two noisy runs.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from bertpress.runtime import Model


def batch1_latencies(models: dict[str, Model], inputs: Sequence[Any], rounds: int = 3,
                     warmup: int = 5) -> dict[str, np.ndarray]:
    """Per-call milliseconds of predict([input]) (tokenize, run, post-process) for each model
    over the same inputs, the models taking turns round by round (machine noise hits them alike)."""
    times: dict[str, list[float]] = {name: [] for name in models}
    for model in models.values():
        for item in inputs[:warmup]:
            model.predict([item])
    for _ in range(rounds):
        for name, model in models.items():
            for item in inputs:
                start = time.perf_counter()
                model.predict([item])
                times[name].append((time.perf_counter() - start) * 1000)
    return {name: np.asarray(ms) for name, ms in times.items()}
