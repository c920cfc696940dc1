"""The stages, in order, and what each reads and writes. Listed explicitly; modules are imported
only when a stage actually runs so that `status`, `validate` and cache hits stay fast (torch and
transformers take seconds to import).

Stages meet only through named outputs: a stage declares the outputs it consumes and produces,
and its upstream stages are the producers of what it consumes. Nothing else in the orchestration
names a stage.
"""

from __future__ import annotations

import ast
import functools
import importlib
from pathlib import Path

from bertpress.bundle import file_sha256
from pipeline.config import PipelineConfig
from pipeline.stage import StageContext, StageResult, StageSpec

REPO_DIR = Path(__file__).resolve().parent.parent
STAGES_DIR = REPO_DIR / "stages"
# Per-task modules: the training side (stages.tasks.<task>) and the runtime's head
# (bertpress.tasks.<task>); shared modules of those packages (base, windows, ...) are ordinary helpers.
# Modules whose code is part of a stage's code version when the stage imports them.
_VERSIONED_PREFIXES = ("stages.", "bertpress.")
# One module per task (training side); a stage's code version includes the configured one only,
# so editing the entity-recognition task does not invalidate cached classification models.
TASK_MODULES = {"sequence-classification": "sequence_classification",
                "token-classification": "token_classification",
                "sentence-embedding": "sentence_embedding",
                "question-answering": "question_answering",
                "cross-encoder": "cross_encoder"}
# Training-side task modules another task reuses (sentence embeddings read labelled texts as
# classification does): part of that task's version too.
TASK_REUSES = {"sentence-embedding": ("sequence_classification",),
               "cross-encoder": ("sequence_classification",)}


def _module_file(module: str) -> Path:
    path = REPO_DIR.joinpath(*module.split("."))
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def _is_task_module(module: str) -> bool:
    package, _, name = module.rpartition(".")
    return package in ("stages.tasks", "bertpress.tasks") and name in TASK_MODULES.values()


# Cached per process: every plan() asks for every stage's files, and parsing the same modules again
# cost ~4 s of each (even fully cached) CLI call. The files' bytes are still hashed on every plan.
@functools.cache
def _helpers_imported_by(path: Path, include_tasks: bool) -> frozenset[Path]:
    """Files of the stages.* and bertpress.* modules a file imports (lazily too). Task modules
    are left to `task_code_files` unless `include_tasks`."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if not (isinstance(node, ast.ImportFrom) and node.module):
            continue
        module = node.module
        if not module.startswith(_VERSIONED_PREFIXES):
            continue
        if _is_task_module(module) and not include_tasks:
            continue
        file = _module_file(module)
        if file.is_file():
            found.add(file)
    return frozenset(found)


def _closure(start: Path, include_tasks: bool) -> tuple[Path, ...]:
    files: list[Path] = []
    pending = [start]
    while pending:
        path = pending.pop()
        if path in files:
            continue
        files.append(path)
        pending.extend(sorted(_helpers_imported_by(path, include_tasks)))
    return (files[0], *sorted(files[1:]))


def code_files(stage: str) -> tuple[Path, ...]:
    """The stage module and, transitively, the shared helpers it imports: its code version.
    Editing a helper invalidates exactly the stages that use it."""
    return _closure(STAGES_DIR / f"{stage}.py", include_tasks=False)


@functools.cache
def task_code_files(task_type: str) -> tuple[Path, ...]:
    """The configured task's modules (training side and runtime head), the helpers they import,
    and the task modules it reuses (TASK_REUSES): part of every stage's version."""
    module = TASK_MODULES[task_type]
    training = tuple(path for name in (module, *TASK_REUSES.get(task_type, ()))
                     for path in _closure(STAGES_DIR / "tasks" / f"{name}.py", include_tasks=False))
    runtime = _closure(REPO_DIR / "bertpress" / "tasks" / f"{module}.py", include_tasks=False)
    return tuple(dict.fromkeys((*training, *runtime)))


def _lazy(module: str):
    def run(ctx: StageContext) -> StageResult:
        return importlib.import_module(f"stages.{module}").run(ctx)

    run.__qualname__ = f"stages.{module}.run"
    return run


def _data_fingerprint(cfg: PipelineConfig) -> str:
    from stages._sources import source_fingerprint  # light: hashlib only

    return source_fingerprint(cfg.data)


def _search_runs_alone(cfg: PipelineConfig) -> str | None:
    if cfg.search.enabled:
        return ("the search runs its trials in one process; run `bertpress run search` without "
                "torchrun first, then the rest with it")
    return None


def _data_inputs(cfg: PipelineConfig) -> list[str]:
    from pipeline.preflight import check_data_files, check_model

    return check_data_files(cfg) + check_model("teacher.model", cfg.teacher.model, needs_tokenizer=True)


def _teacher_inputs(cfg: PipelineConfig) -> list[str]:
    from pipeline.preflight import check_model

    return check_model("teacher.model", cfg.teacher.model, needs_tokenizer=True)


def _student_inputs(cfg: PipelineConfig) -> list[str]:
    from pipeline.preflight import check_distill_texts, check_model

    problems = check_distill_texts(cfg)
    if not cfg.distill.student.model:
        return problems
    return problems + check_model("distill.student.model", cfg.distill.student.model, needs_tokenizer=False)


def _student_fingerprint(cfg: PipelineConfig) -> str | None:
    """The content of the text files distillation reads besides the data (a built-in corpus is
    pinned by its name and hashes), so an edited file retrains the student."""
    from pipeline.preflight import distill_text_files

    files = distill_text_files(cfg).values()
    return ",".join(file_sha256(f) if f.is_file() else "<missing>" for f in files) or None


def _spec(name: str, consumes: tuple[str, ...], produces: tuple[str, ...], sections: tuple[str, ...],
          description: str, **extra) -> StageSpec:
    producers = {output: spec.name for spec in _DECLARED for output in spec.produces}
    missing = [c for c in consumes if c not in producers]
    if missing:
        raise RuntimeError(f"stage {name!r} consumes {missing}, which no earlier stage produces")
    upstream = tuple(dict.fromkeys(producers[c] for c in consumes))
    spec = StageSpec(name=name, run=_lazy(name), consumes=consumes, produces=produces,
                     upstream=upstream, config_sections=sections, code_files=code_files(name),
                     description=description, **extra)
    _DECLARED.append(spec)
    return spec


_DECLARED: list[StageSpec] = []
STAGES: tuple[StageSpec, ...] = (
    _spec("data", (), ("dataset", "teacher_tokenizer", "labels", "data_report"),
          ("project.seed", "task", "data", "teacher"), "load, split and tokenize the labelled data",
          fingerprint=_data_fingerprint, preflight=_data_inputs),
    _spec("finetune", ("dataset", "teacher_tokenizer", "labels"), ("teacher_model", "teacher_metrics"),
          ("project.seed", "teacher", "finetune"), "fine-tune the teacher", trains=True,
          preflight=_teacher_inputs),
    _spec("baseline", ("teacher_model",), ("stock_int8", "stock_int8_dir", "baseline_report"), (),
          "the teacher through Optimum's stock O2 + dynamic INT8"),
    _spec("static", ("dataset", "teacher_model"), ("static_result",), ("static", "data.max_length"),
          "a static (Model2Vec) student from the teacher (when static.enabled)",
          inactive=lambda cfg: not cfg.static.enabled),
    _spec("search", ("dataset", "teacher_tokenizer", "labels", "teacher_model", "teacher_metrics", "stock_int8"),
          ("search_result",), ("project.seed", "search", "distill", "export.opset", "quantize.candidates"),
          "search students against the quality budget (when search.enabled)",
          single_process=_search_runs_alone, inactive=lambda cfg: not cfg.search.enabled,
          fingerprint=_student_fingerprint, preflight=_student_inputs),
    _spec("distill", ("dataset", "teacher_tokenizer", "labels", "teacher_model", "search_result"),
          ("student_model", "student_metrics", "student_settings"), ("project.seed", "distill"), "distill the student",
          trains=True, fingerprint=_student_fingerprint, preflight=_student_inputs),
    _spec("export", ("dataset", "teacher_model", "student_model"),
          ("teacher_onnx", "teacher_best", "teacher_dir", "student_onnx", "student_best",
           "student_dir", "parity"), ("export",), "export to ONNX, check, fuse"),
    _spec("quantize", ("dataset", "student_onnx", "student_best", "student_dir"),
          ("student_int8", "student_int8_dir", "quantize_report"), ("quantize",),
          "INT8 candidates, measured; the fastest within tolerance ships"),
    _spec("benchmark", ("dataset", "teacher_model", "stock_int8", "stock_int8_dir", "student_model",
                        "teacher_best", "student_best", "student_int8", "search_result", "static_result"),
          ("benchmark_report", "results_table", "pareto_plot", "length_plot"), ("benchmark",),
          "quality, latency, throughput and size of every variant"),
    _spec("release", ("dataset", "labels", "data_report", "student_model", "student_settings", "parity", "student_best",
                      "student_dir", "student_int8", "student_int8_dir", "quantize_report",
                      "benchmark_report", "static_result", "teacher_model", "teacher_best", "teacher_dir"),
          ("bundle",), ("release", "project.name"),
          "bundle + model card + checksums, registered with alias 'candidate'"),
)

BY_NAME = {spec.name: spec for spec in STAGES}
STAGE_NAMES = tuple(BY_NAME)
PRODUCER = {output: spec.name for spec in STAGES for output in spec.produces}


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
