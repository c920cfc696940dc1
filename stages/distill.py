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

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from datasets import Dataset, Value
from transformers import AutoTokenizer, PreTrainedTokenizerFast, Trainer, set_seed

from pipeline.config import DistillConfig, IntermediateConfig
from pipeline.stage import StageContext, StageError, StageResult
from stages._augment import augment_corpus
from stages._hf import (
    MODEL_INPUTS,
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
from stages._vocab import (
    budget_token_ids,
    retokenization,
    trim_embeddings,
    trim_tokenizer,
    trim_vocabulary,
    verify_trim,
)
from stages._width import shrink_width

TEACHER_LOGITS = "teacher_logits"  # a column only when the student's vocabulary differs


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

    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()  # keep the column the model doesn't take
        if TEACHER_LOGITS not in self._signature_columns:
            self._signature_columns = [*self._signature_columns, TEACHER_LOGITS]

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs["labels"]
        precomputed = inputs.get(TEACHER_LOGITS)  # the student reads other pieces (budget trim)
        features = {k: v for k, v in inputs.items() if k not in ("labels", TEACHER_LOGITS)}
        extra = {}
        if self.intermediate and model.training:
            extra = {"output_hidden_states": self.intermediate.hidden_weight > 0,
                     "output_attentions": self.intermediate.attention_weight > 0}
        outputs = model(**features, **extra)
        if precomputed is not None:  # config forbids token-level losses here
            teacher_logits = precomputed
        else:
            with torch.no_grad():
                teacher_out = self.teacher(**features, **extra)
            teacher_logits = teacher_out.logits
        loss = distillation_loss(outputs.logits, teacher_logits, labels, self.temperature, self.alpha)
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


@dataclass
class BudgetVocab:
    """A vocabulary cut to distill.trim_vocab.max_tokens before training: old id of each new id,
    and the student's tokenizer."""

    kept_ids: list[int]
    tokenizer: PreTrainedTokenizerFast


def make_student(dcfg: DistillConfig, teacher, data, tokenizer, budget: BudgetVocab | None = None):
    spec = dcfg.student
    if spec.keep_layers is None:
        student = load_student_from(spec.model, data, tokenizer)
    else:
        student = shrink_by_layers(teacher, spec.keep_layers)
        if spec.narrower:
            student = shrink_width(student, spec.hidden_size, spec.num_attention_heads, spec.intermediate_size)
    if budget is not None:  # start from the teacher's rows of the tokens kept
        trim_embeddings(student, budget.kept_ids, budget.tokenizer.pad_token_id)
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


def search(ctx: StageContext, teacher, data, tokenizer, splits,
           budget: BudgetVocab | None = None) -> tuple[DistillConfig, list[dict]]:
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
            student = make_student(trial_cfg, teacher, data, tokenizer, budget)
            trainer = build_trainer(ctx, trial_cfg, teacher, student, budget.tokenizer if budget else tokenizer,
                                    train, splits["validation"], scratch)
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
    tokenizer = AutoTokenizer.from_pretrained(data.output("tokenizer"))  # the teacher's
    teacher = load_classifier(ctx.input("finetune").output("model"))
    info: dict = {}
    budget = None
    if dcfg.trim_vocab.enabled and dcfg.trim_vocab.max_tokens is not None:
        budget, info["trim_vocab"] = plan_budget_vocab(ctx, tokenizer)
    splits, info["augment"] = distillation_splits(ctx, teacher, tokenizer, budget)
    if dcfg.search.enabled:
        dcfg, info["search_trials"] = search(ctx, teacher, data, tokenizer, splits, budget)
        info["chosen"] = {k: getattr(dcfg, k) for k in ("temperature", "alpha", "learning_rate")}
        set_seed(cfg.project.seed)
    student = make_student(dcfg, teacher, data, tokenizer, budget)
    student_tokenizer = budget.tokenizer if budget else tokenizer
    ctx.log.info(
        "student %.1fM parameters (%d layers) from a %.1fM teacher",
        student.num_parameters() / 1e6, student.config.num_hidden_layers, teacher.num_parameters() / 1e6,
    )
    trainer = build_trainer(ctx, dcfg, teacher, student, student_tokenizer, splits["train"],
                            splits["validation"], ctx.scratch)
    metrics = train_and_evaluate(trainer, ctx.scratch, splits["test"])
    if "chosen" in info:
        metrics |= {f"search/best_{k}": float(v) for k, v in info["chosen"].items()}
    trainer.model.set_attn_implementation("sdpa")  # the fast path for everything downstream
    model = trainer.model
    info["student_layers"] = model.config.num_hidden_layers
    if budget is not None:
        metrics |= {"vocab/original_size": float(len(tokenizer)), "vocab/trimmed_size": float(len(budget.kept_ids)),
                    "vocab/validation_changed_share": info["trim_vocab"]["validation"]["changed_share"]}
    elif dcfg.trim_vocab.enabled:
        model, student_tokenizer, trim_metrics, info["trim_vocab"] = trim_student(ctx, model, tokenizer)
        metrics |= trim_metrics
    metrics |= save_model(model, student_tokenizer, ctx.out / "model")
    save_json(ctx.out / "metrics.json", metrics)
    ctx.log.info("student test accuracy %.4f, macro-F1 %.4f", metrics["test/accuracy"], metrics["test/macro_f1"])
    return StageResult(metrics=metrics, outputs={"model": "model", "metrics": "metrics.json"}, info=info)


def augmentation_texts(ctx: StageContext, train_texts: list[str], mask_token: str) -> tuple[list[str], dict]:
    """New inputs made from the training texts, plus the unlabelled in-domain file."""
    acfg = ctx.cfg.distill.augment
    extra = augment_corpus(train_texts, acfg.methods, acfg.copies, ctx.cfg.project.seed,
                           mask_token, acfg.mask_prob) if acfg.methods else []
    unlabeled = 0
    if acfg.unlabeled_texts is not None:
        if not acfg.unlabeled_texts.is_file():
            raise StageError(f"distill.augment.unlabeled_texts: {acfg.unlabeled_texts} does not exist")
        lines = [t.strip() for t in acfg.unlabeled_texts.read_text().splitlines() if t.strip()]
        unlabeled = len(lines)
        extra += lines
    ctx.log.info("augmentation: %d new inputs (%d unlabelled) for %d training texts",
                 len(extra), unlabeled, len(train_texts))
    return extra, {"augmented": len(extra) - unlabeled, "unlabeled": unlabeled, "original": len(train_texts)}


def encode(tokenizer, texts: list[str], pairs: list[str] | None, max_length: int, labels) -> Dataset:
    enc = tokenizer(texts, pairs, truncation=True, max_length=max_length)
    return Dataset.from_dict({k: enc[k] for k in MODEL_INPUTS if k in enc} | {"labels": list(labels)})


def distillation_splits(ctx: StageContext, teacher, tokenizer, budget: BudgetVocab | None):
    """Model inputs per split. Augmented / unlabelled texts join train with label -100 (soft targets
    only). With a budget vocabulary the student reads its own pieces, so the teacher's logits are
    computed once, on the teacher's pieces, and carried as a column."""
    from datasets import DatasetDict, concatenate_datasets

    raw = load_tokenized(ctx.input("data"))
    splits = model_inputs_only(raw)
    max_length, seed = ctx.cfg.data.max_length, ctx.cfg.project.seed
    extra, info = [], None
    if ctx.cfg.distill.augment.enabled:
        extra, info = augmentation_texts(ctx, list(raw["train"]["text"]), tokenizer.mask_token)
    unlabelled = [IGNORE_LABEL] * len(extra)
    if budget is None:
        if extra:
            added = encode(tokenizer, extra, None, max_length, unlabelled)
            train = splits["train"].cast_column("labels", Value("int64"))
            merged = concatenate_datasets([train, added.cast(train.features)])
            splits["train"] = merged.shuffle(seed=seed)
        return splits, info
    out = DatasetDict()
    for name, split in raw.items():
        pairs = list(split["text_pair"]) if "text_pair" in split.column_names else None
        student = encode(budget.tokenizer, list(split["text"]), pairs, max_length, split["label"])
        teacher_side = splits[name]
        if name == "train" and extra:  # augmented texts come without a pair
            student = concatenate_datasets(
                [student, encode(budget.tokenizer, extra, None, max_length, unlabelled).cast(student.features)])
            teacher_side = teacher_side.cast_column("labels", Value("int64"))
            teacher_side = concatenate_datasets(
                [teacher_side, encode(tokenizer, extra, None, max_length, unlabelled).cast(teacher_side.features)])
        logits = teacher_logits(teacher, tokenizer, teacher_side, f"teacher logits ({name})")
        out[name] = student.add_column(TEACHER_LOGITS, logits.tolist())
    out["train"] = out["train"].shuffle(seed=seed)
    return out, info


@torch.no_grad()
def teacher_logits(teacher, tokenizer, ds: Dataset, desc: str, batch_size: int = 64) -> np.ndarray:
    """The teacher's logits for every row, batched by similar length (eval mode: deterministic)."""
    from tqdm.auto import tqdm

    teacher.eval()
    collate = make_collator(tokenizer)
    columns = {k: ds[k] for k in MODEL_INPUTS if k in ds.column_names}
    order = np.argsort([len(ids) for ids in columns["input_ids"]], kind="stable")
    out = np.zeros((len(ds), teacher.config.num_labels), dtype=np.float32)
    for start in tqdm(range(0, len(ds), batch_size), desc=desc, leave=False):
        rows = order[start : start + batch_size]
        batch = collate([{k: v[i] for k, v in columns.items()} for i in rows]).to(teacher.device)
        out[rows] = teacher(**batch).logits.float().cpu().numpy()
    return out


def plan_budget_vocab(ctx: StageContext, tokenizer) -> tuple[BudgetVocab, dict]:
    """Cut the vocabulary to max_tokens from the train (+ extra in-domain) texts and report how
    the validation texts' pieces change (the student is then trained on the new pieces)."""
    tcfg = ctx.cfg.distill.trim_vocab
    splits = load_tokenized(ctx.input("data"))
    texts = domain_texts(ctx, splits, ("train",))
    kept = budget_token_ids(tokenizer, texts, tcfg.max_tokens, tcfg.keep_characters)
    budget = BudgetVocab(kept, trim_tokenizer(tokenizer, kept))
    report = retokenization(tokenizer, budget.tokenizer, list(splits["validation"]["text"]), ctx.cfg.data.max_length)
    ctx.log.info("vocabulary budget: %d -> %d tokens; validation texts split differently: %.1f%%, "
                 "tokens per text %.1f -> %.1f", len(tokenizer), len(kept), 100 * report["changed_share"],
                 report["tokens_per_text_before"], report["tokens_per_text_after"])
    return budget, {"kept": len(kept), "original": len(tokenizer), "validation": report}


def domain_texts(ctx: StageContext, splits, names: tuple[str, ...]) -> list[str]:
    """Texts (and pairs) of the named splits plus distill.trim_vocab.extra_texts."""
    tcfg = ctx.cfg.distill.trim_vocab
    texts = [t for name in names for t in splits[name]["text"]]
    if "text_pair" in splits["train"].column_names:
        texts += [t for name in names for t in splits[name]["text_pair"]]
    if tcfg.extra_texts is not None:
        if not tcfg.extra_texts.is_file():
            raise StageError(f"distill.trim_vocab.extra_texts: {tcfg.extra_texts} does not exist")
        texts += [line.strip() for line in tcfg.extra_texts.read_text().splitlines() if line.strip()]
    return texts


def trim_student(ctx: StageContext, model, tokenizer):
    """Vocabulary from the train and validation texts (+ extra in-domain text); the proof runs on
    validation: same token pieces, same predictions. Test texts are left out so the benchmark shows
    honestly what unseen words cost."""
    import copy

    tcfg = ctx.cfg.distill.trim_vocab
    splits = load_tokenized(ctx.input("data"))
    texts = domain_texts(ctx, splits, ("train", "validation"))
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
