"""Re-ranking through every stage on the tiny cross-encoder config (a random BERT, a small SQuAD-format
file, the built-in MiniLM as the retriever): real outputs of each stage, a second run of all cache
hits, the bundle re-ranking with torch blocked (`rerank`, `predict` on pairs, `search --rerank`),
and `serve`'s POST /rerank."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from bertpress.ranking import fuse_scores
from conftest import (
    NO_TORCH,
    TINY_RERANK,
    assert_rerun_is_all_cache_hits,
    cli_status,
    embedding_bundle,
    served,
)
from conftest import http_call as post
from conftest import no_torch_rows as no_torch
from conftest import stage_manifest as manifest

ROOT = Path(__file__).resolve().parents[1]
CANDIDATES = ["anna diaz lives in oslo .", "bruno berg works as a chef .", "the market opened early on monday .",
              "anna silva lives in lima ."]


@pytest.fixture(scope="module")
def rows(tiny_rerank_run) -> dict[str, dict]:
    return cli_status(tiny_rerank_run, config=TINY_RERANK)


@pytest.fixture(scope="module")
def bundle(rows) -> Path:
    return Path(rows["release"]["path"]) / "bundle"


def test_data_stage_builds_candidates_from_the_retriever(rows):
    from datasets import load_from_disk

    path, m = manifest(rows, "data")
    report = json.loads((path / "data_report.json").read_text())
    assert report["task"] == "cross-encoder" and report["id2label"] == {"0": "relevance"}
    assert report["documents"] == 90 and report["queries"] == {"train": 96, "validation": 24, "test": 60}
    # train: each question with its paragraph and 3 hard negatives; evaluation: the retriever's top 10
    assert report["pairs"] == {"train": 96 * 4, "validation": 24 * 10, "test": 60 * 10}
    assert report["relevant_pairs"]["train"] == 96
    retriever = report["retriever_test"]
    assert 0 < retriever["mrr_at_5"] <= retriever["recall_at_5"] <= 1
    assert m["metrics"]["data/retriever_test_mrr_at_5"] == pytest.approx(retriever["mrr_at_5"])
    splits = load_from_disk(str(path / "dataset"))
    test_passages = set(splits["test"].filter(lambda r: r["label"] > 0)["text_pair"])
    assert not test_passages & set(splits["train"]["text_pair"])  # negatives come from train articles only
    # the negatives are hard: they share a name with the question (the retriever found them)
    negatives = splits["train"].filter(lambda r: r["label"] == 0)
    shared = [bool(set(q.split()[2:4]) & set(p.split())) for q, p in zip(negatives["text"], negatives["text_pair"],
                                                                       strict=True)]
    assert np.mean(shared) > 0.5


def test_teacher_trains_on_whole_sampled_queries_and_the_student_on_every_one(rows):
    _, teacher = manifest(rows, "finetune")
    _, student = manifest(rows, "distill")
    # finetune.max_train_samples counts queries: 84 of the 96, each with its paragraph and 3 negatives
    assert teacher["metrics"]["train/rows"] == 84 * 4
    assert student["info"]["train_rows"] == 96 * 4


@pytest.mark.parametrize("stage", ["finetune", "distill"])
def test_training_stages_report_ranking_metrics(rows, stage):
    _, m = manifest(rows, stage)
    metrics = m["metrics"]
    assert 0 <= metrics["test/recall_at_1"] <= metrics["test/mrr_at_5"] <= metrics["test/recall_at_5"] <= 1
    assert 0 < metrics["test/ndcg_at_5"] <= 1
    # the config fuses the retriever's score in: the cross-encoder alone is reported beside it
    assert 0 <= metrics["test/cross_encoder_recall_at_1"] <= metrics["test/cross_encoder_mrr_at_5"] <= 1


def test_export_has_one_logit_with_parity(rows):
    path, m = manifest(rows, "export")
    for role in ("teacher", "student"):
        for variant in ("onnx", "fused"):
            assert m["metrics"][f"{role}/{variant}_max_abs_diff"] < 1e-4
    session = ort.InferenceSession(str(path / "student" / "model_fused.onnx"), providers=["CPUExecutionProvider"])
    feed = {i.name: np.ones((3, 9), dtype=np.int64) for i in session.get_inputs()}
    assert session.run(["logits"], feed)[0].shape == (3, 1)


def test_int8_is_selected_on_mrr_with_integer_ops(rows):
    path, _ = manifest(rows, "quantize")
    report = json.loads((path / "quantize_report.json").read_text())
    assert report["primary_metric"] == "mrr_at_5"
    assert "ndcg_at_5" in report["candidates"][report["selected"]]
    ops = {n.op_type for n in onnx.load(str(path / "student_int8" / "model.onnx")).graph.node}
    assert {"MatMulInteger", "DynamicQuantizeLinear"} <= ops or "QuantizeLinear" in ops


def test_benchmark_has_the_stock_optimum_model_and_pair_throughput(rows):
    path, _ = manifest(rows, "benchmark")
    report = json.loads((path / "benchmark.json").read_text())
    assert report["task"] == "cross-encoder" and report["primary_metric"] == "mrr_at_5"
    v = report["variants"]
    assert set(v) >= {"teacher-pytorch", "teacher-stock-int8", "student-onnx", "student-int8"}
    for r in v.values():
        assert 0 <= r["recall_at_1"] <= r["mrr_at_5"] <= 1 and r["throughput_real"]["32"] > 0
    assert v["student-onnx"]["mrr_at_5"] == pytest.approx(v["student-pytorch"]["mrr_at_5"], abs=0.02)
    gap = v["student-int8"]["gap_to_teacher"]  # MRR is a mean over queries: an interval around the gap
    assert gap["gap"] == pytest.approx(v[report["baseline"]]["mrr_at_5"] - v["student-int8"]["mrr_at_5"])
    assert gap["low"] <= gap["gap"] <= gap["high"]
    table = (path / "results.md").read_text()
    assert "| test MRR@5 | test nDCG@5 | test R@1 | test MRR@5 (cross-encoder alone) |" in table
    assert "| retriever-alone |" in table
    # the retriever alone, on the same candidates: what the data stage measured
    data_path, _ = manifest(rows, "data")
    retriever = json.loads((data_path / "data_report.json").read_text())["retriever_test"]
    assert report["references"]["retriever-alone"]["mrr_at_5"] == pytest.approx(retriever["mrr_at_5"])


def test_second_run_is_all_cache_hits(tiny_rerank_run, rows):
    assert_rerun_is_all_cache_hits(tiny_rerank_run, TINY_RERANK, "bertpress-tiny-rerank", rows)


def test_rerank_orders_candidates_without_torch(bundle, tmp_path):
    meta = json.loads((bundle / "bundle.json").read_text())
    assert meta["task"] == "cross-encoder" and meta["rerank_depth"] == 10 and meta["retriever_weight"] == 0.5
    candidates = tmp_path / "candidates.jsonl"
    candidates.write_text("\n".join(json.dumps({"id": f"c{i}", "text": t, "source": "test"})
                                    for i, t in enumerate(CANDIDATES)))
    # batch size 1: dynamic INT8 scales depend on what shares a batch, and predict below scores alone
    ranked = no_torch("rerank", str(bundle), "--query", "where does anna diaz live ?", "--input", str(candidates),
                      "--batch-size", "1")
    assert sorted(r["id"] for r in ranked) == ["c0", "c1", "c2", "c3"] and all(r["source"] == "test" for r in ranked)
    assert [r["rank"] for r in ranked] == [1, 2, 3, 4]
    assert [r["score"] for r in ranked] == sorted((r["score"] for r in ranked), reverse=True)
    # the same scores as scoring each pair on its own (predict on pairs), and --top-k keeps the best
    scored = no_torch("predict", str(bundle), "where does anna diaz live ?", "--pair", ranked[0]["text"])
    assert scored[0]["score"] == pytest.approx(ranked[0]["score"], abs=1e-4) and 0 < scored[0]["probability"] < 1
    top = no_torch("rerank", str(bundle), "--query", "where does anna diaz live ?", "--top-k", "2", "--batch-size",
                   "1", *CANDIDATES)
    assert [r["text"] for r in top] == [r["text"] for r in ranked[:2]]
    proc = subprocess.run([*NO_TORCH, "rerank", str(bundle), *CANDIDATES], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2 and "--query" in proc.stderr
    # candidates that carry their retriever's score are fused with it (the bundle's retriever_weight)
    retrieved = [0.9, 0.1, 0.5, 0.7]
    candidates.write_text("\n".join(json.dumps({"id": f"c{i}", "text": t, "score": s})
                                    for i, (t, s) in enumerate(zip(CANDIDATES, retrieved, strict=True))))
    fused = no_torch("rerank", str(bundle), "--query", "where does anna diaz live ?", "--input", str(candidates),
                     "--batch-size", "1")
    alone = {r["id"]: r["score"] for r in ranked}
    expected = fuse_scores([alone[f"c{i}"] for i in range(4)], retrieved, 0.5)
    assert [r["id"] for r in fused] == [f"c{i}" for i in np.argsort(-expected, kind="stable")]
    for r in fused:
        i = int(r["id"][1])
        assert r["fused_score"] == pytest.approx(expected[i], abs=1e-3) and r["retriever_score"] == retrieved[i]
        assert r["score"] == pytest.approx(alone[r["id"]], abs=1e-4)
    # --retriever-field '' ignores the score; under another name it fuses the same way
    ignored = no_torch("rerank", str(bundle), "--query", "where does anna diaz live ?", "--input", str(candidates),
                       "--batch-size", "1", "--retriever-field", "")
    assert [r["id"] for r in ignored] == [r["id"] for r in ranked] and "fused_score" not in ignored[0]
    candidates.write_text("\n".join(json.dumps({"id": f"c{i}", "text": t, "bm25": s})
                                    for i, (t, s) in enumerate(zip(CANDIDATES, retrieved, strict=True))))
    named = no_torch("rerank", str(bundle), "--query", "where does anna diaz live ?", "--input", str(candidates),
                     "--batch-size", "1", "--retriever-field", "bm25")
    assert [r["id"] for r in named] == [r["id"] for r in fused] and "bm25" not in named[0]
    # a score that only some candidates carry cannot be fused: an error naming the candidate and the fix
    candidates.write_text("\n".join([json.dumps({"text": CANDIDATES[0], "score": 0.9}),
                                     json.dumps({"text": CANDIDATES[1]})]))
    proc = subprocess.run([*NO_TORCH, "rerank", str(bundle), "--query", "q", "--input", str(candidates)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "candidate 2" in proc.stderr and "--retriever-field" in proc.stderr


def test_search_retrieves_then_reranks(bundle, tmp_path):
    encoder = embedding_bundle(tmp_path / "encoder", seed=3)
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("\n".join(json.dumps({"id": f"d{i}", "text": t}) for i, t in enumerate(CANDIDATES)))
    no_torch("index", str(encoder), "--input", str(corpus), "--out", str(tmp_path / "index"))
    plain = no_torch("search", str(tmp_path / "index"), "where does anna diaz live ?", "-k", "4")[0]["hits"]
    [row] = no_torch("search", str(tmp_path / "index"), "where does anna diaz live ?", "-k", "2",
                     "--rerank", str(bundle))
    hits = row["hits"]
    assert len(hits) == 2 and [h["rank"] for h in hits] == [1, 2]
    by_id = {h["id"]: h for h in plain}
    for h in hits:  # the retriever's rank and cosine are kept beside the cross-encoder's score
        assert h["retriever_rank"] == by_id[h["id"]]["rank"]
        assert h["retriever_score"] == pytest.approx(by_id[h["id"]]["score"])
    # the same candidates in one batch: the same scores; the order is their fusion with the cosines
    # (the bundle's retriever_weight 0.5), over all four candidates (rerank_depth 10 >= 4)
    direct = {r["text"]: r["score"] for r in no_torch("rerank", str(bundle), "--query", "where does anna diaz live ?",
                                                      *CANDIDATES)}
    assert all(direct[h["text"]] == pytest.approx(h["score"], abs=1e-4) for h in hits)
    fused = fuse_scores([direct[h["text"]] for h in plain], [h["score"] for h in plain], 0.5)
    best = np.argsort(-fused, kind="stable")[:2]
    assert [h["id"] for h in hits] == [plain[i]["id"] for i in best]
    assert [h["fused_score"] for h in hits] == pytest.approx(fused[best].tolist(), abs=1e-3)
    wrong = subprocess.run([*NO_TORCH, "search", str(tmp_path / "index"), "q", "--rerank", str(encoder)], cwd=ROOT,
                           capture_output=True, text=True, timeout=120)
    assert wrong.returncode == 2 and "cross-encoder" in wrong.stderr


@pytest.fixture(scope="module")
def rerank_server(bundle):
    with served(bundle) as base:
        yield base


def test_serve_reranks_over_http(rerank_server):
    status, body = post(rerank_server, "/rerank", {"query": "where does anna diaz live ?", "passages": CANDIDATES,
                                                   "top_k": 3})
    assert status == 200 and [r["rank"] for r in body["results"]] == [1, 2, 3]
    assert {r["text"] for r in body["results"]} <= set(CANDIDATES)
    assert all(CANDIDATES[r["index"]] == r["text"] for r in body["results"])
    best = body["results"][0]["text"]
    status, alone = post(rerank_server, "/rerank", {"query": "where does anna diaz live ?", "passages": [best]})
    status, scored = post(rerank_server, "/predict", {"text": "where does anna diaz live ?", "text_pair": best})
    assert status == 200 and scored["predictions"][0]["score"] == pytest.approx(alone["results"][0]["score"], abs=1e-4)
    assert post(rerank_server, "/rerank", {"query": "q", "passages": []})[0] == 422
    assert post(rerank_server, "/rerank", {"passages": ["p"]})[0] == 422
    # with the retriever's scores the order is the fused one; one score per passage or a clear 400
    status, body = post(rerank_server, "/rerank", {"query": "where does anna diaz live ?", "passages": CANDIDATES,
                                                   "retriever_scores": [0.9, 0.1, 0.5, 0.7]})
    assert status == 200 and [r["rank"] for r in body["results"]] == [1, 2, 3, 4]
    assert [r["fused_score"] for r in body["results"]] == sorted((r["fused_score"] for r in body["results"]),
                                                                 reverse=True)
    status, body = post(rerank_server, "/rerank", {"query": "q", "passages": CANDIDATES, "retriever_scores": [1.0]})
    assert status == 400 and "one per passage" in body["detail"]
    status, meta = post(rerank_server, "/metadata")
    assert meta["task"] == "cross-encoder" and meta["rerank_depth"] == 10
