"""What a stage receives and returns. Stages see only this, never each other."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bertpress.errors import BertpressError
from pipeline.cache import Artifact

if TYPE_CHECKING:
    from pipeline.config import PipelineConfig
    from pipeline.tracking import Tracker


class StageError(BertpressError):
    """A stage could not finish; the message says what is wrong and how to fix it."""

    label = "stage failed"


@dataclass
class StageResult:
    metrics: dict[str, float] = field(default_factory=dict)
    # name -> path relative to the stage output dir; downstream stages look outputs up by name.
    outputs: dict[str, str] = field(default_factory=dict)
    # Anything else worth keeping in the manifest (label maps, fused-node counts, ...).
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class StageContext:
    cfg: PipelineConfig
    name: str
    key: str
    out: Path  # a temporary directory; moved into place only after run() returns
    inputs: dict[str, Artifact]  # upstream stage name -> its finished output
    tracker: Tracker
    log: logging.Logger
    # Survives a failed or killed attempt (training checkpoints to resume from); deleted once the
    # stage's output is committed.
    scratch: Path

    def _producer(self, output: str) -> Artifact | None:
        for artifact in self.inputs.values():
            if output in artifact.manifest.get("outputs", {}):
                return artifact
        return None

    def has(self, output: str) -> bool:
        """Whether an upstream stage wrote this (optional) output, e.g. the fp16 model."""
        return self._producer(output) is not None

    def path(self, output: str) -> Path:
        """The file or folder an upstream stage declared under this name (checksum-verified)."""
        artifact = self._producer(output)
        if artifact is None:
            raise StageError(f"stage {self.name!r} needs output {output!r}, which none of its inputs "
                             f"({', '.join(self.inputs)}) declares; rerun them with --force")
        return artifact.output(output)

    def read_json(self, output: str) -> Any:
        import json

        return json.loads(self.path(output).read_text())


@dataclass(frozen=True)
class StageSpec:
    name: str
    run: Callable[[StageContext], StageResult]
    # Named outputs this stage reads (upstream stages are their producers) and must write.
    consumes: tuple[str, ...]
    produces: tuple[str, ...]
    upstream: tuple[str, ...]  # derived from `consumes` by the registry
    # Config sections whose values enter this stage's cache key (runtime never does).
    config_sections: tuple[str, ...]
    # Source files whose content is this stage's "code version" (plus the configured task's).
    code_files: tuple[Path, ...]
    description: str
    # Content hash of external inputs (data files), computed before the stage runs.
    fingerprint: Callable[[PipelineConfig], str] | None = None
    # Trains a model: under torchrun every rank runs it (DDP); other stages run on rank 0 only.
    trains: bool = False
    # Why the stage cannot run under torchrun with this config (None when it can).
    single_process: Callable[[PipelineConfig], str | None] | None = None
    # Problems with this stage's external inputs, checked before any stage runs.
    preflight: Callable[[PipelineConfig], list[str]] | None = None
    # Switched off by config: its key then ignores its config and code (it writes a fixed "off"
    # record), so editing them does not invalidate the stages downstream.
    inactive: Callable[[PipelineConfig], bool] | None = None
