"""The production install for real: a fresh venv with `bertpress[cpu,serve]` (no torch, no
transformers), predicting from the tiny bundle. Slow: pip builds the package and installs
onnxruntime, tokenizers, numpy, fastapi and uvicorn (from pip's cache when warm)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO_ROOT

pytestmark = pytest.mark.slow


def dir_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 1e6


def test_torch_free_install_predicts(tiny_bundle, tmp_path):
    venv = tmp_path / "runtime"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "-q", "-c", str(REPO_ROOT / "constraints.txt"),
                    f"{REPO_ROOT}[cpu,serve]"], check=True, timeout=900)
    for heavy in ("torch", "transformers", "mlflow", "datasets"):
        probe = subprocess.run([str(python), "-c", f"import {heavy}"], capture_output=True)
        assert probe.returncode != 0, f"{heavy} is importable in the runtime install"
    proc = subprocess.run([str(venv / "bin" / "bertpress"), "predict", str(tiny_bundle), "an utterly wonderful film"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["label"] in ("negative", "neutral", "positive")
    # A pipeline command in the runtime install: one line naming the extras, no traceback.
    proc = subprocess.run([str(venv / "bin" / "bertpress"), "run", "all"], capture_output=True, text=True,
                          cwd=tmp_path, timeout=120)
    assert proc.returncode != 0
    assert "bertpress[train]" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    size = dir_mb(venv)
    print(f"\ntorch-free runtime venv: {size:.0f} MB")
    assert size < 400  # the training venv is several GB; this one must stay small
