"""Named-entity recognition through every stage on the tiny NER config (a random BERT, synthetic
CoNLL data with sentences longer than max_length): real outputs of each stage, a second run of
all cache hits, the bundle predicting with torch blocked, `serve` answering NER requests, and the
gates deciding on entity F1."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from conftest import (
    TINY_NER,
    assert_rerun_is_all_cache_hits,
    cli_status,
    run_cli,
    served,
)
from conftest import http_call as post
from conftest import no_torch_rows as no_torch
from conftest import stage_manifest as manifest

LABELS = ["O", "B-location", "I-location", "B-organization", "I-organization", "B-person", "I-person"]


@pytest.fixture(scope="module")
def rows(tiny_ner_run) -> dict[str, dict]:
    return cli_status(tiny_ner_run, config=TINY_NER)


def test_data_stage_normalises_tags_and_counts_windows(rows):
    path, _ = manifest(rows, "data")
    report = json.loads((path / "data_report.json").read_text())
    assert report["task"] == "token-classification" and report["tag_scheme"] == "iob2"
    assert list(json.loads((path / "labels.json").read_text())["id2label"].values()) == LABELS
    assert set(report["entity_counts"]["train"]) == {"location", "organization", "person"}
    # Long sentences are read as several windows, not cut: windows outnumber sentences.
    for split in ("train", "validation", "test"):
        assert report["long_sentences"][split] > 0
        assert report["windows"][split] > rows["data"]["metrics"][f"data/{split}_examples"]


@pytest.mark.parametrize("stage", ["finetune", "distill"])
def test_training_stages_learn_entities(rows, stage):
    _, m = manifest(rows, stage)
    assert m["metrics"]["test/entity_f1"] > 0.8
    for name in ("entity_precision", "entity_recall", "token_accuracy", "f1_person"):
        assert 0 <= m["metrics"][f"test/{name}"] <= 1


def test_export_has_per_token_parity_and_fusions(rows):
    path, m = manifest(rows, "export")
    for role in ("teacher", "student"):
        for variant in ("onnx", "fused"):
            assert m["metrics"][f"{role}/{variant}_max_abs_diff"] < 1e-4
            assert m["info"]["parity"][f"{role}_{variant}"]["argmax_changes"] == 0
        assert m["info"]["fused_ops"][role]["Attention"] >= 2
    session = ort.InferenceSession(str(path / "student" / "model_fused.onnx"), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["logits", "sequence", "hidden_states"]
    for batch, length in ((1, 5), (3, 17)):
        feed = {i.name: np.ones((batch, length), dtype=np.int64) for i in session.get_inputs()}
        assert session.run(["logits"], feed)[0].shape == (batch, length, len(LABELS))


def test_int8_is_selected_on_entity_f1(rows):
    path, m = manifest(rows, "quantize")
    report = json.loads((path / "quantize_report.json").read_text())
    assert report["primary_metric"] == "entity_f1"
    chosen = report["candidates"][report["selected"]]
    assert chosen["within_tolerance"] and chosen["metric_drop"] <= 0.01 + 1e-9
    assert len(chosen["latency"]["rounds_p50_ms"]) == 5  # interleaved timing rounds
    ops = {n.op_type for n in onnx.load(str(path / "student_int8" / "model.onnx")).graph.node}
    assert {"MatMulInteger", "DynamicQuantizeLinear"} <= ops or "QuantizeLinear" in ops
    assert "val/int8_entity_f1" in m["metrics"]


def test_benchmark_has_the_stock_token_classifier_and_entity_metrics(rows):
    path, _ = manifest(rows, "benchmark")
    report = json.loads((path / "benchmark.json").read_text())
    assert report["task"] == "token-classification" and report["primary_metric"] == "entity_f1"
    assert set(report["variants"]) >= {"teacher-pytorch", "teacher-stock-int8", "student-onnx", "student-int8"}
    for r in report["variants"].values():
        assert r["entity_f1"] > 0.8 and r["latency_real"]["p50_ms"] > 0
    v = report["variants"]
    assert v["student-onnx"]["entity_f1"] == pytest.approx(v["student-pytorch"]["entity_f1"])
    # Entity F1 from resampled sentences' (tp, fp, fn): an interval around each variant's gap
    gap = v["student-int8"]["gap_to_teacher"]
    assert gap["gap"] == pytest.approx(v["teacher-pytorch"]["entity_f1"] - v["student-int8"]["entity_f1"])
    assert gap["low"] <= gap["gap"] <= gap["high"] and gap["examples"] == report["test_examples"]
    assert "| test entity F1 | test precision | test recall |" in (path / "results.md").read_text()
    baseline_path, _ = manifest(rows, "baseline")
    stock = ort.InferenceSession(str(next((baseline_path / "int8").glob("*.onnx"))), providers=["CPUExecutionProvider"])
    feed = {i.name: np.ones((2, 9), dtype=np.int64) for i in stock.get_inputs()}
    assert stock.run(None, feed)[0].shape == (2, 9, len(LABELS))  # Optimum's token classifier


def test_second_run_is_all_cache_hits(tiny_ner_run, rows):
    assert_rerun_is_all_cache_hits(tiny_ner_run, TINY_NER, "bertpress-tiny-ner", rows)


def test_bundle_predicts_entities_without_torch(tiny_ner_bundle):
    meta = json.loads((tiny_ner_bundle / "bundle.json").read_text())
    assert meta["task"] == "token-classification" and meta["labels"] == LABELS
    assert meta["aggregation"] == "first" and meta["stride"] == 8
    text = "  Erin Mae Holt   visited Paris yesterday ,  and Erin met Bob Stone at Acme ."
    [row] = no_torch("predict", str(tiny_ner_bundle), text)
    entities = row["entities"]
    assert all(text[e["start"]:e["end"]] == e["text"] for e in entities)
    found = {(e["type"], e["text"]) for e in entities}
    assert {("person", "Erin Mae Holt"), ("location", "Paris"), ("person", "Bob Stone")} <= found
    # Repeated words: each occurrence has its own offsets.
    erins = [e["start"] for e in entities if e["text"].startswith("Erin")]
    assert erins == sorted(set(erins)) and len(erins) == 2
    [words] = no_torch("predict", str(tiny_ner_bundle), "--words", "Alice visited New York")
    assert {(e["type"], e["text"], e["start"], e["end"]) for e in words["entities"]} >= {
        ("person", "Alice", 0, 5), ("location", "New York", 14, 22)}


def test_long_text_is_read_in_windows_not_cut(tiny_ner_bundle):
    """An entity past max_length (32 tokens) is still found, with offsets into the whole text."""
    filler = " ".join(["nothing happened today ,"] * 10)  # ~40 tokens before the entity
    text = f"{filler} Farid visited Oslo ."
    [row] = no_torch("predict", str(tiny_ner_bundle), text)
    found = {(e["type"], e["text"], e["start"]) for e in row["entities"]}
    assert ("person", "Farid", text.index("Farid")) in found
    assert ("location", "Oslo", text.index("Oslo")) in found


def test_aggregation_strategies_from_the_cli(tiny_ner_bundle):
    text = "Carla Diaz visited Kyoto ."
    by_strategy = {s: no_torch("predict", str(tiny_ner_bundle), text, "--aggregation", s)[0]["entities"]
                   for s in ("none", "simple", "first", "average", "max")}
    assert all(e["tag"].startswith(("B-", "I-")) and "index" in e for e in by_strategy["none"])
    assert {e["text"] for e in by_strategy["first"]} >= {"Carla Diaz", "Kyoto"}


@pytest.fixture(scope="module")
def ner_server(tiny_ner_bundle):
    with served(tiny_ner_bundle) as base:
        yield base


def test_serve_answers_ner_requests(ner_server):
    status, body = post(ner_server, "/predict", {"texts": ["Alice visited Paris .", "nothing happened today ."]})
    assert status == 200
    first, second = body["predictions"]
    assert {(e["type"], e["text"]) for e in first["entities"]} >= {("person", "Alice"), ("location", "Paris")}
    assert second["entities"] == []
    status, body = post(ner_server, "/predict", {"words": [["Bob", "Stone", "visited", "Lagos"]],
                                                 "aggregation": "simple"})
    assert status == 200 and {e["text"] for e in body["predictions"][0]["entities"]} >= {"Lagos"}
    status, body = post(ner_server, "/predict", {"text": "x", "aggregation": "best"})
    assert status == 422


def test_promote_decides_on_entity_f1(tiny_ner_run, rows):
    proc = run_cli("promote", root=tiny_ner_run, config=TINY_NER, check=False)
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tiny_ner_run / "artifacts" / "gates" / "latest.json").read_text())
    assert report["promoted"] and report["candidate"]["metric_name"] == "entity_f1"
    assert any(g["gate"] == "min_metric" and "entity_f1" in g["detail"] for g in report["gates"])
    strict = run_cli("promote", "--set", "gates.min_metric=1.01", root=tiny_ner_run, config=TINY_NER, check=False)
    assert strict.returncode == 2  # 1.01 is not a valid floor: a config error
    failed = run_cli("promote", "--set", "gates.max_size_mb=0.0001", root=tiny_ner_run, config=TINY_NER,
                     check=False)
    assert failed.returncode == 3 and "Traceback" not in failed.stderr


def test_a_vocabulary_budget_student_learns_from_word_level_targets(tiny_ner_run, rows):
    """Under a budget the student splits words into other pieces than its teacher: the teacher's
    targets are matched to words, not pieces, and the student still learns the entities."""
    overrides = ("--set", "distill.trim_vocab.max_tokens=100", "--set", "distill.intermediate.hidden_weight=0",
                 "--set", "distill.intermediate.attention_weight=0", "--set", "distill.epochs=6")
    run_cli("run", "export", *overrides, root=tiny_ner_run, config=TINY_NER)
    budget = cli_status(tiny_ner_run, *overrides, config=TINY_NER)
    _, m = manifest(budget, "distill")
    report = m["info"]["trim_vocab"]
    assert report["kept"] == 100 < report["original"] and report["validation"]["changed_share"] > 0
    assert m["metrics"]["test/entity_f1"] > 0.8
    assert budget["export"]["metrics"]["student/fused_max_abs_diff"] < 1e-4
