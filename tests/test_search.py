"""The search stage on the tiny config, through the real CLI: killed with -9 between trials and
resumed (finished trials are not redone), every trial in search.json, MLflow and the benchmark's
report, the distill stage reusing the winner, a cached rerun, and an infeasible budget failing
`promote` with the best student found named."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from conftest import CLI, REPO_ROOT, cli_args, cli_status, copy_stages, run_cli

SEARCH = ("--set", "search.enabled=true", "--set", "search.space.layers=[1,2]",
          "--set", "search.space.intermediate_size=[32,64]", "--set", "search.space.max_tokens=[null,200,20]",
          "--set", "search.space.share_rows=[false,true]", "--set", "search.proxy_trials=4",
          "--set", "search.finalists=2", "--set", "search.proxy_fraction=0.5", "--set", "search.cpu_budget=100",
          "--set", "search.timing_rounds=2", "--set", "search.timing_iterations=5",
          # Students priced and scored with 4-bit embedding tables, the first dynamic recipe listed.
          "--set", "quantize.candidates=[{method: static, calibration: minmax}, "
          "{method: dynamic, embedding_bits: 4, embedding_block_size: 16}, {method: dynamic}]")


def journal_records(root: Path) -> int:
    """Trials the (running) search has finished, read from its Optuna journal (JSON lines; state 1
    is COMPLETE)."""
    found = list((root / "artifacts" / "search").glob(".work-*/study.journal"))
    return sum(f.read_text().count('"state":1,') for f in found)


@pytest.fixture(scope="module")
def searched(tiny_run, tmp_path_factory) -> Path:
    """The tiny search killed with -9 after its first trained trial, then run to the end."""
    root = tmp_path_factory.mktemp("search")
    copy_stages(tiny_run, root, ["data", "finetune"])  # the teacher: SEARCH does not change its key
    upstream = run_cli("run", "baseline", *SEARCH, root=root)
    assert "[finetune] running" not in upstream.stdout + upstream.stderr  # copied, not retrained
    cmd = [*CLI, *cli_args(root, "run", "search", *SEARCH)]
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    deadline = time.time() + 300
    while journal_records(root) < 1:
        assert proc.poll() is None, f"the search ended before it could be killed:\n{proc.stderr.read()[-3000:]}"
        assert time.time() < deadline, "no trial finished in 300 s"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not [p for p in (root / "artifacts" / "search").glob("*") if (p / "manifest.json").is_file()]
    before = json.loads(next((root / "artifacts" / "search").glob(".work-*/study.journal")).read_text()
                        .splitlines()[0])  # the journal is JSON lines
    assert before  # readable after the kill
    resumed = run_cli("run", "benchmark", *SEARCH, root=root)
    (root / "resumed.log").write_text(resumed.stdout + resumed.stderr)
    return root


def report(root: Path) -> tuple[Path, dict]:
    path = Path(cli_status(root, *SEARCH)["search"]["path"])
    return path, json.loads((path / "search.json").read_text())


def test_resumed_search_kept_the_trials_finished_before_the_kill(searched):
    _, result = report(searched)
    assert result["resumed_with_trials"] >= 1  # not started over
    proxies = [t for t in result["trials"] if t["phase"] == "proxy"]
    assert len(proxies) == 4
    assert len({json.dumps(t["params"], sort_keys=True) for t in proxies}) == 4  # no student tried twice
    # A vocabulary of 20 rows cannot hold the characters: such a student is skipped, not fatal.
    for bad in result["invalid"]:
        assert bad["params"]["max_tokens"] == 20 and "max_tokens=20" in bad["error"] or "same as trial" in bad["error"]


def test_search_report_lists_every_trial_with_costs_and_a_verdict(searched):
    path, result = report(searched)
    assert result["enabled"] and result["feasible"]
    finals = [t for t in result["trials"] if t["phase"] == "final"]
    assert finals and all(t["metric"] is not None and t["extra"]["fp32_metric"] is not None for t in finals)
    for t in result["trials"]:
        assert t["latency_ms"] > 0 and t["size_mb"] > 0 and t["speedup"] > 0
    chosen = result["chosen"]
    assert chosen["number"] in {t["number"] for t in finals}
    assert chosen["distill"]["student"]["keep_layers"] in ([0], [0, 2])
    assert (path / "winner" / "model.safetensors").is_file()
    assert result["pareto_front"] and "keeps the budget" in result["message"]
    assert result["cost_recipe"] == "dynamic-emb4-block16"


def test_the_search_prices_students_with_the_first_dynamic_recipe():
    from pipeline.config import QuantCandidate
    from stages.search import cost_recipe

    static, four, eight = (QuantCandidate(method="static"), QuantCandidate(embedding_bits=4),
                           QuantCandidate(per_channel=True))
    assert cost_recipe([static, four, eight]) is four
    assert cost_recipe([eight, four]) is eight
    assert cost_recipe([static]) == QuantCandidate()  # no dynamic recipe listed: plain dynamic INT8


def test_every_trial_is_a_nested_mlflow_run(searched):
    path, result = report(searched)
    manifest = json.loads((path / "manifest.json").read_text())
    client = MlflowClient(tracking_uri=f"sqlite:///{searched / 'mlflow.db'}")
    stage_run = client.get_run(manifest["mlflow_run_id"])
    children = client.search_runs([stage_run.info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{stage_run.info.run_id}'")
    names = {r.data.tags["trial"] for r in children}
    # Trials finished before the kill were logged under the killed attempt's run.
    finals = {f"final-{t['number']}" for t in result["trials"] if t["phase"] == "final"}
    assert finals <= names
    for run in children:
        if run.data.tags["trial"].startswith("final-"):
            assert "eval/accuracy" in run.data.metrics and "cost/latency_ms" in run.data.metrics
            assert run.data.params["phase"] == "final"


def test_distill_reuses_the_winner_and_the_benchmark_shows_the_search(searched):
    rows = cli_status(searched, *SEARCH)
    distill = json.loads((Path(rows["distill"]["path"]) / "manifest.json").read_text())
    _, result = report(searched)
    assert distill["info"]["search"]["number"] == result["chosen"]["number"]
    assert "student: the search's trained trial" in (searched / "resumed.log").read_text()
    bench = Path(rows["benchmark"]["path"])
    table = (bench / "results.md").read_text()
    assert "## Search: within budget" in table
    trial_rows = [line for line in table.splitlines() if line.startswith("| ") and " | proxy | " in line
                  or " | final | " in line or " | over-limit | " in line]
    assert len(trial_rows) == len(result["trials"])
    assert (bench / "search_pareto.png").stat().st_size > 1000
    assert json.loads((bench / "benchmark.json").read_text())["search"]["chosen"]["number"] == result["chosen"]["number"]


def test_second_run_is_all_cache_hits(searched):
    proc = run_cli("run", "benchmark", *SEARCH, root=searched)
    assert "running:" not in proc.stderr + proc.stdout
    assert {r["status"] for r in cli_status(searched, *SEARCH).values() if r["stage"] != "release"} == {"done"}


def test_a_budget_nobody_meets_fails_promote_naming_the_best_found(searched):
    # Full length of 2 steps: no student gets near the teacher; the pipeline still ships the best
    # one found (nothing is lost) but the search gate refuses to promote it.
    strict = (*SEARCH, "--set", "search.space.max_steps=[2]", "--set", "search.proxy_trials=2",
              "--set", "search.finalists=1")
    proc = run_cli("retrain", *strict, root=searched, check=False)
    assert proc.returncode == 3, proc.stdout[-2000:] + proc.stderr[-2000:]
    out = proc.stdout + proc.stderr
    assert "search_budget" in out and "no student met the budget" in out.replace("\n", " ")
