"""Two bertpress processes on one artifacts directory: a lock per (stage, key), wait or fail."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import CLI, REPO_ROOT, cli_args, cli_status
from pipeline.locks import stage_lock
from pipeline.stage import StageError

HOLD = """
import sys, time
from pathlib import Path
from pipeline.locks import stage_lock
with stage_lock(Path(sys.argv[1]), "distill", "abc"):
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def hold_lock(stage_dir: Path, seconds: float) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(stage_dir), str(seconds)], cwd=REPO_ROOT,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_fail_mode_names_the_holder(tmp_path):
    holder = hold_lock(tmp_path, 30)
    try:
        with pytest.raises(StageError, match=rf"being built by pid {holder.pid}.*runtime.lock=wait"), \
                stage_lock(tmp_path, "distill", "abc", mode="fail"):
            pass
        # Another key is not blocked.
        with stage_lock(tmp_path, "distill", "other", mode="fail"):
            pass
    finally:
        holder.kill()
        holder.wait()


def test_wait_mode_times_out_or_gets_the_lock(tmp_path):
    holder = hold_lock(tmp_path, 2)
    with pytest.raises(StageError, match="gave up after"), \
            stage_lock(tmp_path, "distill", "abc", timeout_s=0.3, poll_s=0.1):
        pass
    start = time.monotonic()
    with stage_lock(tmp_path, "distill", "abc", poll_s=0.1):
        waited = time.monotonic() - start
    holder.wait()
    assert waited > 0.5


def test_a_killed_holder_releases_the_lock(tmp_path):
    holder = hold_lock(tmp_path, 60)
    holder.kill()  # SIGKILL: no cleanup code runs, the kernel drops the flock
    holder.wait()
    with stage_lock(tmp_path, "distill", "abc", mode="fail"):
        pass


def test_two_pipelines_on_one_directory_build_each_stage_once(tmp_path):
    args = [*CLI, *cli_args(tmp_path, "run", "all")]
    first = subprocess.Popen(args, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(1.0)
    second = subprocess.Popen(args, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    outs = [p.communicate(timeout=600) for p in (first, second)]
    for proc, (_out, err) in zip((first, second), outs, strict=True):
        assert proc.returncode == 0, err[-3000:]
    # Every stage finished exactly once: one committed directory per stage, nothing half-written.
    status = cli_status(tmp_path)
    for stage, row in status.items():
        assert row["status"] == "done", stage
        stage_dir = Path(row["path"]).parent
        assert [p.name for p in stage_dir.iterdir() if p.is_dir()] == [row["key"]]
        manifest = json.loads((Path(row["path"]) / "manifest.json").read_text())
        assert manifest["key"] == row["key"]
    ran = [line for out, _ in outs for line in out.splitlines() if "│ ran " in line or "| ran " in line]
    assert len(ran) == len(status)  # each stage ran in one process and was a cache hit in the other
