"""finetune stage: fine-tune the teacher on the data with the transformers Trainer.

Evaluates on validation every epoch, keeps the best checkpoint, scores it on test, and resumes
from the last checkpoint if an earlier attempt was interrupted.
Writes: model/ (weights, config with id2label, tokenizer), metrics.json.
"""

from __future__ import annotations

from transformers import AutoTokenizer, Trainer, set_seed

from pipeline.stage import StageContext, StageResult
from stages._hf import load_teacher, load_tokenized, model_inputs_only, save_json
from stages._train import (
    TrackerCallback,
    compute_metrics,
    configure_torch,
    make_collator,
    save_model,
    train_and_evaluate,
    training_arguments,
)


def run(ctx: StageContext) -> StageResult:
    cfg = ctx.cfg
    configure_torch(cfg.runtime)
    set_seed(cfg.project.seed)
    data = ctx.input("data")
    tokenizer = AutoTokenizer.from_pretrained(data.output("tokenizer"))
    splits = model_inputs_only(load_tokenized(data))
    model = load_teacher(cfg.teacher, tokenizer, data, cfg.data.max_length)
    ctx.log.info("teacher %s: %.1fM parameters", cfg.teacher.model, model.num_parameters() / 1e6)

    trainer = Trainer(
        model=model,
        args=training_arguments(cfg.finetune, cfg.runtime, ctx.scratch, cfg.project.seed),
        train_dataset=splits["train"],
        eval_dataset=splits["validation"],
        data_collator=make_collator(tokenizer),
        processing_class=tokenizer,
        compute_metrics=compute_metrics,
        callbacks=[TrackerCallback(ctx.tracker)],
    )
    metrics = train_and_evaluate(trainer, ctx.scratch, splits["test"])
    metrics |= save_model(trainer.model, tokenizer, ctx.out / "model")
    save_json(ctx.out / "metrics.json", metrics)
    ctx.log.info("teacher test accuracy %.4f, macro-F1 %.4f", metrics["test/accuracy"], metrics["test/macro_f1"])
    return StageResult(metrics=metrics, outputs={"model": "model", "metrics": "metrics.json"})
