"""finetune stage: fine-tune the teacher on the data with the transformers Trainer.

The task gives the model class (its head), the inputs, the collator and the metrics; the best
checkpoint by the task's primary metric on validation is kept, scored on test, and an interrupted
attempt resumes from its last checkpoint. With finetune.early_stopping_patience the training
length is chosen by validation: it stops once the primary metric stops improving.
Writes: model/ (weights, config with id2label, tokenizer), metrics.json.
"""

from __future__ import annotations

from transformers import AutoTokenizer, EarlyStoppingCallback, set_seed

from pipeline.stage import StageContext, StageResult
from stages._hf import label_maps, load_splits_dir, load_teacher, save_json
from stages._train import (
    OrderedEvalTrainer,
    TrackerCallback,
    configure_torch,
    stopped_early,
    train_and_evaluate,
    training_arguments,
    training_length,
)
from stages.tasks import get_task


def run(ctx: StageContext) -> StageResult:
    cfg = ctx.cfg
    task = get_task(cfg)
    configure_torch(cfg.runtime)
    set_seed(cfg.project.seed)  # before a task's own stage too: its random init and shuffles are seeded
    own = task.finetune_stage(ctx)  # e.g. a sentence-embedding teacher used as it is
    if own is not None:
        return own
    tokenizer = AutoTokenizer.from_pretrained(ctx.path("teacher_tokenizer"))
    raw = load_splits_dir(ctx.path("dataset"))
    if cfg.finetune.max_train_samples:
        raw["train"] = task.teacher_sample(raw["train"], cfg.finetune.max_train_samples, cfg.project.seed)
        ctx.log.info("teacher trains on a sample of %d training %s (%d rows; distillation reads all of them)",
                     task.sample_units(raw["train"]), task.sample_unit,
                     len(raw["train"]))
    splits = {name: task.features(split, tokenizer) for name, split in raw.items()}
    id2label, _ = label_maps(ctx.path("labels"))
    model = load_teacher(cfg.teacher, tokenizer, id2label, cfg.data.max_length, task.auto_model)
    ctx.log.info("teacher %s: %.1fM parameters", cfg.teacher.model, model.num_parameters() / 1e6)

    callbacks = [TrackerCallback(ctx.tracker)]
    patience = cfg.finetune.early_stopping_patience
    if patience:
        # Stateful: its patience counter is saved in each checkpoint and restored on resume
        # (training_arguments), so a resumed run goes on counting.
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=patience))
    trainer = OrderedEvalTrainer(
        model=model,
        args=training_arguments(cfg.finetune, cfg.runtime, ctx.scratch, cfg.project.seed, task),
        train_dataset=splits["train"],
        eval_dataset=splits["validation"],
        data_collator=task.collator(tokenizer),
        processing_class=tokenizer,
        compute_metrics=task.trainer_metrics(splits["validation"]),
        callbacks=callbacks,
    )
    metrics = train_and_evaluate(trainer, ctx.scratch, splits["test"], task)
    metrics |= training_length(trainer)
    ctx.log.info("teacher trained %d of %d steps; best checkpoint at step %d",
                 metrics["train/steps"], metrics["train/max_steps"], metrics["train/best_step"])
    if patience:
        # A resumed Trainer replaces the callback with one restored from the checkpoint: ask it.
        counter = next(c for c in trainer.callback_handler.callbacks if isinstance(c, EarlyStoppingCallback))
        metrics["train/stopped_early"] = float(stopped_early(counter.early_stopping_patience_counter, patience))
        if not metrics["train/stopped_early"]:
            # A weak teacher is a hidden cause of a weak student: say when the length was not chosen.
            by_steps = cfg.finetune.max_steps > 0
            knob, value = ("max_steps", cfg.finetune.max_steps) if by_steps else ("epochs", cfg.finetune.epochs)
            ctx.log.warning("the teacher's validation %s was still improving when its ceiling "
                            "(finetune.%s = %g) ended training at step %d (best checkpoint at step %d): "
                            "early stopping did not choose its length. Raise finetune.%s for a stronger "
                            "teacher", task.primary_metric, knob, value, metrics["train/steps"],
                            metrics["train/best_step"], knob)
    metrics |= task.save_model(trainer.model, tokenizer, ctx.out / "model")
    save_json(ctx.out / "metrics.json", metrics)
    ctx.log.info("teacher test %s %.4f", task.primary_metric, metrics[f"test/{task.primary_metric}"])
    return StageResult(metrics=metrics, outputs={"teacher_model": "model", "teacher_metrics": "metrics.json"})

