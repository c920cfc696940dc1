"""distill stage: train a smaller student on the teacher's soft targets plus the hard labels.

The student keeps a subset of the teacher's layers (initialised from them) or is a given smaller
model sharing the teacher's vocabulary. Loss: alpha * CE + (1 - alpha) * T^2 * KL (see _losses).
Writes: model/ (student weights, config, tokenizer), metrics.json.
"""

from __future__ import annotations

import torch
from transformers import AutoTokenizer, Trainer, set_seed

from pipeline.stage import StageContext, StageResult
from stages._hf import (
    load_classifier,
    load_student_from,
    load_tokenized,
    model_inputs_only,
    save_json,
    shrink_by_layers,
)
from stages._losses import distillation_loss
from stages._train import (
    TrackerCallback,
    compute_metrics,
    configure_torch,
    make_collator,
    save_model,
    train_and_evaluate,
    training_arguments,
)


class DistillationTrainer(Trainer):
    """A Trainer whose only change is the loss: the teacher's logits enter through KL."""

    def __init__(self, *args, teacher: torch.nn.Module, temperature: float, alpha: float, **kwargs):
        super().__init__(*args, **kwargs)
        self.teacher = teacher.to(self.args.device).eval()
        self.temperature = temperature
        self.alpha = alpha

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs["labels"]
        outputs = model(**inputs)
        with torch.no_grad():
            teacher_logits = self.teacher(**{k: v for k, v in inputs.items() if k != "labels"}).logits
        loss = distillation_loss(outputs.logits, teacher_logits, labels, self.temperature, self.alpha)
        return (loss, outputs) if return_outputs else loss


def run(ctx: StageContext) -> StageResult:
    cfg = ctx.cfg
    dcfg = cfg.distill
    configure_torch(cfg.runtime)
    set_seed(cfg.project.seed)
    data = ctx.input("data")
    tokenizer = AutoTokenizer.from_pretrained(data.output("tokenizer"))
    splits = model_inputs_only(load_tokenized(data))
    teacher = load_classifier(ctx.input("finetune").output("model"))
    if dcfg.student.keep_layers is not None:
        student = shrink_by_layers(teacher, dcfg.student.keep_layers)
    else:
        student = load_student_from(dcfg.student.model, data, tokenizer)
    ctx.log.info(
        "student %.1fM parameters (%d layers) from a %.1fM teacher",
        student.num_parameters() / 1e6, student.config.num_hidden_layers, teacher.num_parameters() / 1e6,
    )
    trainer = DistillationTrainer(
        model=student,
        teacher=teacher,
        temperature=dcfg.temperature,
        alpha=dcfg.alpha,
        args=training_arguments(dcfg, cfg.runtime, ctx.scratch, cfg.project.seed),
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
    ctx.log.info("student test accuracy %.4f, macro-F1 %.4f", metrics["test/accuracy"], metrics["test/macro_f1"])
    return StageResult(
        metrics=metrics,
        outputs={"model": "model", "metrics": "metrics.json"},
        info={"student_layers": student.config.num_hidden_layers},
    )
