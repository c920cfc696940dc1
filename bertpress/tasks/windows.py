"""Sliding windows over texts longer than the model's max_length, and which window owns a token.

A long sentence is read as overlapping windows (the tokenizer's `stride` tokens shared by
neighbours), so no token is lost to truncation. A token seen by several windows takes its
prediction from the window where it sits farthest from an edge (the most context on both sides);
ties go to the earlier window. Training, evaluation and the runtime all use this one rule.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence


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
