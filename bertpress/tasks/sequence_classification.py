"""Runtime head for sequence classification (sentiment, intent, topic; text pairs such as NLI).

Input: a text, or a [text, text_pair] pair for a pair bundle. Output per input: the label, its
probability and every label's probability.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from bertpress.errors import InputError

if TYPE_CHECKING:
    from bertpress.runtime import Model


class SequenceClassificationHead:
    task = "sequence-classification"

    def __init__(self, model: Model):
        self.model = model
        self.pairs = bool(model.metadata.get("text_pair", False))

    def inputs(self, items: Sequence[Any]) -> list[Any]:
        """Check the inputs match the bundle: pairs for a pair model, single texts otherwise."""
        from bertpress.runtime import check_texts

        items = check_texts(items, pairs=True)
        for i, item in enumerate(items):
            if self.pairs and isinstance(item, str):
                raise InputError(f"input #{i} is a single text, but this model classifies text "
                                 "pairs: give [text, text_pair] (CLI: --pair, or a --pair-column)")
            if not self.pairs and not isinstance(item, str):
                raise InputError(f"input #{i} is a text pair, but this model reads single texts")
        return items

    def predict_proba(self, items: Sequence[Any], batch_size: int = 32) -> np.ndarray:
        """Class probabilities, [len(items), len(labels)], columns in `labels` order."""
        from bertpress.runtime import softmax

        items = self.inputs(items)
        probs = np.zeros((len(items), len(self.model.labels)), dtype=np.float32)
        for idx, out, _ in self.model.run(items, ["logits"], batch_size):
            probs[idx] = softmax(out["logits"])
        return probs

    def predict(self, items: Sequence[Any], batch_size: int = 32) -> list[dict[str, Any]]:
        labels = self.model.labels
        return [
            {"label": labels[int(p.argmax())], "score": float(p.max()),
             "probabilities": {label: float(v) for label, v in zip(labels, p, strict=True)}}
            for p in self.predict_proba(items, batch_size)
        ]
