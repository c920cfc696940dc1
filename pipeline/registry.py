"""The stages, in order. Listed explicitly; modules are imported only when a stage actually runs so
that `status`, `validate` and cache hits stay fast (torch and transformers take seconds to import)."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

from pipeline.config import PipelineConfig
from pipeline.stage import StageContext, StageResult, StageSpec

REPO_DIR = Path(__file__).resolve().parent.parent
STAGES_DIR = REPO_DIR / "stages"
# Modules whose code is part of a stage's code version when the stage imports them.
_VERSIONED_PREFIXES = ("stages._", "bertpress.")


def _helpers_imported_by(path: Path) -> set[Path]:
    """Files of the stages._* helpers and bertpress.* modules a file imports (lazily too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(_VERSIONED_PREFIXES):
            found.add(REPO_DIR.joinpath(*node.module.split(".")).with_suffix(".py"))
    return found


def code_files(stage: str) -> tuple[Path, ...]:
    """The stage module and, transitively, the shared helpers it imports: its code version.
    Editing a helper invalidates exactly the stages that use it."""
    files: list[Path] = []
    pending = [STAGES_DIR / f"{stage}.py"]
    while pending:
        path = pending.pop()
        if path in files:
            continue
        files.append(path)
        pending.extend(sorted(_helpers_imported_by(path)))
    return (files[0], *sorted(files[1:]))


def _lazy(module: str):
    def run(ctx: StageContext) -> StageResult:
        return importlib.import_module(f"stages.{module}").run(ctx)

    run.__qualname__ = f"stages.{module}.run"
    return run


def _data_fingerprint(cfg: PipelineConfig) -> str:
    from stages._sources import source_fingerprint  # light: hashlib only

    return source_fingerprint(cfg.data)


def _spec(name, upstream, sections, description, fingerprint=None) -> StageSpec:
    return StageSpec(
        name=name,
        run=_lazy(name),
        upstream=upstream,
        config_sections=sections,
        code_files=code_files(name),
        description=description,
        fingerprint=fingerprint,
    )


STAGES: tuple[StageSpec, ...] = (
    _spec(
        "data",
        (),
        ("project.seed", "data", "teacher"),
        "load, split and tokenize the labelled data",
        fingerprint=_data_fingerprint,
    ),
    _spec("finetune", ("data",), ("project.seed", "teacher", "finetune"), "fine-tune the teacher"),
    _spec("distill", ("data", "finetune"), ("project.seed", "distill"), "distill the student"),
    _spec("baseline", ("finetune",), (), "the teacher through Optimum's stock O2 + dynamic INT8"),
    _spec("export", ("data", "finetune", "distill"), ("export",), "export to ONNX, check, fuse"),
    _spec("quantize", ("data", "export"), ("quantize",), "INT8 candidates, measured; the fastest within tolerance ships"),
    _spec(
        "benchmark",
        ("data", "finetune", "baseline", "distill", "export", "quantize"),
        ("benchmark",),
        "accuracy, latency, throughput and size of every variant",
    ),
    _spec(
        "release",
        ("data", "distill", "export", "quantize", "benchmark"),
        ("release", "project.name"),
        "bundle + model card + checksums, registered with alias 'candidate'",
    ),
)

BY_NAME = {spec.name: spec for spec in STAGES}
STAGE_NAMES = tuple(BY_NAME)


def closure(target: str) -> list[StageSpec]:
    """`target` and every stage it depends on, in pipeline order ('all' = every stage)."""
    if target == "all":
        return list(STAGES)
    if target not in BY_NAME:
        raise KeyError(target)
    needed: set[str] = set()
    stack = [target]
    while stack:
        name = stack.pop()
        if name not in needed:
            needed.add(name)
            stack.extend(BY_NAME[name].upstream)
    return [spec for spec in STAGES if spec.name in needed]
