"""finetune under `torchrun --nproc_per_node 2` and distill under `accelerate launch` (2 CPU
processes, gloo): DDP halves the steps per process, only rank 0 writes and logs."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

from mlflow.tracking import MlflowClient

from conftest import REPO_ROOT, cli_args, cli_status

VENV_BIN = Path(sys.executable).parent


def launch(launcher: list[str], root: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [*launcher, "-m", "pipeline.cli", *cli_args(root, *args)]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def test_two_process_training_writes_once_and_logs_once(tmp_path):
    torchrun = [str(VENV_BIN / "torchrun"), "--standalone", "--nproc_per_node", "2"]
    proc = launch(torchrun, tmp_path, "run", "finetune")
    assert "rank 1 training alongside rank 0" in " ".join(proc.stderr.split())
    status = cli_status(tmp_path)
    finetune = json.loads((Path(status["finetune"]["path"]) / "manifest.json").read_text())
    assert finetune["world_size"] == 2
    assert finetune["metrics"]["test/accuracy"] > 0.6

    # Each step consumed 2 x batch_size examples: half the single-process step count.
    data = json.loads((Path(status["data"]["path"]) / "manifest.json").read_text())
    train_examples = int(data["metrics"]["data/train_examples"])
    expected_steps = math.ceil(train_examples / (16 * 2)) * 16  # tiny: batch 16, 16 epochs
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("bertpress-tiny")
    runs = client.search_runs([experiment.experiment_id])
    stage_runs = [r for r in runs if r.data.tags.get("stage") == "finetune"]
    assert len(stage_runs) == 1  # rank 1 logged nothing
    steps = [m.step for m in client.get_metric_history(stage_runs[0].info.run_id, "train/loss")]
    assert expected_steps - 16 <= max(steps) <= expected_steps
    # Rank 1 trained into a private directory, removed afterwards.
    assert not list((tmp_path / "artifacts" / "finetune").glob(".rank*"))

    accelerate = [str(VENV_BIN / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2",
                  "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    launch(accelerate, tmp_path, "run", "distill")
    distill = json.loads((Path(cli_status(tmp_path)["distill"]["path"]) / "manifest.json").read_text())
    assert distill["world_size"] == 2 and distill["inputs"]["finetune"]["key"] == finetune["key"]
    assert len([r for r in client.search_runs([experiment.experiment_id])
                if r.data.tags.get("stage") == "distill"]) == 1
