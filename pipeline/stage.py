"""What a stage receives and returns. Stages see only this, never each other."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.cache import Artifact

if TYPE_CHECKING:
    from pipeline.config import PipelineConfig
    from pipeline.tracking import Tracker


class StageError(RuntimeError):
    """A stage could not finish; the message says what is wrong and how to fix it."""


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
    inputs: dict[str, Artifact]
    tracker: Tracker
    log: logging.Logger
    # Survives a failed or killed attempt (training checkpoints to resume from); deleted once the
    # stage's output is committed.
    scratch: Path

    def input(self, stage: str) -> Artifact:
        return self.inputs[stage]


@dataclass(frozen=True)
class StageSpec:
    name: str
    run: Callable[[StageContext], StageResult]
    upstream: tuple[str, ...]
    # Config sections whose values enter this stage's cache key (runtime never does).
    config_sections: tuple[str, ...]
    # Source files whose content is this stage's "code version".
    code_files: tuple[Path, ...]
    description: str
    # Content hash of external inputs (data files), computed before the stage runs.
    fingerprint: Callable[[PipelineConfig], str] | None = None
