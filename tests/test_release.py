"""The release stage's registration, and promotion through the quality gates (exit codes, reports,
aliases) on a copy of the tiny pipeline's artifacts and MLflow store."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from bertpress.runtime import BUNDLE_URI_TAG, Model
from conftest import cli_status, run_cli

NAME = "bertpress-tiny"
GATE_FAILED = 3


@pytest.fixture(scope="module")
def registry(tiny_run, tmp_path_factory) -> Path:
    """A private copy: promotion moves aliases, which other modules must not see."""
    root = tmp_path_factory.mktemp("registry") / "tiny"
    shutil.copytree(tiny_run, root)
    # The copied release names the original store; releasing again registers v2 in this one.
    run_cli("run", "release", "--force", root=root)
    return root


def client(root: Path) -> MlflowClient:
    return MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")


def release_manifest(root: Path) -> dict:
    return json.loads((Path(cli_status(root)["release"]["path"]) / "manifest.json").read_text())


def test_release_registers_an_onnx_model_with_signature_and_alias_candidate(tiny_run):
    import mlflow

    registered = release_manifest(tiny_run)["info"]["registered_model"]
    assert registered["name"] == NAME and registered["alias"] == "candidate"
    mlflow_client = client(tiny_run)
    version = mlflow_client.get_model_version_by_alias(NAME, "candidate")
    assert str(version.version) == registered["version"]
    assert version.tags[BUNDLE_URI_TAG] == f"runs:/{version.run_id}/bundle"
    mlflow.set_tracking_uri(f"sqlite:///{tiny_run / 'mlflow.db'}")
    info = mlflow.models.get_model_info(f"models:/{NAME}/{version.version}")
    assert "onnx" in info.flavors
    inputs = {spec.name for spec in info.signature.inputs.inputs}
    assert inputs == {"input_ids", "attention_mask", "token_type_ids"}
    assert {spec.name for spec in info.signature.outputs.inputs} >= {"logits", "pooled"}
    assert info.saved_input_example_info is not None
    # The bundle itself is in the same run.
    files = {a.path for a in mlflow_client.list_artifacts(version.run_id, "bundle")}
    assert {"bundle/model.onnx", "bundle/SHA256SUMS", "bundle/bundle.json"} <= files


def test_release_rescored_the_bundle_through_the_runtime(tiny_run):
    manifest = release_manifest(tiny_run)
    bench = json.loads((Path(cli_status(tiny_run)["benchmark"]["path"]) / "manifest.json").read_text())
    # Both score the INT8 graph one text at a time (dynamic INT8 scales depend on the batch), so
    # the torch-free runtime agrees with the benchmark exactly.
    assert manifest["metrics"]["release/runtime_test_accuracy"] == pytest.approx(
        bench["metrics"]["bench/student-int8/test_accuracy"], abs=1e-9)


def test_first_promotion_then_a_failed_gate_then_a_pass(registry):
    # 1. No champion yet: only the floors apply, the candidate becomes champion. (Version numbers
    #    depend on how often the shared tiny run was released before the copy: read them.)
    first_version = release_manifest(registry)["info"]["registered_model"]["version"]
    first = run_cli("promote", root=registry)
    assert f"promoted bertpress-tiny v{first_version} to alias 'champion'" in first.stdout
    mlflow_client = client(registry)
    assert str(mlflow_client.get_model_version_by_alias(NAME, "champion").version) == first_version
    report = json.loads((registry / "artifacts" / "gates" / "latest.json").read_text())
    assert report["passed"] and report["champion"] is None

    # 2. A new candidate that fails a gate: exit 3, the report says which gate and by how much,
    #    the champion stays where it was.
    run_cli("run", "release", "--force", root=registry)
    second_version = str(int(first_version) + 1)
    assert str(mlflow_client.get_model_version_by_alias(NAME, "candidate").version) == second_version
    failed = run_cli("promote", "--set", "gates.max_size_mb=0.001", root=registry, check=False)
    assert failed.returncode == GATE_FAILED, failed.stderr
    assert "max_size_mb" in failed.stdout and "FAIL" in failed.stdout
    assert "stays a candidate" in " ".join(failed.stdout.split())
    assert str(mlflow_client.get_model_version_by_alias(NAME, "champion").version) == first_version
    assert mlflow_client.get_model_version(NAME, second_version).tags["gate.status"] == "failed"
    report = json.loads((registry / "artifacts" / "gates" / "latest.json").read_text())
    assert not report["passed"] and report["champion"]["version"] == first_version
    size_gate = next(g for g in report["gates"] if g["gate"] == "max_size_mb")
    assert not size_gate["passed"] and size_gate["value"] > size_gate["limit"] == 0.001
    markdown = (registry / "artifacts" / "gates" / "latest.md").read_text()
    assert "FAILED: champion unchanged" in markdown and "| max_size_mb | FAIL |" in markdown

    # 3. The same candidate with the configured gates: compared with the champion, promoted.
    passed = run_cli("promote", root=registry)
    assert "max_metric_drop" in passed.stdout and "max_latency_increase" in passed.stdout
    assert str(mlflow_client.get_model_version_by_alias(NAME, "champion").version) == second_version

    # The champion as production loads it: by alias, from the registry.
    model = Model.load(f"models:/{NAME}@champion", tracking_uri=f"sqlite:///{registry / 'mlflow.db'}",
                       cache_dir=registry / "downloads")
    assert model.labels == ["negative", "neutral", "positive"]
    assert model.predict(["an utterly wonderful film"])[0]["label"] in model.labels


def test_retrain_returns_the_gate_exit_code(registry):
    proc = run_cli("retrain", "--set", "gates.max_size_mb=0.001", root=registry, check=False)
    assert proc.returncode == GATE_FAILED
    assert "cached" in proc.stdout  # nothing changed: the pipeline part was all cache hits


def test_promote_before_release_says_what_to_run(tmp_path):
    proc = run_cli("promote", root=tmp_path, check=False)
    assert proc.returncode == 1
    assert "run `bertpress run release`" in " ".join(proc.stderr.split())
