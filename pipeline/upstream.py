"""`teacher.model: finetuned:<config.yaml>`: start from the teacher another bertpress config
fine-tuned (intermediate-task transfer, e.g. a re-ranker from the SQuAD QA teacher's encoder).

It resolves, before any work starts, to that config's finished finetune output as its cache
plans it now (its artifacts_dir / finetune / <key> / model), so the reference follows the other
pipeline: when its teacher is retrained under a new key, this run's path, and with it every key
downstream, changes too. A teacher that is not finished is a clear error naming the command that
makes it; nothing runs.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.config import ConfigError, PipelineConfig, load_config

PREFIX = "finetuned:"


def resolve_teacher(cfg: PipelineConfig, chain: tuple[Path, ...] = ()) -> PipelineConfig:
    """cfg with a `finetuned:` teacher.model replaced by that teacher's directory (else cfg)."""
    source = cfg.teacher.model
    if not source.startswith(PREFIX):
        return cfg
    path = Path(source[len(PREFIX):]).expanduser()
    if not path.is_file():
        raise ConfigError(f"teacher.model {source!r}: config file {path} does not exist. Give the bertpress "
                          "config whose fine-tuned teacher this run starts from, relative to where bertpress "
                          "runs (as --config is), e.g. finetuned:configs/squad-qa.yaml")
    if path.resolve() in chain:
        raise ConfigError(f"teacher.model {source!r}: the finetuned: references loop back to {path}")
    other = resolve_teacher(load_config(path), (*chain, path.resolve()))
    from pipeline.cache import ArtifactStore
    from pipeline.runner import plan  # cheap: keys from config and code, no models loaded

    planned = plan(other, ArtifactStore(Path(other.runtime.artifacts_dir)))["finetune"]
    if planned.artifact is None:
        state = "out of date" if planned.stale_keys else "not trained yet"
        raise ConfigError(f"teacher.model {source!r}: that config's teacher is {state} (finetune key "
                          f"{planned.key} under {other.runtime.artifacts_dir}). Fine-tune it first: "
                          f"make finetune CONFIG={path}  (or: bertpress run finetune --config {path})")
    model = planned.artifact.output("teacher_model")
    return cfg.model_copy(update={"teacher": cfg.teacher.model_copy(update={"model": str(model)})})
