"""Trainer plumbing shared by finetune and distill: arguments, MLflow callback, evaluation."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from transformers import (
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

from pipeline.config import RuntimeConfig, TrainConfig
from pipeline.tracking import Tracker
from stages.tasks.base import Task, rows_from_padded

log = logging.getLogger("bertpress.train")


def configure_torch(runtime: RuntimeConfig) -> None:
    if runtime.threads:
        torch.set_num_threads(runtime.threads)


def use_cpu(runtime: RuntimeConfig) -> bool:
    return runtime.device == "cpu" or (runtime.device == "auto" and not torch.cuda.is_available())


def training_arguments(train: TrainConfig, runtime: RuntimeConfig, scratch: Path, seed: int,
                       task: Task) -> TrainingArguments:
    # Best-model selection needs evaluation and saving on the same schedule.
    schedule = ({"eval_strategy": "steps", "save_strategy": "steps", "eval_steps": train.checkpoint_steps,
                 "save_steps": train.checkpoint_steps} if train.checkpoint_steps
                else {"eval_strategy": "epoch", "save_strategy": "epoch"})
    return TrainingArguments(
        **schedule,
        output_dir=str(scratch / "checkpoints"),
        num_train_epochs=train.epochs,
        max_steps=train.max_steps,
        per_device_train_batch_size=train.batch_size,
        group_by_length=train.group_by_length,
        per_device_eval_batch_size=train.eval_batch_size,
        learning_rate=train.learning_rate,
        weight_decay=train.weight_decay,
        warmup_ratio=train.warmup_ratio,
        lr_scheduler_type=train.lr_scheduler,
        lr_scheduler_kwargs=_plateau(task) if train.lr_scheduler == "reduce_lr_on_plateau" else {},
        save_total_limit=2,  # the best and the latest (to resume from)
        load_best_model_at_end=True,
        # Stateful callbacks (early stopping's patience counter) resume from the checkpoint, not from 0.
        restore_callback_states_from_checkpoint=True,
        metric_for_best_model=task.primary_metric,
        greater_is_better=task.greater_is_better,
        logging_steps=train.logging_steps,
        report_to=[],  # MLflow is logged through our tracker, once, in our naming
        seed=seed,
        data_seed=seed,
        use_cpu=use_cpu(runtime),
        dataloader_num_workers=0,
        disable_tqdm=False,
        save_safetensors=True,
    )


def _plateau(task: Task) -> dict[str, Any]:
    """torch's ReduceLROnPlateau: halve the rate after every evaluation that does not beat the best
    (patience 0), whatever the rate (eps 0: the default skips changes under 1e-8)."""
    return {"mode": "max" if task.greater_is_better else "min", "factor": 0.5, "patience": 0, "eps": 0.0}


class OrderedEvalTrainer(Trainer):
    """A Trainer that evaluates rows in dataset order. With group_by_length, transformers also
    length-sorts evaluation batches, and the task metrics that read the split's own rows (pairs,
    queries and their corpus, QA windows) would then score another row's prediction."""

    def _get_eval_sampler(self, eval_dataset):
        return None if eval_dataset is None else torch.utils.data.SequentialSampler(eval_dataset)


class TrackerCallback(TrainerCallback):
    """Per-step train loss and per-epoch validation metrics to MLflow, with units in the names."""

    def __init__(self, tracker: Tracker):
        self.tracker = tracker

    def on_log(self, args, state, control, logs: dict[str, Any] | None = None, **kwargs):
        if not logs or not state.is_world_process_zero:
            return
        renamed = {}
        for key, value in logs.items():
            if key.startswith("eval_"):
                renamed[f"eval/{key[5:]}"] = value
            elif key in ("loss", "learning_rate", "grad_norm"):
                renamed[f"train/{key}"] = value
        self.tracker.log_metrics(renamed, step=state.global_step)


# What a checkpoint needs to resume exactly; the trainer state is written last.
CHECKPOINT_FILES = ("trainer_state.json", "optimizer.pt", "scheduler.pt")


def last_complete_checkpoint(folder: Path) -> str | None:
    """The newest checkpoint-N with every file a resume needs (a kill during saving leaves a
    partial one, which is skipped)."""
    if not folder.is_dir():
        return None
    found = sorted((p for p in folder.glob("checkpoint-*") if p.name.split("-")[-1].isdigit()),
                   key=lambda p: int(p.name.split("-")[-1]), reverse=True)
    for path in found:
        if (all((path / name).is_file() for name in CHECKPOINT_FILES) and any(path.glob("model*.safetensors"))
                and _readable_json(path / "trainer_state.json")):
            return str(path)
        log.warning("skipping incomplete checkpoint %s (interrupted while saving)", path)
    return None


def _readable_json(path: Path) -> bool:
    """A kill during the write leaves the state file empty or cut short."""
    import json

    try:
        json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return True


def train_and_evaluate(trainer: Trainer, scratch: Path, test_dataset, task: Task) -> dict[str, float]:
    """Train (resuming from the last complete checkpoint in `scratch` if one exists), then score
    the best model on validation and test with the task's metrics."""
    last = last_complete_checkpoint(scratch / "checkpoints")
    if last:
        log.info("resuming from checkpoint %s", last)
    result = trainer.train(resume_from_checkpoint=last)
    metrics = {"train/final_loss": float(result.training_loss), "train/runtime_s": result.metrics["train_runtime"]}
    return metrics | split_scores(trainer, task, eval=trainer.eval_dataset, test=test_dataset)


def training_length(trainer: Trainer) -> dict[str, float]:
    """Steps trained, the planned ceiling, the step of the kept (best) checkpoint and the training
    rows (features: a long QA context counts once per window)."""
    state = trainer.state
    best = state.best_model_checkpoint
    best_step = int(best.rsplit("-", 1)[-1]) if best else state.global_step
    return {"train/steps": float(state.global_step), "train/max_steps": float(state.max_steps),
            "train/best_step": float(best_step), "train/rows": float(len(trainer.train_dataset))}


def stopped_early(evaluations_without_improvement: int, patience: int) -> bool:
    """Whether early stopping ended training: its patience ran out (before the ceiling or on its
    very last step). False means the ceiling (epochs / max_steps) ended it while validation was
    still improving within the patience."""
    return evaluations_without_improvement >= patience


def split_scores(trainer: Trainer, task: Task, **splits) -> dict[str, float]:
    """The task's scalar metrics of the trainer's model on each named split, as `split/metric`."""
    return {f"{split}/{name}": value for split, features in splits.items()
            for name, value in evaluate(trainer, features, task).items() if not isinstance(value, dict)}


def evaluate(trainer: Trainer, features, task: Task) -> dict[str, float]:
    """The task's metrics of the trainer's model on `features`."""
    bound, trainer.compute_metrics = trainer.compute_metrics, None  # it is bound to validation
    try:
        predictions = trainer.predict(features).predictions
    finally:
        trainer.compute_metrics = bound
    if isinstance(predictions, tuple):
        predictions = predictions[0]
    return task.metrics(rows_from_padded(predictions, [len(i) for i in features["input_ids"]]), features)
