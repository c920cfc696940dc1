"""Similarity and retrieval metrics on numpy, torch-free (the runtime's `search` and the benchmark
share them).

Retrieval metrics take, per query, the ranked document ids a system returned and the query's
relevance judgments ({doc id: gain}; a set means gain 1 for each). They follow the definitions of
the IR literature and of sentence-transformers' InformationRetrievalEvaluator / BEIR:
- MRR@k: 1 / rank of the first relevant document in the top k (0 if none);
- nDCG@k: sum over the top k of gain / log2(rank + 1), divided by the same sum for the ideal order;
- Recall@k: relevant documents in the top k / all relevant documents.
Queries without any relevant document are skipped (they have no defined recall or nDCG).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping, Sequence

import numpy as np

Judgments = Mapping[Hashable, float] | set | frozenset


def _gains(relevant: Judgments) -> dict[Hashable, float]:
    if isinstance(relevant, Mapping):
        return {doc: float(g) for doc, g in relevant.items() if g > 0}
    return {doc: 1.0 for doc in relevant}


def mrr_at_k(ranked: Sequence[Hashable], relevant: Judgments, k: int) -> float:
    gains = _gains(relevant)
    for rank, doc in enumerate(ranked[:k], 1):
        if doc in gains:
            return 1.0 / rank
    return 0.0


def ndcg_at_k(ranked: Sequence[Hashable], relevant: Judgments, k: int) -> float:
    gains = _gains(relevant)
    if not gains:
        return 0.0
    dcg = sum(gains.get(doc, 0.0) / np.log2(rank + 1) for rank, doc in enumerate(ranked[:k], 1))
    ideal = sorted(gains.values(), reverse=True)[:k]
    idcg = sum(g / np.log2(rank + 1) for rank, g in enumerate(ideal, 1))
    return float(dcg / idcg)


def recall_at_k(ranked: Sequence[Hashable], relevant: Judgments, k: int) -> float:
    gains = _gains(relevant)
    if not gains:
        return 0.0
    return len(set(ranked[:k]) & gains.keys()) / len(gains)


def per_query_metrics(rankings: Iterable[Sequence[Hashable]], judgments: Iterable[Judgments],
                      recall_ks: Sequence[int] = (1, 10, 100), k: int = 10) -> dict[str, np.ndarray]:
    """Each query's nDCG@k, MRR@k and Recall@(each of recall_ks), for the queries with a relevant
    document, in order: the terms `retrieval_metrics` averages (and a paired bootstrap resamples)."""
    rows = [(list(r), j) for r, j in zip(rankings, judgments, strict=True) if _gains(j)]
    if not rows:
        raise ValueError("no query has a relevant document: nothing to score")
    out = {f"ndcg@{k}": np.asarray([ndcg_at_k(r, j, k) for r, j in rows]),
           f"mrr@{k}": np.asarray([mrr_at_k(r, j, k) for r, j in rows])}
    for n in recall_ks:
        out[f"recall@{n}"] = np.asarray([recall_at_k(r, j, n) for r, j in rows])
    return out


def mean_metrics(per_query: dict[str, np.ndarray]) -> dict[str, float]:
    """`per_query_metrics` averaged over the queries, with their count under "queries"."""
    return {name: float(v.mean()) for name, v in per_query.items()} | {
        "queries": float(len(next(iter(per_query.values()))))}


def retrieval_metrics(rankings: Iterable[Sequence[Hashable]], judgments: Iterable[Judgments],
                      recall_ks: Sequence[int] = (1, 10, 100), k: int = 10) -> dict[str, float]:
    """Mean nDCG@k, MRR@k and Recall@(each of recall_ks) over the queries with a relevant document."""
    return mean_metrics(per_query_metrics(rankings, judgments, recall_ks, k))


def top_k_dot(queries: np.ndarray, documents: np.ndarray, depth: int,
              block: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Exact top `depth` documents of each query by dot product (cosine for unit vectors): ids and
    scores, [queries, depth], best first (ties in document order). Blocks of queries bound memory."""
    queries, documents = np.asarray(queries, dtype=np.float32), np.asarray(documents, dtype=np.float32)
    depth = min(depth, len(documents))
    ids, scores = [], []
    for start in range(0, len(queries), block):
        block_scores = queries[start:start + block] @ documents.T
        top = np.argpartition(-block_scores, depth - 1, axis=1)[:, :depth]
        top.sort(axis=1)  # document order first, so the stable sort below breaks ties by it
        order = np.argsort(-np.take_along_axis(block_scores, top, axis=1), axis=1, kind="stable")
        top = np.take_along_axis(top, order, axis=1)
        ids.append(top)
        scores.append(np.take_along_axis(block_scores, top, axis=1))
    if not ids:
        return np.zeros((0, depth), dtype=np.int64), np.zeros((0, depth), dtype=np.float32)
    return np.concatenate(ids), np.concatenate(scores)


def _standardised(x: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """z-scores of `x` within each group (`keys`: 0..n-1 per row), in one pass over all groups
    (a loop over 10,000 queries' masks was quadratic); a group whose values tie scores 0."""
    count = np.bincount(keys)
    mean = (np.bincount(keys, x) / count)[keys]
    centred = x - mean
    std = np.sqrt(np.bincount(keys, centred * centred) / count)[keys]
    # tied values leave rounding residue (~1e-16 of their size) after centring: still a tie
    return np.divide(centred, std, out=np.zeros_like(x), where=std > 1e-12 * np.abs(mean))


def fuse_scores(reranker: Sequence[float], retriever: Sequence[float], retriever_weight: float,
                groups: Sequence[Hashable] | None = None) -> np.ndarray:
    """Score fusion of a re-ranker with its first-stage retriever (the convex combination of hybrid
    retrieval): (1 - w) x z(re-ranker) + w x z(retriever), each score z-standardised over the
    candidates of its query (`groups`: the query of each row; None: all rows are one query's), so
    logits and cosines meet on one scale. w = 0 returns the re-ranker's scores unchanged."""
    reranker = np.asarray(reranker, dtype=np.float64)
    retriever = np.asarray(retriever, dtype=np.float64)
    if reranker.shape != retriever.shape or reranker.ndim != 1:
        raise ValueError(f"one re-ranker and one retriever score per candidate, got {reranker.shape} and {retriever.shape}")
    if not 0.0 <= retriever_weight <= 1.0:
        raise ValueError(f"retriever_weight is a share in [0, 1], got {retriever_weight}")
    if retriever_weight == 0.0:
        return reranker
    if np.isnan(retriever).any():
        raise ValueError("fusion needs a retriever score for every candidate; some are missing (NaN)")
    keys = (np.zeros(len(reranker), dtype=np.int64) if groups is None
            else np.unique(np.asarray(groups), return_inverse=True)[1])
    return (1 - retriever_weight) * _standardised(reranker, keys) + retriever_weight * _standardised(retriever, keys)


def average_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks from 1, ties sharing their mean rank (scipy.stats.rankdata's 'average')."""
    values = np.asarray(values, dtype=np.float64)
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = np.arange(1, len(values) + 1)
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=ranks)
    return sums[inverse] / counts[inverse]


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation (the Pearson correlation of average ranks)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1 or len(x) < 2:
        raise ValueError(f"spearman needs two equal-length sequences of >= 2 values, got {x.shape} and {y.shape}")
    rx, ry = average_ranks(x) - (len(x) + 1) / 2, average_ranks(y) - (len(y) + 1) / 2
    denominator = np.sqrt((rx * rx).sum() * (ry * ry).sum())
    return float((rx * ry).sum() / denominator) if denominator else 0.0


def top_k_overlap(a: np.ndarray, b: np.ndarray, k: int = 10) -> float:
    """Mean fraction of shared ids between the rows of two [queries, >=k] id arrays' first k."""
    a, b = np.asarray(a)[:, :k], np.asarray(b)[:, :k]
    return float(np.mean([len(set(x) & set(y)) / k for x, y in zip(a, b, strict=True)]))


def label_retrieval_metrics(vectors: np.ndarray, labels: np.ndarray, k: int = 10,
                            block: int = 1024) -> dict[str, float]:
    """Retrieval by label on a labelled set: every text queries all the others (by dot product, so
    unit vectors rank by cosine), and its relevant documents are the other texts of its label.
    The same definitions as `retrieval_metrics`, vectorised: nDCG@k, MRR@k, precision@k; texts
    alone in their label are skipped. Computed in blocks of queries (memory ~ block x n)."""
    vectors = np.asarray(vectors, dtype=np.float32)
    labels = np.asarray(labels)
    n = len(vectors)
    if n < 2 or n != len(labels):
        raise ValueError(f"need >= 2 vectors with one label each, got {n} vectors and {len(labels)} labels")
    k = min(k, n - 1)
    _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    relevant_count = counts[inverse] - 1  # the other texts of the label
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    ideal = np.cumsum(discounts)  # ideal DCG with r relevant documents: ideal[min(r, k) - 1]
    ndcg, mrr, precision = [], [], []
    for start in range(0, n, block):
        stop = min(start + block, n)
        scores = vectors[start:stop] @ vectors.T
        scores[np.arange(stop - start), np.arange(start, stop)] = -np.inf  # a text is not its own neighbour
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        order = np.take_along_axis(scores, top, axis=1).argsort(axis=1, kind="stable")[:, ::-1]
        top = np.take_along_axis(top, order, axis=1)
        hits = labels[top] == labels[start:stop, None]
        ndcg.append((hits * discounts).sum(1) / ideal[np.clip(relevant_count[start:stop], 1, k) - 1])
        first = np.where(hits.any(1), hits.argmax(1) + 1, np.inf)
        mrr.append(1.0 / first)
        precision.append(hits.mean(1))
    keep = relevant_count > 0
    return {f"ndcg_at_{k}": float(np.concatenate(ndcg)[keep].mean()),
            f"mrr_at_{k}": float(np.concatenate(mrr)[keep].mean()),
            f"precision_at_{k}": float(np.concatenate(precision)[keep].mean())}
