"""Runtime head for sentence embeddings (similarity, retrieval).

Input: a text. Output per input: {"embedding": [...]}, the graph's own output (pooling and, when
the bundle says so, L2 normalisation happen inside the ONNX graph). `Model.encode` returns the same
vectors as one numpy array; `bertpress index` / `search` build on it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from bertpress.errors import InputError

if TYPE_CHECKING:
    from bertpress.runtime import Model


class SentenceEmbeddingHead:
    task = "sentence-embedding"

    def __init__(self, model: Model):
        self.model = model

    def predict(self, items: Sequence[Any], batch_size: int = 32) -> list[dict[str, Any]]:
        from bertpress.runtime import check_texts

        texts = check_texts(items)
        if any(not isinstance(t, str) for t in texts):
            raise InputError("a sentence-embedding model reads single texts")
        return [{"embedding": v.tolist()} for v in self.model.encode(texts, batch_size=batch_size)]
