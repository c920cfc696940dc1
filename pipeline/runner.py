"""Plan stage keys, skip what is cached, run the rest, and record everything in MLflow."""

from __future__ import annotations

import hashlib
import logging
import platform
import shutil
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

from pipeline import __version__, distributed
from pipeline.cache import (
    Artifact,
    ArtifactStore,
    CorruptArtifactError,
    output_checksums,
    stage_key,
)
from pipeline.config import PipelineConfig
from pipeline.locks import stage_lock
from pipeline.preflight import preflight
from pipeline.registry import STAGES, closure, task_code_files
from pipeline.stage import StageContext, StageError, StageSpec
from pipeline.tracking import Tracker, open_tracker

log = logging.getLogger("bertpress")

TRACKED_PACKAGES = (
    "torch",
    "transformers",
    "optimum",
    "optimum-onnx",
    "onnx",
    "onnxruntime",
    "onnxruntime-gpu",
    "datasets",
    "mlflow",
    "tokenizers",
)


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version(), "bertpress": __version__}
    for name in TRACKED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def code_version(spec: StageSpec, task_type: str) -> str:
    """The stage's own code and helpers, plus the configured task's module and helpers."""
    digest = hashlib.sha256(__version__.encode())
    for path in dict.fromkeys((*spec.code_files, *task_code_files(task_type))):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def section_values(cfg: PipelineConfig, sections: tuple[str, ...]) -> dict[str, Any]:
    dumped = cfg.model_dump(mode="json")
    values: dict[str, Any] = {}
    for dotted in sections:
        node: Any = dumped
        for part in dotted.split("."):
            node = node[part]
        values[dotted] = node
    return values


@dataclass
class PlannedStage:
    spec: StageSpec
    key: str
    config: dict[str, Any]
    artifact: Artifact | None  # present when this exact key is finished and built from current inputs
    stale_keys: list[str]  # finished outputs of this stage under other keys, or outdated under this one

    @property
    def status(self) -> str:
        if self.artifact is not None:
            return "done"
        return "stale" if self.stale_keys else "missing"


def current(store: ArtifactStore, spec: StageSpec, key: str, planned: dict[str, PlannedStage]) -> Artifact | None:
    """The finished output of (stage, key), if it was built from the upstream outputs on disk
    now. A forced rerun upstream that wrote something else leaves it out of date."""
    artifact = store.get(spec.name, key)
    if artifact is None:
        return None
    upstream = {name: planned[name].artifact for name in spec.upstream}
    if any(a is None for a in upstream.values()) or not artifact.built_from(upstream):
        return None
    return artifact


def plan(cfg: PipelineConfig, store: ArtifactStore) -> dict[str, PlannedStage]:
    """Compute every stage's key from config, code and upstream keys (cheap: no heavy imports)."""
    planned: dict[str, PlannedStage] = {}
    for spec in STAGES:
        config = section_values(cfg, spec.config_sections)
        upstream = {name: planned[name].key for name in spec.upstream}
        fingerprint = spec.fingerprint(cfg) if spec.fingerprint else None
        if spec.inactive is not None and spec.inactive(cfg):
            key = stage_key(spec.name, {"inactive": True}, upstream, "inactive", None)
        else:
            key = stage_key(spec.name, config, upstream, code_version(spec, cfg.task.type), fingerprint)
        artifact = current(store, spec, key, planned)
        stale = [k for k in store.finished_keys(spec.name) if k != key or artifact is None]
        planned[spec.name] = PlannedStage(spec, key, config, artifact, stale)
    return planned


@dataclass
class StageOutcome:
    name: str
    key: str
    path: Path
    cached: bool
    seconds: float
    metrics: dict[str, float]
    outputs: dict[str, str]  # output name -> path relative to `path`

    def output(self, name: str) -> Path | None:
        return self.path / self.outputs[name] if name in self.outputs else None


class Runner:
    def __init__(self, cfg: PipelineConfig, config_path: Path | None = None):
        self.cfg = cfg
        self.config_path = config_path
        self.store = ArtifactStore(cfg.runtime.artifacts_dir)

    def tracker(self) -> Tracker:
        return open_tracker(self.cfg.runtime, self.cfg.project.name)

    def run(self, target: str = "all", force: bool = False) -> list[StageOutcome]:
        selected = closure(target)
        planned = plan(self.cfg, self.store)
        forced = {spec.name for spec in selected} if target == "all" else {target}
        forced = forced if force else set()
        will_run = {s.name for s in selected if planned[s.name].artifact is None or s.name in forced}
        if distributed.world_size() > 1:
            for spec in selected:
                reason = spec.single_process(self.cfg) if spec.single_process else None
                if reason and spec.name in will_run:
                    raise StageError(reason)
            if not distributed.is_main():
                return self._follow(selected, planned, will_run)
        # Before any work, and before touching the tracking store.
        preflight(self.cfg, [s for s in selected if s.name in will_run])
        tracker = self.tracker()
        log.info("tracking to %s (experiment %r)", tracker.tracking_uri, self.cfg.project.name)
        outcomes: list[StageOutcome] = []
        tags = {"target": target, "config": str(self.config_path or "(defaults)")}
        with tracker.pipeline_run(f"{self.cfg.project.name}:{target}", tags=tags):
            tracker.log_text(
                yaml.safe_dump(self.cfg.model_dump(mode="json"), sort_keys=False), "config.yaml"
            )
            for spec in selected:
                item = planned[spec.name]
                # An upstream stage rerun in this invocation may have changed what this one reads.
                item.artifact = current(self.store, spec, item.key, planned)
                if item.artifact is not None and spec.name not in forced:
                    outcomes.append(self._replay(tracker, item))
                    continue
                with stage_lock(self.store.stage_dir(spec.name), spec.name, item.key,
                                self.cfg.runtime.lock, self.cfg.runtime.lock_timeout_s):
                    # Another process may have finished this very output while we waited.
                    item.artifact = current(self.store, spec, item.key, planned)
                    if item.artifact is not None and spec.name not in forced:
                        outcomes.append(self._replay(tracker, item))
                        continue
                    self.store.clear_interrupted(spec.name, item.key)
                    outcomes.append(self._execute(tracker, item, planned))
                    # A rerun replaces what was planned; later stages read the fresh manifest.
                    item.artifact = self.store.get(spec.name, item.key)
            tracker.log_metrics(
                {f"time/{o.name}_s": o.seconds for o in outcomes}
                | {"time/total_s": sum(o.seconds for o in outcomes)}
            )
        return outcomes

    def _follow(self, selected, planned: dict[str, PlannedStage], will_run: set[str]) -> list[StageOutcome]:
        """Ranks other than 0: train alongside rank 0 (DDP), write and log nothing."""
        for spec in selected:
            if not spec.trains or spec.name not in will_run:
                continue
            inputs = {
                name: distributed.wait_for(lambda name=name: self.store.get(name, planned[name].key), name)
                for name in spec.upstream
            }
            private = distributed.private_dir(self.store.root, spec.name, planned[spec.name].key)
            log.info("[%s] rank %d training alongside rank 0", spec.name, distributed.rank())
            try:
                spec.run(StageContext(
                    cfg=self.cfg, name=spec.name, key=planned[spec.name].key, out=private, inputs=inputs,
                    tracker=distributed.NullTracker(), log=logging.getLogger(f"bertpress.{spec.name}"),
                    scratch=self.store.scratch(spec.name, planned[spec.name].key),
                ))
            finally:
                shutil.rmtree(private, ignore_errors=True)
        return []

    def _replay(self, tracker: Tracker, item: PlannedStage) -> StageOutcome:
        start = time.perf_counter()
        art = item.artifact
        assert art is not None
        with tracker.stage_run(
            item.spec.name, item.config, tags={"cached": "true", "key": item.key}
        ):
            tracker.log_metrics(art.metrics)
            tracker.set_tags({"artifact_dir": art.path, "source_run_id": art.manifest.get("mlflow_run_id")})
        seconds = time.perf_counter() - start
        log.info("[%s] cache hit %s (%.2fs)", item.spec.name, art.path, seconds)
        return StageOutcome(item.spec.name, item.key, art.path, True, seconds, art.metrics,
                            art.manifest.get("outputs", {}))

    def _execute(
        self, tracker: Tracker, item: PlannedStage, planned: dict[str, PlannedStage]
    ) -> StageOutcome:
        spec = item.spec
        inputs: dict[str, Artifact] = {}
        for name in spec.upstream:
            art = planned[name].artifact
            if art is None:  # cannot happen when closure() ordered things; guard for clarity
                raise StageError(f"stage {spec.name!r} needs {name!r}; run `bertpress run {name}`")
            inputs[name] = art
        log.info("[%s] running: %s (key %s)", spec.name, spec.description, item.key)
        tmp = self.store.begin(spec.name, item.key)
        start = time.perf_counter()
        try:
            with tracker.stage_run(spec.name, item.config, tags={"cached": "false", "key": item.key}) as run_id:
                ctx = StageContext(
                    cfg=self.cfg,
                    name=spec.name,
                    key=item.key,
                    out=tmp,
                    inputs=inputs,
                    tracker=tracker,
                    log=logging.getLogger(f"bertpress.{spec.name}"),
                    scratch=self.store.scratch(spec.name, item.key),
                )
                result = spec.run(ctx)
                undeclared = [name for name in spec.produces if name not in result.outputs]
                if undeclared:
                    raise StageError(f"stage {spec.name!r} did not write its outputs {undeclared} "
                                     "(a bug in the stage: please report it)")
                seconds = time.perf_counter() - start
                manifest = {
                    "description": spec.description,
                    "config": item.config,
                    "inputs": {n: {"key": a.key, "path": str(a.path), "content_sha256": a.content}
                               for n, a in inputs.items()},
                    "metrics": result.metrics,
                    "outputs": result.outputs,
                    "output_sha256": output_checksums(tmp, result.outputs),
                    "info": result.info,
                    "mlflow_run_id": run_id,
                    "seed": self.cfg.project.seed,
                    "world_size": distributed.world_size(),
                    "versions": library_versions(),
                    "tracking": {"uri": tracker.tracking_uri, "failure": tracker.failure},
                    "wall_time_s": round(seconds, 3),
                }
                artifact = self.store.commit(tmp, spec.name, item.key, manifest)
                self.store.drop_scratch(spec.name, item.key)
                tracker.log_metrics(result.metrics | {f"time/{spec.name}_s": seconds})
                tracker.set_tags({"artifact_dir": artifact.path})
                tracker.log_artifact(artifact.path / "manifest.json")
        except CorruptArtifactError as exc:
            self.store.abort(tmp)
            raise StageError(str(exc)) from None
        except BaseException:
            self.store.abort(tmp)
            raise
        log.info("[%s] done in %.1fs -> %s", spec.name, seconds, artifact.path)
        return StageOutcome(spec.name, item.key, artifact.path, False, seconds, result.metrics,
                            result.outputs)
