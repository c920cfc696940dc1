"""Tracking failures: an unreachable server is caught before any stage runs (or, if configured, the
run falls back to the local store and says so); a logging failure mid-run loses no stage output."""

from __future__ import annotations

import json
import time

import mlflow
from mlflow.tracking import MlflowClient

from conftest import free_port, run_cli
from pipeline.tracking import Tracker, check_reachable


def test_unreachable_server_fails_fast_before_any_work(tmp_path):
    uri = f"http://127.0.0.1:{free_port()}"
    start = time.monotonic()
    proc = run_cli("run", "data", root=tmp_path, env={"MLFLOW_TRACKING_URI": uri}, check=False)
    assert proc.returncode == 1
    message = " ".join(proc.stderr.split())
    assert f"the MLflow tracking store {uri} is unusable: cannot connect" in message
    assert "runtime.tracking_fallback=true" in message and "make mlflow-server" in message
    assert time.monotonic() - start < 60  # no minutes of client retries
    assert not (tmp_path / "artifacts" / "data").exists()  # nothing started


def test_fallback_logs_locally_and_says_so(tmp_path):
    uri = f"http://127.0.0.1:{free_port()}"
    proc = run_cli("run", "data", "--set", "runtime.tracking_fallback=true", root=tmp_path,
                   env={"MLFLOW_TRACKING_URI": uri})
    assert "tracking_fallback is on, so this run logs to sqlite:///" in " ".join(proc.stderr.split())
    local = tmp_path / "artifacts" / "mlflow.db"
    runs = MlflowClient(tracking_uri=f"sqlite:///{local}").search_runs(
        [MlflowClient(tracking_uri=f"sqlite:///{local}").get_experiment_by_name("bertpress-tiny").experiment_id])
    assert {r.data.tags.get("stage") for r in runs} >= {"data"}
    manifest = json.loads(next((tmp_path / "artifacts" / "data").glob("*/manifest.json")).read_text())
    assert manifest["tracking"] == {"uri": f"sqlite:///{local}", "failure": None}


def test_check_reachable_reports_sqlite_folder_problems(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert "cannot create" in check_reachable(f"sqlite:///{blocker / 'sub' / 'mlflow.db'}")
    assert check_reachable(f"sqlite:///{tmp_path / 'ok' / 'mlflow.db'}") is None


def test_logging_failure_mid_run_is_contained(tmp_path):
    # An experiment whose artifact store cannot be written (its root is under a regular file):
    # metrics still work, artifact logging fails, and the tracker carries on without raising.
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    mlflow.set_tracking_uri(uri)
    MlflowClient(uri).create_experiment("broken", artifact_location=(blocker / "artifacts").as_uri())
    tracker = Tracker(uri, "broken")
    report = tmp_path / "report.json"
    report.write_text("{}")
    with tracker.pipeline_run("p"):
        tracker.log_metrics({"a": 1.0})
        tracker.log_artifact(report)  # fails inside MLflow
        assert tracker.failure is not None and "log_artifact" in tracker.failure
        tracker.log_metrics({"b": 2.0})  # skipped, not raised
    assert report.read_text() == "{}"


def test_stage_output_survives_a_broken_artifact_store(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    MlflowClient(uri).create_experiment("bertpress-tiny", artifact_location=(blocker / "x").as_uri())
    proc = run_cli("run", "data", root=tmp_path)  # the tiny config's experiment, pre-created broken
    assert "MLflow logging failed" in " ".join(proc.stderr.split())
    manifest = json.loads(next((tmp_path / "artifacts" / "data").glob("*/manifest.json")).read_text())
    assert manifest["tracking"]["failure"].startswith("log_")
    assert (tmp_path / "artifacts" / "data" / manifest["key"] / "dataset").is_dir()
