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
    over the same inputs. The models take turns call by call, the first of each turn rotating, so a
    burst of machine noise hits them alike (in blocks of calls it can land on one model's block)."""
    times: dict[str, list[float]] = {name: [] for name in models}
    for model in models.values():
        for item in inputs[:warmup]:
            model.predict([item])
    order = list(models)
    for _ in range(rounds):
        for item in inputs:
            for name in order:
                start = time.perf_counter()
                models[name].predict([item])
                times[name].append((time.perf_counter() - start) * 1000)
            order = order[1:] + order[:1]
    return {name: np.asarray(ms) for name, ms in times.items()}
