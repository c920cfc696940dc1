"""Extractive question answering through every stage on the tiny QA config (a random BERT, a small
SQuAD-format file with paragraphs longer than max_length): real outputs of each stage, a second run
of all cache hits, the bundle answering with torch blocked (answers in later windows, offsets into
the context), `serve` answering questions, and the gates deciding on F1."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from conftest import (
    NO_TORCH,
    TINY_QA,
    assert_rerun_is_all_cache_hits,
    cli_status,
    run_cli,
    served,
)
from conftest import http_call as post
from conftest import no_torch_rows as no_torch
from conftest import stage_manifest as manifest

ROOT = Path(__file__).resolve().parents[1]
FILLER = " ".join(["the weather was mild that year ."] * 12)  # ~90 tokens: past a 64-token window


@pytest.fixture(scope="module")
def rows(tiny_qa_run) -> dict[str, dict]:
    return cli_status(tiny_qa_run, config=TINY_QA)


@pytest.fixture(scope="module")
def bundle(rows) -> Path:
    return Path(rows["release"]["path"]) / "bundle"


def test_data_stage_splits_articles_and_reads_long_contexts_in_windows(rows):
    path, _ = manifest(rows, "data")
    report = json.loads((path / "data_report.json").read_text())
    assert report["task"] == "question-answering" and report["id2label"] == {"0": "start", "1": "end"}
    assert report["articles"] == {"train": 16, "validation": 4, "test": 10}
    assert report["questions"]["test"] == 60
    # the long test paragraphs need more than one window each; nothing is cut off
    assert report["windows"]["test"] > report["questions"]["test"]
    assert report["answer_outside_every_window"]["test"] == 0


@pytest.mark.parametrize("stage", ["finetune", "distill"])
def test_training_stages_learn_to_answer(rows, stage):
    _, m = manifest(rows, stage)
    assert m["metrics"]["test/f1"] > 0.6  # a random model scores ~0
    assert 0 <= m["metrics"]["test/exact_match"] <= m["metrics"]["test/f1"] + 1e-9


def test_teacher_trains_on_its_sample_and_the_student_on_every_question(rows):
    _, teacher = manifest(rows, "finetune")
    _, student = manifest(rows, "distill")
    # finetune.max_train_samples: 84 of the 96 train questions (all in one window each at this length)
    assert teacher["metrics"]["train/rows"] == 84
    assert student["info"]["train_rows"] == 96


def test_distillation_under_a_vocabulary_budget(rows):
    _, m = manifest(rows, "distill")
    report = m["info"]["trim_vocab"]
    # every piece the texts use, renumbered: the teacher's targets were computed on the student's ids
    assert report["kept"] == 127 < report["original"]


def test_export_has_start_end_parity_and_fusions(rows):
    path, m = manifest(rows, "export")
    for role in ("teacher", "student"):
        for variant in ("onnx", "fused"):
            assert m["metrics"][f"{role}/{variant}_max_abs_diff"] < 1e-4
        assert m["info"]["fused_ops"][role]["Attention"] >= 2
    session = ort.InferenceSession(str(path / "student" / "model_fused.onnx"), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["logits", "sequence"]
    for batch, length in ((1, 5), (3, 17)):
        feed = {i.name: np.ones((batch, length), dtype=np.int64) for i in session.get_inputs()}
        assert session.run(["logits"], feed)[0].shape == (batch, length, 2)  # start, end per token


def test_int8_is_selected_on_f1_with_integer_ops(rows):
    path, m = manifest(rows, "quantize")
    report = json.loads((path / "quantize_report.json").read_text())
    assert report["primary_metric"] == "f1"
    assert set(report["candidates"]) == {"dynamic", "static-minmax"}  # the static recipe is tried too
    chosen = report["candidates"][report["selected"]]
    assert chosen["within_tolerance"] and "exact_match" in chosen
    ops = {n.op_type for n in onnx.load(str(path / "student_int8" / "model.onnx")).graph.node}
    assert {"MatMulInteger", "DynamicQuantizeLinear"} <= ops or "QuantizeLinear" in ops


def test_benchmark_has_the_stock_optimum_qa_model_and_squad_metrics(rows):
    path, _ = manifest(rows, "benchmark")
    report = json.loads((path / "benchmark.json").read_text())
    assert report["task"] == "question-answering" and report["primary_metric"] == "f1"
    v = report["variants"]
    assert set(v) >= {"teacher-pytorch", "teacher-stock-int8", "student-onnx", "student-int8"}
    for r in v.values():
        assert 0 <= r["exact_match"] <= r["f1"] <= 1 and r["latency_real"]["p50_ms"] > 0
    assert v["teacher-stock-int8"]["f1"] > 0.5  # Optimum's start/end outputs, read by the same span search
    assert v["student-onnx"]["f1"] == pytest.approx(v["student-pytorch"]["f1"])
    assert "| test F1 | test EM |" in (path / "results.md").read_text()
    gap = v["student-int8"]["gap_to_teacher"]  # F1 is a mean over questions: an interval around its gap
    assert gap["gap"] == pytest.approx(v[report["baseline"]]["f1"] - v["student-int8"]["f1"])
    assert gap["low"] <= gap["gap"] <= gap["high"] and "## Gap to" in (path / "results.md").read_text()
    baseline_path, _ = manifest(rows, "baseline")
    stock = ort.InferenceSession(str(next((baseline_path / "int8").glob("*.onnx"))), providers=["CPUExecutionProvider"])
    assert {o.name for o in stock.get_outputs()} == {"start_logits", "end_logits"}


def test_second_run_is_all_cache_hits(tiny_qa_run, rows):
    assert_rerun_is_all_cache_hits(tiny_qa_run, TINY_QA, "bertpress-tiny-qa", rows)


def test_bundle_answers_without_torch_from_a_later_window(bundle, rows):
    meta = json.loads((bundle / "bundle.json").read_text())
    assert meta["task"] == "question-answering" and meta["doc_stride"] == 16 and meta["max_answer_length"] == 12
    context = f"{FILLER} omar works as a pilot . omar lives in lima . the market opened early on monday ."
    [row] = no_torch("predict", str(bundle), "--question", "where does omar live ?", "--context", context)
    # The filler holds no city or job: an answer from the facts was read past the first window
    # (the tiny student does not always tell "live" from "work" apart; both facts count).
    assert row["answer"] in ("lima", "pilot") and context[row["start"]:row["end"]] == row["answer"]
    assert row["start"] > len(FILLER)
    [top] = no_torch("predict", str(bundle), "--question", "what does omar work as ?", "--context", context,
                     "--top-k", "3")
    assert len(top["answers"]) == 3 and top["answers"][0]["answer"] == top["answer"]
    assert all(context[a["start"]:a["end"]] == a["answer"] for a in top["answers"])
    assert [a["score"] for a in top["answers"]] == sorted((a["score"] for a in top["answers"]), reverse=True)


def test_predict_reads_question_context_rows(bundle, tmp_path):
    rows_file = tmp_path / "qs.jsonl"
    rows_file.write_text("\n".join(json.dumps(r) for r in [
        {"question": "where does nina live ?", "context": "nina lives in oslo . nina works as a chef ."},
        {"question": "what does nina work as ?", "context": "nina lives in oslo . nina works as a chef ."}]))
    answers = no_torch("predict", str(bundle), "--input", str(rows_file))
    assert {a["answer"] for a in answers} <= {"oslo", "chef"} and len(answers) == 2
    proc = subprocess.run([*NO_TORCH, "predict", str(bundle), "just a text"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode != 0 and "--question Q --context C" in proc.stderr


@pytest.fixture(scope="module")
def qa_server(bundle):
    with served(bundle) as base:
        yield base


def test_serve_answers_questions(qa_server):
    context = "tara lives in hanoi . tara works as a nurse ."
    status, body = post(qa_server, "/predict", {"question": "where does tara live ?", "context": context})
    assert status == 200 and body["predictions"][0]["answer"] in ("hanoi", "nurse")
    status, body = post(qa_server, "/predict", {"questions": ["what does tara work as ?"] * 2,
                                                "contexts": [context, f"{FILLER} {context}"], "top_k": 2})
    assert status == 200 and len(body["predictions"]) == 2
    # the second context is the first behind ~90 filler tokens: its answer is read past window one
    for p, text in zip(body["predictions"], [context, f"{FILLER} {context}"], strict=True):
        assert text[p["start"]:p["end"]] == p["answer"] and ("hanoi" in p["answer"] or "nurse" in p["answer"])
    assert all(len(p["answers"]) == 2 for p in body["predictions"])
    assert post(qa_server, "/predict", {"texts": ["no question"]})[0] == 400
    assert post(qa_server, "/predict", {"question": "where?"})[0] == 422  # no context
    status, meta = post(qa_server, "/metadata")
    assert meta["task"] == "question-answering" and meta["doc_stride"] == 16


def test_promote_decides_on_f1(tiny_qa_run):
    proc = run_cli("promote", root=tiny_qa_run, config=TINY_QA, check=False)
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tiny_qa_run / "artifacts" / "gates" / "latest.json").read_text())
    assert report["promoted"] and report["candidate"]["metric_name"] == "f1"
    failed = run_cli("promote", "--set", "gates.min_metric=0.99", root=tiny_qa_run, config=TINY_QA, check=False)
    assert failed.returncode == 3 and "f1" in failed.stdout + failed.stderr
