"""Sliding windows over texts longer than the model's max_length: which window owns a token, and
running a batch of windows through the graph.

A long sentence is read as overlapping windows (the tokenizer's `stride` tokens shared by
neighbours), so no token is lost to truncation. A token seen by several windows takes its
prediction from the window where it sits farthest from an edge (the most context on both sides);
ties go to the earlier window. Training, evaluation and the runtime all use this one rule.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from bertpress.runtime import Model


def owners(windows: Sequence[Sequence[Hashable]]) -> dict[Hashable, tuple[int, int]]:
    """For each item key seen in `windows` (each window lists its items in order), the
    (window index, position in that window) it should be read from."""
    best: dict[Hashable, tuple[int, int, int]] = {}
    for w, items in enumerate(windows):
        last = len(items) - 1
        for position, key in enumerate(items):
            margin = min(position, last - position)
            if key not in best or margin > best[key][0]:
                best[key] = (margin, w, position)
    return {key: (w, position) for key, (_, w, position) in best.items()}


def run_windows(model: Model, encodings: Sequence[Any], batch_size: int) -> list[np.ndarray]:
    """The graph's `logits` for each tokenizers encoding (unpadded; padded here to its batch's
    longest), in input order. Batches hold similar lengths: less padding."""
    rows: list[Any] = [None] * len(encodings)
    order = np.argsort([len(e.ids) for e in encodings], kind="stable")
    for start in range(0, len(order), max(batch_size, 1)):
        chunk = [encodings[j] for j in order[start:start + batch_size]]
        length = max(len(e.ids) for e in chunk)
        for e in chunk:
            e.pad(length, pad_id=model.pad_id, pad_token=model.pad_token)
        out = model.session.run(["logits"], model.feed(chunk))[0]
        for row, j in enumerate(order[start:start + batch_size]):
            rows[j] = out[row]
    return rows
