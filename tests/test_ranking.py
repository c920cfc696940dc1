"""Similarity and retrieval metrics against rankings worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import spearmanr

from bertpress.ranking import (
    average_ranks,
    label_retrieval_metrics,
    mrr_at_k,
    ndcg_at_k,
    recall_at_k,
    retrieval_metrics,
    spearman,
    top_k_overlap,
)


def test_mrr_is_one_over_the_first_relevant_rank():
    assert mrr_at_k(["a", "b", "c"], {"c"}, k=10) == pytest.approx(1 / 3)
    assert mrr_at_k(["a", "b", "c"], {"b", "c"}, k=10) == pytest.approx(1 / 2)
    assert mrr_at_k(["a", "b", "c"], {"c"}, k=2) == 0.0  # beyond the cut-off
    assert mrr_at_k(["x"], {"c"}, k=10) == 0.0


def test_ndcg_by_hand():
    # Relevant d1, d3 (gain 1). Returned d1, d2, d3: DCG = 1/log2(2) + 1/log2(4) = 1.5;
    # ideal d1, d3: 1 + 1/log2(3) = 1.6309; nDCG = 0.91972.
    assert ndcg_at_k(["d1", "d2", "d3"], {"d1", "d3"}, k=10) == pytest.approx(1.5 / (1 + 1 / math.log2(3)))
    assert ndcg_at_k(["d1", "d3", "d2"], {"d1", "d3"}, k=10) == pytest.approx(1.0)
    assert ndcg_at_k(["d2", "d4"], {"d1"}, k=10) == 0.0
    # Graded: gains 3 (d1) and 1 (d2); returned d2, d1: (1 + 3/log2 3) / (3 + 1/log2 3).
    got = ndcg_at_k(["d2", "d1"], {"d1": 3, "d2": 1}, k=10)
    assert got == pytest.approx((1 + 3 / math.log2(3)) / (3 + 1 / math.log2(3)))
    # The ideal list is cut at k too: one slot, two relevant, the first returned is relevant -> 1.
    assert ndcg_at_k(["d1", "d2"], {"d1", "d2"}, k=1) == pytest.approx(1.0)


def test_recall_counts_relevant_in_the_top_k():
    assert recall_at_k(["a", "b", "c", "d"], {"b", "d", "z"}, k=2) == pytest.approx(1 / 3)
    assert recall_at_k(["a", "b", "c", "d"], {"b", "d", "z"}, k=4) == pytest.approx(2 / 3)


def test_retrieval_metrics_average_over_queries_with_a_relevant_document():
    rankings = [["a", "b"], ["b", "a"], ["a", "b"]]
    judgments = [{"a"}, {"a"}, set()]  # the third query has no relevant document: skipped
    got = retrieval_metrics(rankings, judgments, recall_ks=(1, 10), k=10)
    assert got["queries"] == 2
    assert got["mrr@10"] == pytest.approx((1 + 0.5) / 2)
    assert got["recall@1"] == pytest.approx(0.5) and got["recall@10"] == pytest.approx(1.0)
    assert got["ndcg@10"] == pytest.approx((1 + 1 / math.log2(3)) / 2)
    with pytest.raises(ValueError, match="no query has a relevant"):
        retrieval_metrics([["a"]], [set()])


def test_spearman_matches_scipy_with_ties():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 5, size=50).astype(float)  # many ties
    y = x + rng.normal(0, 2, size=50)
    assert spearman(x, y) == pytest.approx(spearmanr(x, y).statistic, abs=1e-12)
    np.testing.assert_allclose(average_ranks([10, 20, 20, 30]), [1, 2.5, 2.5, 4])
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    with pytest.raises(ValueError, match="equal-length"):
        spearman([1, 2], [1, 2, 3])


def test_top_k_overlap():
    assert top_k_overlap(np.array([[1, 2, 3]]), np.array([[3, 2, 9]]), k=3) == pytest.approx(2 / 3)


def test_label_retrieval_equals_the_per_query_definitions():
    rng = np.random.default_rng(1)
    vectors = rng.normal(size=(60, 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    labels = rng.integers(0, 4, size=60)
    labels[0] = 9  # alone in its label: skipped
    got = label_retrieval_metrics(vectors, labels, k=10, block=7)  # blocks that do not divide 60
    rankings, judgments = [], []
    for i in range(1, 60):
        scores = vectors @ vectors[i]
        scores[i] = -np.inf
        rankings.append(list(np.argsort(-scores, kind="stable")))
        judgments.append({j for j in range(60) if j != i and labels[j] == labels[i]})
    want = retrieval_metrics(rankings, judgments, recall_ks=(), k=10)
    assert got["ndcg_at_10"] == pytest.approx(want["ndcg@10"], abs=1e-6)
    assert got["mrr_at_10"] == pytest.approx(want["mrr@10"], abs=1e-6)
    precision = np.mean([len(set(r[:10]) & j) / 10 for r, j in zip(rankings, judgments, strict=True)])
    assert got["precision_at_10"] == pytest.approx(precision, abs=1e-6)


def test_label_retrieval_by_hand():
    # 1-d "vectors": a=1.0, b=0.9 (label x); c=-1.0 (label y), d=-0.8 (label y). k=1:
    # a's nearest is b (hit), b's is a (hit), c's is d (hit), d's is c (hit) -> all 1.
    vectors = np.array([[1.0], [0.9], [-1.0], [-0.8]])
    got = label_retrieval_metrics(vectors, np.array(["x", "x", "y", "y"]), k=1)
    assert got == {"ndcg_at_1": 1.0, "mrr_at_1": 1.0, "precision_at_1": 1.0}
    # Swap labels of b and c: a's nearest b is now a miss, ... every nearest neighbour is a miss.
    got = label_retrieval_metrics(vectors, np.array(["x", "y", "x", "y"]), k=1)
    assert got == {"ndcg_at_1": 0.0, "mrr_at_1": 0.0, "precision_at_1": 0.0}
