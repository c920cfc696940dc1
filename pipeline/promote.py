"""`bertpress promote`: check the released candidate against the champion and the floors; move the
`champion` alias only when every gate passes. Never cached: the registry can change between runs.

Both models are measured now, by the torch-free runtime, on the current test split and the same
sentences (interleaved timing), so the comparison is a ratio from one run on one machine.
A failed gate changes nothing in the registry except a `gate.status` tag on the candidate version.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.cache import ArtifactStore
from pipeline.config import PipelineConfig
from pipeline.gates import GateResult, Measurement, as_dict, check_gates, render_report
from pipeline.registry import PRODUCER
from pipeline.runner import plan
from pipeline.stage import StageError
from pipeline.tracking import open_tracker

log = logging.getLogger("bertpress.promote")
CHAMPION_ALIAS = "champion"


@dataclass
class PromotionOutcome:
    promoted: bool
    name: str
    version: str
    results: list[GateResult]
    report_path: Path
    already_champion: bool = False


def _measure(models: dict, test, task, cfg: PipelineConfig) -> dict[str, tuple[float, float]]:
    """(primary test metric, batch-1 p50 ms) of each model, scored by its task through the runtime
    (batch 1, as the release stage scored it and as a production request runs)."""
    from bertpress.evaluate import batch1_latencies

    sample = task.timing_inputs(test)[: cfg.gates.latency_samples]
    times = batch1_latencies(models, sample, rounds=cfg.gates.latency_rounds)
    return {name: (task.score_bundle(model, test)[task.primary_metric], float(np.median(times[name])))
            for name, model in models.items()}


def search_gate(planned) -> list[GateResult]:
    """With the search on, the shipped student must be one that kept the budget."""
    search = planned[PRODUCER["search_result"]].artifact
    if search is None:
        return []
    result = json.loads(search.output("search_result").read_text())
    if not result.get("enabled"):
        return []
    return [GateResult("search_budget", bool(result["feasible"]), float(result["feasible"]), 1.0,
                       result["message"])]


def promote(cfg: PipelineConfig) -> PromotionOutcome:
    from bertpress.bundle import MODEL_FILE
    from bertpress.runtime import Model, resolve_source
    from stages._hf import load_splits_dir
    from stages.tasks import get_task

    store = ArtifactStore(cfg.runtime.artifacts_dir)
    planned = plan(cfg, store)
    release = planned[PRODUCER["bundle"]].artifact
    if release is None:
        raise StageError(f"the release for this config is not built yet (or out of date): run "
                         f"`bertpress run {PRODUCER['bundle']}` (or `make retrain`, which runs the "
                         "pipeline and then the gates)")
    registered = release.manifest.get("info", {}).get("registered_model")
    if not registered:
        raise StageError("release.register_model is false for this config: there is no registered "
                         "candidate to promote; set release.register_model: true and rerun `make release`")
    name, version = registered["name"], registered["version"]
    # No fallback: promotion is about the registry the candidate was registered in.
    tracker = open_tracker(cfg.runtime, cfg.project.name, fallback=False, purpose="model registry")
    if tracker.tracking_uri != registered["tracking_uri"]:
        raise StageError(f"the candidate was registered at {registered['tracking_uri']} but tracking "
                         f"now points at {tracker.tracking_uri}; promote against the same server "
                         "(MLFLOW_TRACKING_URI) or rerun `bertpress run release --force`")
    champion_version = tracker.version_by_alias(name, CHAMPION_ALIAS)
    bundle_dir = release.output("bundle")
    candidate_size = (bundle_dir / MODEL_FILE).stat().st_size / 1e6
    task = get_task(cfg)
    test = load_splits_dir(planned[PRODUCER["dataset"]].artifact.output("dataset"))["test"]

    note = ""
    already = champion_version is not None and str(champion_version.version) == str(version)
    models = {"candidate": Model(bundle_dir, threads=cfg.runtime.threads)}
    champion_size = 0.0
    if champion_version is not None and not already:
        champion_dir = resolve_source(f"models:/{name}@{CHAMPION_ALIAS}", cache_dir=store.root / "registry-cache")
        models["champion"] = Model(champion_dir, threads=cfg.runtime.threads)
        champion_size = (champion_dir / MODEL_FILE).stat().st_size / 1e6
    log.info("measuring %s on %d test inputs (%d timed, %d rounds, interleaved)", ", ".join(models),
             len(test), min(len(test), cfg.gates.latency_samples), cfg.gates.latency_rounds)
    measured = _measure(models, test, task, cfg)
    metric = task.primary_metric
    candidate = Measurement(str(version), *measured["candidate"], candidate_size, metric)
    champion = (Measurement(str(champion_version.version), *measured["champion"], champion_size, metric)
                if "champion" in measured else None)
    results = check_gates(candidate, champion, cfg.gates) + search_gate(planned)
    if already:
        note = f"v{version} is already the champion; only the floors were checked."
    passed = all(r.passed for r in results)

    reports = store.root / "gates"
    reports.mkdir(parents=True, exist_ok=True)
    stem = f"{name}-v{version}-{time.strftime('%Y%m%d-%H%M%S')}"
    report = {
        "model": name, "candidate": as_dict(candidate), "champion": as_dict(champion),
        "passed": passed, "promoted": passed and not already, "already_champion": already,
        "gates": [r.__dict__ for r in results], "settings": cfg.gates.model_dump(),
        "tracking_uri": tracker.tracking_uri, "test_examples": len(test),
    }
    markdown = render_report(name, candidate, champion, results, passed, note)
    for suffix, text in ((".json", json.dumps(report, indent=2)), (".md", markdown)):
        (reports / f"{stem}{suffix}").write_text(text)
        (reports / f"latest{suffix}").write_text(text)

    with tracker.pipeline_run(f"{cfg.project.name}:promote", tags={"target": "promote"}):
        tracker.log_metrics({"gate/passed": float(passed), f"gate/candidate_{metric}": candidate.metric,
                             "gate/candidate_latency_p50_ms": candidate.latency_p50_ms}
                            | ({f"gate/champion_{metric}": champion.metric,
                                "gate/champion_latency_p50_ms": champion.latency_p50_ms} if champion else {}))
        tracker.set_tags({"model": name, "candidate_version": version, "passed": passed})
        tracker.log_artifact(reports / f"{stem}.md")
        tracker.log_artifact(reports / f"{stem}.json")
        run_id = tracker.active_run_id()
    tracker.tag_version(name, version, {"gate.status": "passed" if passed else "failed",
                                        "gate.run_id": run_id})
    if passed and not already:
        tracker.set_alias(name, CHAMPION_ALIAS, version)
        log.info("%s v%s promoted to %r", name, version, CHAMPION_ALIAS)
    return PromotionOutcome(passed, name, str(version), results, reports / f"{stem}.md", already)
