"""distill stage: train a smaller student on the teacher's soft targets plus the hard labels.

The student keeps a subset of the teacher's layers (initialised from them), optionally narrowed
(_width: hidden size, heads, FFN neurons chosen by importance), or is a given smaller model sharing
the teacher's vocabulary. Loss: alpha * CE + (1 - alpha) * T^2 * KL, plus optional hidden-state MSE
and attention KL on mapped layers (_losses). Options: augmented / unlabelled inputs trained on soft
targets only (_augment), an Optuna search over temperature, alpha and learning rate (nested MLflow
runs), and vocabulary trimming after training with a proof on validation (_vocab).
Writes: model/ (student weights, config, tokenizer), metrics.json.
"""

from __future__ import annotations

from pathlib import Path

import torch
from datasets import Dataset
from transformers import AutoTokenizer, Trainer, set_seed

from pipeline.config import DistillConfig, IntermediateConfig
from pipeline.stage import StageContext, StageError, StageResult
from stages._augment import augment_corpus
from stages._hf import (
    load_classifier,
    load_student_from,
    load_tokenized,
    model_inputs_only,
    save_json,
    shrink_by_layers,
)
from stages._losses import (
    IGNORE_LABEL,
    attention_kl,
    distillation_loss,
    hidden_state_mse,
    uniform_layer_map,
)
from stages._train import (
    TrackerCallback,
    compute_metrics,
    configure_torch,
    make_collator,
    save_model,
    train_and_evaluate,
    training_arguments,
)
from stages._vocab import trim_vocabulary, verify_trim
from stages._width import shrink_width


class DistillationTrainer(Trainer):
    """A Trainer whose change is the loss: the teacher's logits enter through KL, and optionally
    its hidden states (MSE, through a learned projection when widths differ) and attention
    distributions (KL) for the mapped layers."""

    def __init__(self, *args, teacher: torch.nn.Module, temperature: float, alpha: float,
                 intermediate: IntermediateConfig | None = None,
                 layer_map: list[tuple[int, int]] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.teacher = teacher.to(self.args.device).eval()
        self.temperature = temperature
        self.alpha = alpha
        self.intermediate = intermediate if intermediate and intermediate.enabled else None
        self.layer_map = layer_map or []
        self.projection = None
        if self.intermediate:
            if self.intermediate.attention_weight > 0:  # only eager attention returns probabilities
                self.model.set_attn_implementation("eager")
                self.teacher.set_attn_implementation("eager")
            s_width, t_width = self.model.config.hidden_size, self.teacher.config.hidden_size
            if self.intermediate.hidden_weight > 0 and s_width != t_width:
                self.projection = torch.nn.Linear(s_width, t_width).to(self.args.device)

    # The projection is trained with the student but is not part of it: checkpoints carry it
    # separately (written before the trainer state, which marks a checkpoint complete).
    def _save_checkpoint(self, model, trial):
        if self.projection is not None:
            folder = Path(self.args.output_dir) / f"checkpoint-{self.state.global_step}"
            folder.mkdir(parents=True, exist_ok=True)
            torch.save(self.projection.state_dict(), folder / "projection.pt")
        super()._save_checkpoint(model, trial)

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        saved = Path(resume_from_checkpoint) / "projection.pt"
        if self.projection is not None and saved.is_file():
            self.projection.load_state_dict(torch.load(saved, map_location=self.args.device))

    def create_optimizer(self):
        optimizer = super().create_optimizer()
        if self.projection is not None:  # trained with the student, not saved with it
            optimizer.add_param_group({"params": list(self.projection.parameters()), "weight_decay": 0.0})
        return optimizer

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs["labels"]
        features = {k: v for k, v in inputs.items() if k != "labels"}
        extra = {}
        if self.intermediate and model.training:
            extra = {"output_hidden_states": self.intermediate.hidden_weight > 0,
                     "output_attentions": self.intermediate.attention_weight > 0}
        outputs = model(**features, **extra)
        with torch.no_grad():
            teacher_out = self.teacher(**features, **extra)
        loss = distillation_loss(outputs.logits, teacher_out.logits, labels, self.temperature, self.alpha)
        mask = features["attention_mask"]
        if extra.get("output_hidden_states"):
            loss = loss + self.intermediate.hidden_weight * hidden_state_mse(
                outputs.hidden_states, teacher_out.hidden_states, self.layer_map, mask, self.projection)
        if extra.get("output_attentions"):
            loss = loss + self.intermediate.attention_weight * attention_kl(
                outputs.attentions, teacher_out.attentions, self.layer_map, mask)
        return (loss, outputs) if return_outputs else loss


def default_layer_map(dcfg: DistillConfig, student_layers: int, teacher_layers: int) -> list[tuple[int, int]]:
    """Explicit map, else each kept layer learns from the teacher layer it was copied from,
    else TinyBERT's uniform map."""
    if dcfg.intermediate.layer_map is not None:
        pairs = [tuple(p) for p in dcfg.intermediate.layer_map]
    elif dcfg.student.keep_layers is not None:
        pairs = [(0, 0)] + [(i + 1, k + 1) for i, k in enumerate(dcfg.student.keep_layers)]
    else:
        pairs = uniform_layer_map(student_layers, teacher_layers)
    bad = [(s, t) for s, t in pairs if s > student_layers or t > teacher_layers]
    if bad:
        raise StageError(
            f"distill.intermediate.layer_map pairs {bad} are out of range: the student has hidden "
            f"states 0..{student_layers} and the teacher 0..{teacher_layers} (0 = embeddings)"
        )
    return pairs


def make_student(dcfg: DistillConfig, teacher, data, tokenizer):
    spec = dcfg.student
    if spec.keep_layers is None:
        return load_student_from(spec.model, data, tokenizer)
    student = shrink_by_layers(teacher, spec.keep_layers)
    if spec.narrower:
        student = shrink_width(student, spec.hidden_size, spec.num_attention_heads, spec.intermediate_size)
    return student


def build_trainer(ctx: StageContext, dcfg: DistillConfig, teacher, student, tokenizer, train, validation,
                  scratch):
    return DistillationTrainer(
        model=student,
        teacher=teacher,
        temperature=dcfg.temperature,
        alpha=dcfg.alpha,
        intermediate=dcfg.intermediate,
        layer_map=default_layer_map(dcfg, student.config.num_hidden_layers, teacher.config.num_hidden_layers),
        args=training_arguments(dcfg, ctx.cfg.runtime, scratch, ctx.cfg.project.seed),
        train_dataset=train,
        eval_dataset=validation,
        data_collator=make_collator(tokenizer),
        processing_class=tokenizer,
        compute_metrics=compute_metrics,
        callbacks=[TrackerCallback(ctx.tracker)],
    )


def search(ctx: StageContext, teacher, data, tokenizer, splits) -> tuple[DistillConfig, list[dict]]:
    """Optuna TPE over temperature, alpha and learning rate; objective = validation accuracy."""
    import shutil

    import optuna

    dcfg, scfg = ctx.cfg.distill, ctx.cfg.distill.search
    train = splits["train"]
    if scfg.max_train_samples and len(train) > scfg.max_train_samples:
        train = train.shuffle(seed=ctx.cfg.project.seed).select(range(scfg.max_train_samples))
    trials: list[dict] = []

    def objective(trial: optuna.Trial) -> float:
        values = {
            "temperature": trial.suggest_float("temperature", *scfg.temperature),
            "alpha": trial.suggest_float("alpha", *scfg.alpha),
            "learning_rate": trial.suggest_float("learning_rate", *scfg.learning_rate, log=True),
        }
        trial_cfg = dcfg.model_copy(update=values | {"epochs": scfg.epochs, "max_steps": -1})
        scratch = ctx.scratch / f"trial-{trial.number}"
        shutil.rmtree(scratch, ignore_errors=True)  # trials are cheap to redo; never resume one
        with ctx.tracker.child_run(f"trial-{trial.number}", values):
            set_seed(ctx.cfg.project.seed)
            student = make_student(trial_cfg, teacher, data, tokenizer)
            trainer = build_trainer(ctx, trial_cfg, teacher, student, tokenizer, train,
                                    splits["validation"], scratch)
            trainer.train()
            accuracy = trainer.evaluate(metric_key_prefix="eval")["eval_accuracy"]
            ctx.tracker.log_metrics({"eval/accuracy": accuracy})
        shutil.rmtree(scratch, ignore_errors=True)
        trials.append(values | {"number": trial.number, "eval_accuracy": accuracy})
        ctx.log.info("trial %d: %s -> validation accuracy %.4f", trial.number, values, accuracy)
        return accuracy

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize",
                                sampler=optuna.samplers.TPESampler(seed=ctx.cfg.project.seed))
    study.optimize(objective, n_trials=scfg.trials)
    best = study.best_params
    ctx.log.info("best trial %d: %s (validation accuracy %.4f)", study.best_trial.number, best, study.best_value)
    return dcfg.model_copy(update=best), trials


def run(ctx: StageContext) -> StageResult:
    cfg = ctx.cfg
    dcfg = cfg.distill
    configure_torch(cfg.runtime)
    set_seed(cfg.project.seed)
    data = ctx.input("data")
    tokenizer = AutoTokenizer.from_pretrained(data.output("tokenizer"))
    splits = model_inputs_only(load_tokenized(data))
    teacher = load_classifier(ctx.input("finetune").output("model"))
    info: dict = {}
    if dcfg.augment.enabled:
        splits["train"], info["augment"] = with_augmentation(ctx, splits["train"], tokenizer)
    if dcfg.search.enabled:
        dcfg, info["search_trials"] = search(ctx, teacher, data, tokenizer, splits)
        info["chosen"] = {k: getattr(dcfg, k) for k in ("temperature", "alpha", "learning_rate")}
        set_seed(cfg.project.seed)
    student = make_student(dcfg, teacher, data, tokenizer)
    ctx.log.info(
        "student %.1fM parameters (%d layers) from a %.1fM teacher",
        student.num_parameters() / 1e6, student.config.num_hidden_layers, teacher.num_parameters() / 1e6,
    )
    trainer = build_trainer(ctx, dcfg, teacher, student, tokenizer, splits["train"], splits["validation"],
                            ctx.scratch)
    metrics = train_and_evaluate(trainer, ctx.scratch, splits["test"])
    if "chosen" in info:
        metrics |= {f"search/best_{k}": float(v) for k, v in info["chosen"].items()}
    trainer.model.set_attn_implementation("sdpa")  # the fast path for everything downstream
    model = trainer.model
    info["student_layers"] = model.config.num_hidden_layers
    if dcfg.trim_vocab.enabled:
        model, tokenizer, trim_metrics, info["trim_vocab"] = trim_student(ctx, model, tokenizer)
        metrics |= trim_metrics
    metrics |= save_model(model, tokenizer, ctx.out / "model")
    save_json(ctx.out / "metrics.json", metrics)
    ctx.log.info("student test accuracy %.4f, macro-F1 %.4f", metrics["test/accuracy"], metrics["test/macro_f1"])
    return StageResult(metrics=metrics, outputs={"model": "model", "metrics": "metrics.json"}, info=info)


def with_augmentation(ctx: StageContext, train, tokenizer):
    """Train split plus augmented / unlabelled texts (label -100: soft targets only)."""
    from datasets import Value, concatenate_datasets

    acfg = ctx.cfg.distill.augment
    texts = list(load_tokenized(ctx.input("data"))["train"]["text"])
    extra = augment_corpus(texts, acfg.methods, acfg.copies, ctx.cfg.project.seed,
                           tokenizer.mask_token, acfg.mask_prob) if acfg.methods else []
    unlabeled = 0
    if acfg.unlabeled_texts is not None:
        if not acfg.unlabeled_texts.is_file():
            raise StageError(f"distill.augment.unlabeled_texts: {acfg.unlabeled_texts} does not exist")
        lines = [t.strip() for t in acfg.unlabeled_texts.read_text().splitlines() if t.strip()]
        unlabeled = len(lines)
        extra += lines
    enc = tokenizer(extra, truncation=True, max_length=ctx.cfg.data.max_length)
    columns = {k: enc[k] for k in train.column_names if k in enc}
    augmented = Dataset.from_dict(columns | {"labels": [IGNORE_LABEL] * len(extra)})
    train = train.cast_column("labels", Value("int64"))
    augmented = augmented.cast(train.features)
    ctx.log.info("augmentation: %d new inputs (%d unlabelled) for %d training texts",
                 len(extra), unlabeled, len(texts))
    merged = concatenate_datasets([train, augmented]).shuffle(seed=ctx.cfg.project.seed)
    return merged, {"augmented": len(extra) - unlabeled, "unlabeled": unlabeled, "original": len(texts)}


def trim_student(ctx: StageContext, model, tokenizer):
    """Vocabulary from the train and validation texts (+ extra in-domain text); the proof runs on
    validation: same token pieces, same predictions. Test texts are left out so the benchmark shows
    honestly what unseen words cost."""
    import copy

    tcfg, data = ctx.cfg.distill.trim_vocab, ctx.input("data")
    splits = load_tokenized(data)
    texts = list(splits["train"]["text"]) + list(splits["validation"]["text"])
    if "text_pair" in splits["train"].column_names:
        texts += list(splits["train"]["text_pair"]) + list(splits["validation"]["text_pair"])
    if tcfg.extra_texts is not None:
        if not tcfg.extra_texts.is_file():
            raise StageError(f"distill.trim_vocab.extra_texts: {tcfg.extra_texts} does not exist")
        texts += [line.strip() for line in tcfg.extra_texts.read_text().splitlines() if line.strip()]
    original = copy.deepcopy(model).cpu()
    result = trim_vocabulary(model.cpu(), tokenizer, texts, tcfg.keep_characters)
    proof = verify_trim(original, tokenizer, result, list(splits["validation"]["text"]),
                        ctx.cfg.data.max_length)
    ctx.log.info("vocabulary %d -> %d tokens; validation check %s",
                 result.original_size, len(result.kept_ids), proof)
    if proof["argmax_changes"] or proof["sequences_with_different_ids"] or proof["max_abs_logit_diff"] > 1e-4:
        raise StageError(f"vocabulary trimming changed validation predictions: {proof}")
    metrics = {"vocab/original_size": float(result.original_size), "vocab/trimmed_size": float(len(result.kept_ids)),
               "vocab/validation_max_logit_diff": proof["max_abs_logit_diff"]}
    return result.model, result.tokenizer, metrics, proof | {"kept": len(result.kept_ids)}
