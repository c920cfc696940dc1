"""Checks on the inputs a run will read, made before any stage starts (so a typo in a model path
does not surface after the data stage, or a missing tokenizer after an hour of fine-tuning).

Only the inputs of stages that will actually run are checked: a cached teacher needs no weights.
"""

from __future__ import annotations

import os
from pathlib import Path

from pipeline.config import BUILTIN_CORPORA, ConfigError, PipelineConfig

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt")


def _offline() -> bool:
    return any(os.environ.get(v) == "1" for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _looks_like_path(name: str) -> bool:
    # Hub ids are "name" or "org/name"; anything else with a slash is a path.
    return name.startswith(("/", "./", "../", "~")) or name.count("/") > 1


def check_model(field: str, name: str, needs_tokenizer: bool) -> list[str]:
    """Problems with one model source: a directory, a hub id, or a built-in name."""
    if name in ("random",) or name.startswith("builtin:"):
        return []  # built-ins are fetched and sha256-checked by stages._sources
    path = Path(name).expanduser()
    if path.is_dir():
        files = {p.name for p in path.iterdir()}
        problems = []
        if "config.json" not in files:
            problems.append("config.json")
        if not files & set(WEIGHT_FILES):
            problems.append(f"weights ({' or '.join(WEIGHT_FILES[::2])})")
        if needs_tokenizer and not files & set(TOKENIZER_FILES):
            problems.append(f"a tokenizer ({' or '.join(TOKENIZER_FILES)})")
        if problems:
            return [f"{field}: {path} is missing {'; '.join(problems)}. Save the model with "
                    "model.save_pretrained(dir) and tokenizer.save_pretrained(dir), or point "
                    f"{field} at a complete Hugging Face model directory"]
        return []
    if path.exists():
        return [f"{field}: {path} is a file; give the model's directory"]
    if _looks_like_path(name):
        return [f"{field}: directory {path} does not exist"]
    if _offline():
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(name, "config.json")
        if not isinstance(cached, str):
            return [f"{field}: {name!r} is a hub id, but the hub is switched off (HF_HUB_OFFLINE=1) "
                    "and it is not in the local Hugging Face cache. Unset HF_HUB_OFFLINE with "
                    "network access, download it once (huggingface-cli download "
                    f"{name}), or use a local directory or builtin:minilm-l6"]
    return []


def check_data_files(cfg: PipelineConfig) -> list[str]:
    problems = []
    if cfg.data.source == "files" and cfg.data.files is not None:
        for split in ("train", "validation", "test"):
            path = getattr(cfg.data.files, split)
            if path is not None and not Path(path).is_file():
                problems.append(f"data.files.{split}: {path} does not exist (relative paths start "
                                f"at {Path.cwd()})")
    return problems


def distill_text_files(cfg: PipelineConfig) -> dict[str, Path]:
    """The text files distillation reads besides the data, by config field (built-in corpora are
    fetched and sha256-checked by stages._corpus, so they are not files here)."""
    fields = {"distill.augment.unlabeled_texts": cfg.distill.augment.unlabeled_texts if cfg.distill.augment.enabled else None,
              "distill.trim_vocab.extra_texts": cfg.distill.trim_vocab.extra_texts}
    return {field: Path(texts) for field, texts in fields.items()
            if texts is not None and not texts.startswith("builtin:")}


def check_distill_texts(cfg: PipelineConfig) -> list[str]:
    """Those files exist."""
    return [f"{field}: {path} does not exist (relative paths start at {Path.cwd()}); give a text file, one "
            f"text per line, or {' / '.join(BUILTIN_CORPORA)}"
            for field, path in distill_text_files(cfg).items() if not path.is_file()]


def preflight(cfg: PipelineConfig, specs: list) -> None:
    """Raise ConfigError listing every problem with the inputs of the stages about to run (each
    stage's spec says what to check)."""
    found = [problem for spec in specs if spec.preflight for problem in spec.preflight(cfg)]
    problems = list(dict.fromkeys(found))
    if problems:
        raise ConfigError(f"{len(problems)} problem(s) with the run's inputs:\n"
                          + "\n".join(f"  - {p}" for p in problems))
