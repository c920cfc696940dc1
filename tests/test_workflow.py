"""The shipped retraining workflow: triggers, caches, the command it runs and what it uploads."""

from __future__ import annotations

import yaml

from conftest import REPO_ROOT

WORKFLOW = REPO_ROOT / ".github" / "workflows" / "retrain.yml"


def test_retrain_workflow_shape():
    workflow = yaml.safe_load(WORKFLOW.read_text())
    triggers = workflow[True]  # YAML 1.1 reads the key `on` as True
    assert {"push", "schedule", "workflow_dispatch"} <= set(triggers)
    assert "configs/**" in triggers["push"]["paths"]
    steps = workflow["jobs"]["retrain"]["steps"]
    runs = [s.get("run", "") for s in steps]
    assert any(r.startswith("make retrain") for r in runs)
    cached = [s["with"]["path"] for s in steps if s.get("uses", "").startswith("actions/cache")]
    assert ".venv" in cached and any("artifacts" in p for p in cached)
    upload = next(s for s in steps if s.get("uses", "").startswith("actions/upload-artifact"))
    assert upload["if"] == "always()" and "artifacts/gates/latest.md" in upload["with"]["path"]
    assert workflow["env"]["MLFLOW_TRACKING_URI"] == "${{ secrets.MLFLOW_TRACKING_URI }}"


def test_makefile_retrain_target_calls_the_cli():
    makefile = (REPO_ROOT / "Makefile").read_text()
    assert "retrain: setup\n\t$(BP) retrain $(ARGS)" in makefile
    assert "mlflow-server: setup" in makefile
