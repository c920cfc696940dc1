"""Against a real `mlflow server` (sqlite backend, local artifact root, 127.0.0.1): the tiny pipeline
through release and promotion via MLFLOW_TRACKING_URI, then the champion read back by alias, by the
MLflow client and by `bertpress predict models:/...`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
from mlflow.tracking import MlflowClient

from bertpress.runtime import Model
from conftest import REPO_ROOT, free_port, run_cli, wait_until_serving

NAME = "bertpress-tiny"


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """The command `make mlflow-server` runs, on a free port."""
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
         "--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=root,
    )
    uri = f"http://127.0.0.1:{port}"
    wait_until_serving(f"{uri}/health", proc, timeout_s=120)
    yield uri, root
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


def test_pipeline_release_and_promotion_through_a_tracking_server(mlflow_server, tiny_run, tmp_path):
    uri, server_root = mlflow_server
    # The tiny pipeline's stage outputs (not its MLflow store): upstream stages are cache hits, the
    # release reruns so that it registers on this server.
    work = tmp_path / "tiny"
    shutil.copytree(tiny_run / "artifacts", work / "artifacts", ignore=shutil.ignore_patterns("mlflow.db", "mlartifacts"))
    env = {"MLFLOW_TRACKING_URI": uri}
    run_cli("run", "release", "--force", root=work, env=env)
    promoted = run_cli("promote", root=work, env=env)
    assert "promoted bertpress-tiny v1 to alias 'champion'" in promoted.stdout

    client = MlflowClient(tracking_uri=uri)
    champion = client.get_model_version_by_alias(NAME, "champion")
    assert str(champion.version) == "1"
    assert str(client.get_model_version_by_alias(NAME, "candidate").version) == "1"
    experiment = client.get_experiment_by_name(NAME)
    runs = client.search_runs([experiment.experiment_id])
    stages = {r.data.tags.get("stage") for r in runs}
    assert {"data", "finetune", "distill", "export", "quantize", "benchmark", "release"} <= stages
    # Artifacts went through the server's proxy into its artifact root, not into the client's cwd.
    assert any((server_root / "artifacts").rglob("SHA256SUMS"))

    # Read back by alias: in-process, and through the CLI.
    model = Model.load(f"models:/{NAME}@champion", tracking_uri=uri, cache_dir=tmp_path / "downloads")
    expected = model.predict(["an utterly wonderful film"])[0]
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "predict", f"models:/{NAME}@champion", "an utterly wonderful film"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
        env={**os.environ, "MLFLOW_TRACKING_URI": uri, "BERTPRESS_CACHE": str(tmp_path / "cache")},
    )
    assert proc.returncode == 0, proc.stderr
    row = json.loads(proc.stdout)
    assert row["label"] == expected["label"]
    assert row["score"] == pytest.approx(expected["score"], abs=1e-6)
