"""Re-ranking's pure logic: the losses against closed forms, candidate rows from a retriever's
ranking, judged-pair tables split by query, ranking metrics by hand, the runtime's score reading,
and the config rules of task.type cross-encoder."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from bertpress.ranking import fuse_scores, top_k_dot
from bertpress.tasks.cross_encoder import relevance
from pipeline.config import ConfigError, load_config
from stages._losses import margin_mse, relevance_bce, score_distillation_loss
from stages.tasks import rerank_data as rd


# -- losses ---------------------------------------------------------------------------------------
def test_relevance_bce_closed_form():
    # logit 0 -> p = 0.5: -ln 0.5 whatever the label; logit 2 with label 1 -> ln(1 + e^-2)
    assert relevance_bce(torch.zeros(3, 1), torch.tensor([1.0, 0.0, 1.0])).item() == pytest.approx(math.log(2))
    assert relevance_bce(torch.tensor([[2.0]]), torch.tensor([1.0])).item() == pytest.approx(math.log1p(math.exp(-2)))


def test_margin_mse_by_hand():
    labels, groups = torch.tensor([1.0, 0.0, 0.0]), torch.tensor([7, 7, 7])
    teacher = torch.tensor([3.0, 1.0, 0.0])  # margins 2 and 3
    # the student's margins 1 and 1: ((1 - 2)^2 + (1 - 3)^2) / 2 = 2.5
    assert margin_mse(torch.tensor([1.0, 0.0, 0.0]), teacher, labels, groups).item() == pytest.approx(2.5)
    # equal margins at another offset: nothing to learn
    assert margin_mse(teacher + 5.0, teacher, labels, groups).item() == pytest.approx(0.0)


def test_margin_mse_pairs_only_rows_of_one_query():
    student, teacher = torch.tensor([0.0, 0.0, 5.0, 0.0]), torch.tensor([1.0, 0.0, 1.0, 0.0])
    labels = torch.tensor([1.0, 0.0, 1.0, 0.0])
    # queries 1 (rows 0, 1) and 2 (rows 2, 3): margins (0 vs 1) and (5 vs 1) -> (1 + 16) / 2
    assert margin_mse(student, teacher, labels, torch.tensor([1, 1, 2, 2])).item() == pytest.approx(8.5)
    # no query holds a relevant and an irrelevant row: zero, with a gradient path
    lonely = torch.tensor([0.5, 0.2], requires_grad=True)
    loss = margin_mse(lonely, torch.zeros(2), torch.tensor([1.0, 0.0]), torch.tensor([1, 2]))
    assert loss.item() == 0.0
    loss.backward()
    assert lonely.grad is not None


def test_score_distillation_mixes_bce_with_the_chosen_score_loss():
    student, teacher = torch.tensor([[0.5], [-1.0]]), torch.tensor([[2.0], [0.0]])
    labels, groups = torch.tensor([1.0, 0.0]), torch.tensor([0, 0])
    bce = F.binary_cross_entropy_with_logits(student.reshape(-1), labels)
    mse = ((0.5 - 2.0) ** 2 + (-1.0 - 0.0) ** 2) / 2
    margin = ((0.5 + 1.0) - (2.0 - 0.0)) ** 2
    assert score_distillation_loss(student, teacher, labels, groups, 1.0).item() == pytest.approx(bce.item())
    assert score_distillation_loss(student, teacher, labels, groups, 0.0).item() == pytest.approx(mse)
    assert score_distillation_loss(student, teacher, labels, groups, 0.25, "margin-mse").item() == pytest.approx(
        0.25 * bce.item() + 0.75 * margin)
    with pytest.raises(ValueError, match="query group"):
        score_distillation_loss(student, teacher, labels, None, 0.5, "margin-mse")


# -- rows and metrics -----------------------------------------------------------------------------
DOCS = ["d0", "d1", "d2", "d3", "d4"]


def test_training_rows_are_the_relevant_passage_and_the_hardest_others():
    ids, scores = np.array([[1, 3, 0]]), np.array([[0.9, 0.8, 0.1]])
    rows = rd.squad_rows([("q", 3)], DOCS, ids, scores, None, negatives=2)
    assert [(r[rd.PASSAGE], r[rd.LABEL]) for r in rows] == [("d3", 1.0), ("d1", 0.0), ("d0", 0.0)]
    assert rows[0][rd.RETRIEVER_SCORE] == pytest.approx(0.8) and all(r[rd.RELEVANT] == [3] for r in rows)
    # ranked positions index a candidate pool (train documents only); a missed gold has no score
    rows = rd.squad_rows([("q", 4)], DOCS, np.array([[0, 1]]), np.array([[0.5, 0.4]]), [2, 3, 4], negatives=1)
    assert [r[rd.DOC_ID] for r in rows] == [4, 2] and math.isnan(rows[0][rd.RETRIEVER_SCORE])


def test_evaluation_rows_keep_the_ranking_and_a_missed_relevant_passage_scores_zero():
    ids, scores = np.array([[2, 0, 1], [4, 3, 1]]), np.array([[0.9, 0.5, 0.1], [0.7, 0.6, 0.2]])
    rows = rd.squad_rows([("q0", 0), ("q1", 2)], DOCS, ids, scores, None, None)
    assert [r[rd.DOC_ID] for r in rows] == [2, 0, 1, 4, 3, 1]
    assert sum(r[rd.LABEL] for r in rows) == 1.0  # q1's passage (2) was not retrieved
    retriever = rd.ranking_of(rows, rd.RETRIEVER_SCORE, k=2)
    assert retriever["mrr_at_2"] == pytest.approx((1 / 2 + 0) / 2)
    assert retriever["recall_at_1"] == 0.0 and retriever["recall_at_2"] == pytest.approx(0.5)
    # a re-ranker that puts q0's passage first: MRR 1 for q0, still 0 for q1
    reranked = rd.ranking_of(rows, scores=np.array([0.0, 3.0, 1.0, 5.0, 4.0, 3.0]), k=2)
    assert reranked["mrr_at_2"] == pytest.approx(0.5) and reranked["recall_at_1"] == pytest.approx(0.5)


def test_judged_pairs_keep_graded_gains_and_split_by_query():
    frame = pd.DataFrame({rd.QUERY: ["a", "a", "a", "b", "b", "c", "c", "d", "d", "e", "e"],
                          rd.PASSAGE: ["p1", "p2", "p3", "p1", "p4", "p5", "p6", "p7", "p8", "p9", "p0"],
                          rd.LABEL: [2, 0, 1, 0, 1, 1, 0, 1, 0, 1, 0]})
    rows = rd.table_rows(frame, "pairs.csv")
    first = rows[0]
    assert dict(zip(first[rd.RELEVANT], first[rd.GAINS], strict=True)) == {0: 2.0, 2: 1.0}
    assert rows[3][rd.DOC_ID] == 0  # p1 is one document wherever it appears
    parts = rd.split_table_by_query(rows, 0.2, 0.2, seed=3, given=set())
    owners = {split: {r[rd.QUERY] for r in part} for split, part in parts.items()}
    assert sum(len(o) for o in owners.values()) == 5 and not (owners["train"] & owners["test"])
    assert len(owners["test"]) == 1 and len(owners["validation"]) == 1
    # graded nDCG: a's order p2, p3, p1 (gains 0, 1, 2) against the ideal 2, 1
    a_rows = [r for r in rows if r[rd.QUERY] == "a"]
    got = rd.ranking_of(a_rows, scores=np.array([0.1, 0.9, 0.5]), k=3)["ndcg_at_3"]
    ideal = 2 + 1 / math.log2(3)
    assert got == pytest.approx((1 / math.log2(3) + 2 / 2) / ideal)


def test_judged_pairs_need_numeric_labels_and_a_relevant_row():
    with pytest.raises(Exception, match="must hold numbers"):
        rd.table_rows(pd.DataFrame({rd.QUERY: ["a"], rd.PASSAGE: ["p"], rd.LABEL: ["yes"]}), "x.csv")
    with pytest.raises(Exception, match="no row has a label above 0"):
        rd.table_rows(pd.DataFrame({rd.QUERY: ["a"], rd.PASSAGE: ["p"], rd.LABEL: [0]}), "x.csv")


def test_top_k_dot_equals_a_full_sort():
    rng = np.random.default_rng(0)
    queries, documents = rng.normal(size=(7, 5)), rng.normal(size=(30, 5))
    ids, scores = top_k_dot(queries, documents, 6, block=3)
    full = queries @ documents.T
    assert (ids == np.argsort(-full, axis=1)[:, :6]).all()
    assert np.allclose(scores, np.take_along_axis(full, ids, axis=1), atol=1e-5)
    assert top_k_dot(queries, documents, 100)[0].shape == (7, 30)


def test_the_runtime_reads_one_logit_or_a_two_class_head():
    assert relevance(np.array([[0.5], [-1.0]])).tolist() == [0.5, -1.0]
    assert relevance(np.array([[0.0, 2.0], [1.0, -1.0]])).tolist() == [2.0, -2.0]
    with pytest.raises(ValueError, match="1 or 2 logits"):
        relevance(np.zeros((2, 3)))


# -- score fusion ---------------------------------------------------------------------------------
def test_fusion_by_hand():
    reranker, retriever = [1.0, 2.0, 3.0], [0.9, 0.6, 0.3]  # z-scores: [-a, 0, a] and [a, 0, -a]
    a = math.sqrt(1.5)
    assert fuse_scores(reranker, retriever, 0.25) == pytest.approx([-0.5 * a, 0.0, 0.5 * a])
    assert fuse_scores(reranker, retriever, 0.5) == pytest.approx([0.0, 0.0, 0.0])
    assert fuse_scores(reranker, retriever, 1.0) == pytest.approx([a, 0.0, -a])  # the retriever's order
    assert fuse_scores(reranker, [np.nan] * 3, 0.0).tolist() == reranker  # w = 0: the re-ranker as it is


def test_fusion_standardises_each_query_apart():
    # the second query's scores are 100x larger: alone, they would swamp the first's
    groups = ["a", "a", "b", "b"]
    fused = fuse_scores([0.0, 1.0, 0.0, 100.0], [0.2, 0.1, 5.0, 5.0], 0.4, groups)
    assert fused == pytest.approx([-0.2, 0.2, -0.6, 0.6])  # b's retriever ties: its z-scores are 0
    assert fused[:2] == pytest.approx(fuse_scores([0.0, 1.0], [0.2, 0.1], 0.4))


def test_fusion_of_interleaved_queries_equals_each_query_fused_alone():
    rng = np.random.default_rng(0)
    groups = rng.integers(0, 40, size=400)  # 40 queries, their candidates interleaved
    reranker, retriever = rng.normal(0, 5, size=400), rng.normal(0.5, 0.1, size=400)
    groups[:15] = 40  # one more query, whose 15 retriever scores tie at 0.1 (a mean with rounding residue)
    retriever[:15] = 0.1
    fused = fuse_scores(reranker, retriever, 0.3, groups.tolist())

    def z(x):
        return (x - x.mean()) / x.std()

    for query in range(40):
        rows = groups == query
        assert fused[rows] == pytest.approx(0.7 * z(reranker[rows]) + 0.3 * z(retriever[rows]), abs=1e-9)
    assert fused[:15] == pytest.approx(0.7 * z(reranker[:15]), abs=1e-9)  # the tie adds 0, not -+1


@pytest.mark.parametrize(("args", "message"), [
    (([1.0, 2.0], [1.0], 0.5), "one re-ranker and one retriever score"),
    (([1.0, 2.0], [1.0, 2.0], 1.5), r"in \[0, 1\]"),
    (([1.0, 2.0], [1.0, np.nan], 0.5), "missing"),
])
def test_fusion_refuses_bad_input(args, message):
    with pytest.raises(ValueError, match=message):
        fuse_scores(*args)


# -- config ---------------------------------------------------------------------------------------
TINY = "configs/tiny-rerank.yaml"


@pytest.mark.parametrize(("overrides", "message"), [
    (["data.source=builtin"], "cross-encoder reads files"),
    (["data.file_format=sts"], "cross-encoder reads files"),
    (["data.file_format=table"], "needs data.text_pair_column"),
    (["task.rerank_depth=3"], "at least task.k"),
    (["distill.augment.enabled=true"], "distill.augment"),
    (["task.distill_loss=kl"], "task.distill_loss"),
    (["task.stride=3"], "unknown key for task.type cross-encoder"),
    (["task.retriever_weight=2"], "task.retriever_weight"),
    (["distill.group_by_length=true"], "distill.group_by_length: false"),
])
def test_config_errors_name_the_key_and_the_fix(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(TINY, overrides)


def test_the_tiny_config_is_a_cross_encoder():
    cfg = load_config(TINY)
    assert cfg.task.type == "cross-encoder" and cfg.task.distill_loss == "margin-mse"
    assert load_config(TINY, ["data.file_format=table", "data.text_pair_column=passage"]).task.k == 5
