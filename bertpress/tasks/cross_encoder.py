"""Runtime head for re-ranking with a cross-encoder (torch-free).

Input: (query, passage) pairs; the graph reads each pair as one sequence ([CLS] query [SEP] passage
[SEP]) and gives its relevance logit (`logits` [batch, 1]; a two-class head [batch, 2] is read as
the log-odds of its second class). Output per pair: the score (the logit: higher is more relevant,
comparable across the passages of one query) and its sigmoid. `rerank` orders a query's candidate
passages by score, best first, which is what `bertpress rerank`, `bertpress search --rerank` and
`serve`'s POST /rerank return. A bundle trained with task.retriever_weight > 0 orders by the
score fused with the first-stage retriever's, when the caller gives the retriever's scores.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from bertpress.errors import InputError
from bertpress.ranking import fuse_scores

if TYPE_CHECKING:
    from bertpress.runtime import Model


def relevance(logits: np.ndarray) -> np.ndarray:
    """One score per row: the single logit, or a two-class head's logit difference (log-odds)."""
    logits = np.asarray(logits, dtype=np.float32)
    if logits.ndim == 1:
        return logits
    if logits.shape[-1] == 1:
        return logits[:, 0]
    if logits.shape[-1] == 2:
        return logits[:, 1] - logits[:, 0]
    raise InputError(f"a cross-encoder gives 1 or 2 logits per pair, this graph gives {logits.shape[-1]}")


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


class CrossEncoderHead:
    task = "cross-encoder"

    def __init__(self, model: Model):
        self.model = model

    def pairs(self, items: Sequence[Any]) -> list[tuple[str, str]]:
        from bertpress.runtime import check_texts

        items = check_texts(items, pairs=True)
        for i, item in enumerate(items):
            if isinstance(item, str):
                raise InputError(f"input #{i} is a single text, but a cross-encoder scores (query, passage) "
                                 "pairs: give [query, passage] (CLI: bertpress rerank BUNDLE --query Q --input "
                                 "candidates.jsonl)")
        return items

    def scores(self, items: Sequence[Any], batch_size: int = 32) -> np.ndarray:
        """The relevance score of every (query, passage) pair, in input order."""
        items = self.pairs(items)
        out = np.zeros(len(items), dtype=np.float32)
        for idx, values, _ in self.model.run(items, ["logits"], batch_size):
            out[idx] = relevance(values["logits"])
        return out

    def predict(self, items: Sequence[Any], batch_size: int = 32) -> list[dict[str, Any]]:
        scores = self.scores(items, batch_size)
        return [{"score": float(s), "probability": float(sigmoid(s))} for s in scores]

    @property
    def retriever_weight(self) -> float:
        """The share of the retriever's score in the order (the bundle's task.retriever_weight)."""
        return float(self.model.metadata.get("retriever_weight") or 0.0)

    def rerank(self, query: str, passages: Sequence[str], top_k: int | None = None,
               batch_size: int = 32, retriever_scores: Sequence[float] | None = None) -> list[dict[str, Any]]:
        """The passages ordered for `query`, best first: rank, index (the passage's position in
        `passages`), score (the cross-encoder's logit), text; the first `top_k` only when given.
        With `retriever_scores` (the first stage's score of each passage) and a bundle trained with
        retriever_weight > 0, the order is the fused score's (bertpress.ranking.fuse_scores, kept
        as `fused_score`), as the bundle was evaluated."""
        if not isinstance(query, str) or not query.strip():
            raise InputError("the query is empty: give the text to rank the passages for")
        if isinstance(passages, str) or not all(isinstance(p, str) for p in passages):
            raise InputError("passages must be a list of strings")
        if retriever_scores is not None and len(retriever_scores) != len(passages):
            raise InputError(f"{len(retriever_scores)} retriever scores for {len(passages)} passages: give one "
                             "per passage")
        if not passages:
            return []
        scores = self.scores([(query, p) for p in passages], batch_size)
        fused = None
        if retriever_scores is not None and self.retriever_weight:
            fused = fuse_scores(scores, retriever_scores, self.retriever_weight)
        order = np.argsort(-(scores if fused is None else fused), kind="stable")[: top_k or len(passages)]
        return [{"rank": rank, "index": int(i), "score": float(scores[i]), "text": passages[i]}
                | ({} if fused is None else {"fused_score": float(fused[i])}) for rank, i in enumerate(order, 1)]


def rerank_hits(reranker: Model, query: str, hits: list[dict[str, Any]], k: int,
                batch_size: int = 64) -> list[dict[str, Any]]:
    """A retriever's hits for `query` re-ordered by a cross-encoder bundle (fused with the
    retriever's scores when the bundle says so), the first k: each hit keeps its fields, `score`
    becomes the cross-encoder's, and the retriever's rank and score stay as `retriever_rank` /
    `retriever_score`."""
    if reranker.task != "cross-encoder":
        raise InputError(f"--rerank needs a cross-encoder bundle; {reranker.path} is {reranker.task}")
    ranked = reranker.head.rerank(query, [h["text"] for h in hits], top_k=k, batch_size=batch_size,
                                  retriever_scores=[h["score"] for h in hits])
    return [hits[r["index"]] | {"retriever_rank": hits[r["index"]]["rank"], "retriever_score": hits[r["index"]]["score"]}
            | {k: v for k, v in r.items() if k not in ("index", "text")} for r in ranked]
