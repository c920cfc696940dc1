"""distill stage: train a smaller student on the teacher's soft targets plus the gold labels.

The student keeps a subset of the teacher's layers (initialised from them), optionally narrowed
(_width: hidden size, heads, FFN neurons chosen by importance), or is a given smaller model sharing
the teacher's vocabulary. The loss is the task's: alpha * CE + (1 - alpha) * T^2 * KL on the logits
(per word for token classification), plus optional hidden-state MSE and attention KL on mapped
layers (_losses). With a vocabulary budget the student reads other pieces than its teacher, so the
teacher's targets are computed once on its own pieces and carried as a column. Options: augmented /
unlabelled inputs trained on soft targets only (classification), vocabulary trimming after training
with a proof on validation (_vocab). With the search stage on, its chosen settings replace the
distill section and its trained weights are reused (same settings, same seed: the same student).
Writes: model/ (student weights, config, tokenizer), metrics.json, settings.json (the distill
settings used).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from transformers import AutoTokenizer, PreTrainedTokenizerFast, TrainerCallback, set_seed

from pipeline.config import DistillConfig, IntermediateConfig
from pipeline.stage import StageContext, StageError, StageResult
from stages._corpus import unlabeled_texts
from stages._hf import (
    label_maps,
    load_model,
    load_splits_dir,
    load_student_from,
    save_json,
    shrink_by_layers,
)
from stages._losses import attention_kl, hidden_state_mse, uniform_layer_map
from stages._train import (
    OrderedEvalTrainer,
    TrackerCallback,
    configure_torch,
    split_scores,
    train_and_evaluate,
    training_arguments,
)
from stages._vocab import (
    SHARED_ROWS_FILE,
    budget_token_ids,
    retokenization,
    share_rows,
    shared_row_plan,
    trim_embeddings,
    trim_tokenizer,
    trim_vocabulary,
    verify_trim,
)
from stages._width import shrink_width
from stages.tasks import get_task
from stages.tasks.base import TEACHER_LOGITS, Task


class ZeroGradAfterStep(TrainerCallback):
    """The Trainer zeroes only the model's gradients after an optimizer step; a module trained
    beside it (the hidden-state projection) needs the same, or its gradients add up across steps
    (and a resumed run, starting them from zero, trains another projection)."""

    def __init__(self, module: torch.nn.Module):
        self.module = module

    def on_optimizer_step(self, args, state, control, **kwargs):
        self.module.zero_grad(set_to_none=True)


class DistillationTrainer(OrderedEvalTrainer):
    """A Trainer whose change is the loss: the teacher's logits (live, or precomputed as a column)
    enter through the task's distillation loss, and optionally its hidden states (MSE, through a
    learned projection when widths differ) and attention distributions (KL) for mapped layers."""

    def __init__(self, *args, task: Task, teacher: torch.nn.Module, temperature: float, alpha: float,
                 intermediate: IntermediateConfig | None = None,
                 layer_map: list[tuple[int, int]] | None = None, pairs=None, pair_weight: float = 0.0,
                 **kwargs):
        super().__init__(*args, **kwargs)
        self.pairs, self.pair_weight = pairs, pair_weight  # pairs: built only when pair_weight > 0
        self.pair_calls: int | None = None  # training forward passes so far (set from the step on resume)
        self.task = task
        self.teacher = teacher.to(self.args.device).eval()
        self.temperature = temperature
        self.alpha = alpha
        self.intermediate = intermediate if intermediate and intermediate.enabled else None
        self.layer_map = layer_map or []
        # Targets precomputed on the train rows mean the student reads other pieces than the
        # teacher: the teacher must never be run live on its inputs.
        self.precomputed = self.train_dataset is not None and TEACHER_LOGITS in self.train_dataset.column_names
        self.projection = None
        if self.intermediate:
            if self.intermediate.attention_weight > 0:  # only eager attention returns probabilities
                self.model.set_attn_implementation("eager")
                self.teacher.set_attn_implementation("eager")
            s_width, t_width = self.model.config.hidden_size, self.teacher.config.hidden_size
            if self.intermediate.hidden_weight > 0 and s_width != t_width:
                self.projection = torch.nn.Linear(s_width, t_width).to(self.args.device)
                self.add_callback(ZeroGradAfterStep(self.projection))

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

    def _get_train_sampler(self, *args, **kwargs):
        if self.task.keeps_batch_order:  # the task ordered the rows (e.g. a query's pairs together)
            return torch.utils.data.SequentialSampler(args[0] if args and args[0] is not None else self.train_dataset)
        return super()._get_train_sampler(*args, **kwargs)

    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()  # keep the columns the model doesn't take
        extra = [c for c in self.task.distillation_columns if c not in self._signature_columns]
        self._signature_columns = [*self._signature_columns, *extra]

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        side = {k: inputs[k] for k in ("labels", *self.task.distillation_columns) if k in inputs}
        features = {k: v for k, v in inputs.items() if k not in side}
        extra = {}
        if self.intermediate and model.training:
            extra = {"output_hidden_states": self.intermediate.hidden_weight > 0,
                     "output_attentions": self.intermediate.attention_weight > 0}
        outputs = model(**features, **extra)
        teacher_logits = side.get(TEACHER_LOGITS)  # precomputed: the student reads other pieces
        if teacher_logits is None and self.precomputed:
            if model.training:
                raise StageError("a training batch came without the teacher's precomputed targets")
            # An evaluation row without targets (see Task.distillation_data): the student stands in
            # for the teacher, so the distillation term is 0 and the loss is its label part.
            teacher_logits = outputs.logits.detach()
        elif teacher_logits is None:  # config forbids token-level losses with precomputed targets
            with torch.no_grad():
                teacher_out = self.teacher(**features, **extra)
            teacher_logits = teacher_out.logits
        mask = features["attention_mask"]
        loss = self.task.distillation_loss(outputs.logits, teacher_logits, side | {"attention_mask": mask},
                                           self.temperature, self.alpha)
        if extra.get("output_hidden_states"):
            loss = loss + self.intermediate.hidden_weight * hidden_state_mse(
                outputs.hidden_states, teacher_out.hidden_states, self.layer_map, mask, self.projection)
        if extra.get("output_attentions"):
            loss = loss + self.intermediate.attention_weight * attention_kl(
                outputs.attentions, teacher_out.attentions, self.layer_map, mask)
        if self.pairs is not None and model.training:
            if self.pair_calls is None:  # the same pair batch at the same step, resumed or not
                self.pair_calls = self.state.global_step * self.args.gradient_accumulation_steps
            loss = loss + self.pair_weight * self.pairs.loss(model, self.pair_calls)
            self.pair_calls += 1
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


def make_student(dcfg: DistillConfig, teacher, id2label, tokenizer, task: Task, budget: BudgetVocab | None = None):
    spec = dcfg.student
    if spec.keep_layers is None:
        student = load_student_from(spec.model, id2label, tokenizer, task.auto_model)
    else:
        student = shrink_by_layers(teacher, spec.keep_layers)
        if spec.narrower:
            student = shrink_width(student, spec.hidden_size, spec.num_attention_heads, spec.intermediate_size)
    if budget is not None:  # start from the teacher's rows of the tokens kept
        trim_embeddings(student, budget.kept_ids, budget.tokenizer.pad_token_id)
    return task.adapt_student(student, teacher)


def build_trainer(ctx: StageContext, task: Task, dcfg: DistillConfig, teacher, student, tokenizer, train,
                  validation, scratch, pairs=None):
    return DistillationTrainer(
        model=student,
        task=task,
        teacher=teacher,
        temperature=dcfg.temperature,
        alpha=dcfg.alpha,
        intermediate=dcfg.intermediate,
        layer_map=default_layer_map(dcfg, student.config.num_hidden_layers, teacher.config.num_hidden_layers),
        pairs=pairs,
        pair_weight=dcfg.pair_weight,
        args=training_arguments(dcfg, ctx.cfg.runtime, scratch, ctx.cfg.project.seed, task),
        train_dataset=train,
        eval_dataset=validation,
        data_collator=task.collator_for_distillation(tokenizer),
        processing_class=tokenizer,
        compute_metrics=task.trainer_metrics(validation),
        callbacks=[TrackerCallback(ctx.tracker)],
    )


def prepare_distillation(ctx: StageContext, task: Task, raw, teacher, tokenizer):
    """The vocabulary budget (cut before training, unless rows are shared after it) and the
    student's inputs with the teacher's targets: (budget or None, splits, info)."""
    tcfg = ctx.cfg.distill.trim_vocab
    info: dict = {}
    budget = None
    if tcfg.max_tokens is not None and not tcfg.share_rows:  # max_tokens implies enabled
        budget, info["trim_vocab"] = plan_budget_vocab(ctx, task, raw, tokenizer)
    student_tokenizer = budget.tokenizer if budget else tokenizer
    # The teacher's targets are precomputed when the student reads other pieces, for the train rows
    # alone (see Task.distillation_data); otherwise the teacher runs live beside the student.
    targets_for = frozenset({"train"}) if budget is not None else frozenset()
    splits, info["augment"] = task.distillation_data(ctx, raw, teacher, tokenizer, student_tokenizer, targets_for)
    return budget, splits, info


def searched(ctx: StageContext) -> tuple[StageContext, dict | None]:
    """With the search on, the student it chose (its distill settings replace the config's)."""
    result = ctx.read_json("search_result")
    if not result.get("enabled"):
        return ctx, None
    if result.get("chosen") is None:
        raise StageError(f"the search finished no student: {result.get('message')}")
    dcfg = DistillConfig.model_validate(result["chosen"]["distill"])
    ctx.log.info("the search chose trial %d: %s", result["chosen"]["number"], result["chosen"]["params"])
    if not result["feasible"]:
        ctx.log.warning("it is the best found, not within budget: %s", result["message"])
    return replace(ctx, cfg=ctx.cfg.model_copy(update={"distill": dcfg})), result


def run(ctx: StageContext) -> StageResult:
    ctx, search = searched(ctx)
    cfg = ctx.cfg
    dcfg = cfg.distill
    task = get_task(cfg)
    configure_torch(cfg.runtime)
    set_seed(cfg.project.seed)
    tokenizer = AutoTokenizer.from_pretrained(ctx.path("teacher_tokenizer"))
    raw = load_splits_dir(ctx.path("dataset"))
    id2label, _ = label_maps(ctx.path("labels"))
    teacher = load_model(ctx.path("teacher_model"), task.auto_model)
    budget, splits, info = prepare_distillation(ctx, task, raw, teacher, tokenizer)
    student_tokenizer = budget.tokenizer if budget else tokenizer
    if search is not None:
        info["search"] = {"chosen": search["chosen"]["params"], "number": search["chosen"]["number"],
                          "feasible": search["feasible"]}
    if ctx.has("search_winner"):  # trained by the search with these very settings: not redone
        student = load_model(ctx.path("search_winner"), task.auto_model)
        ctx.log.info("student: the search's trained trial %d (%s)", search["chosen"]["number"],
                     ctx.path("search_winner"))
    else:
        student = make_student(dcfg, teacher, id2label, tokenizer, task, budget)
    ctx.log.info(
        "student %.1fM parameters (%d layers) from a %.1fM teacher",
        student.num_parameters() / 1e6, student.config.num_hidden_layers, teacher.num_parameters() / 1e6,
    )
    pairs = task.pair_supervision(raw["train"], student_tokenizer) if dcfg.pair_weight > 0 else None
    if pairs is not None:
        info["pair_supervision"] = {"pairs": len(pairs.pairs), "weight": dcfg.pair_weight,
                                    "batch_size": pairs.batch_size, "loss": pairs.loss_name}
        ctx.log.info("pair supervision: %s on %d train pairs, weight %g", pairs.loss_name, len(pairs.pairs),
                     dcfg.pair_weight)
    trainer = build_trainer(ctx, task, dcfg, teacher, student, student_tokenizer, splits["train"],
                            splits["validation"], ctx.scratch, pairs)
    if ctx.has("search_winner"):
        metrics = split_scores(trainer, task, eval=splits["validation"], test=splits["test"])
    else:
        metrics = train_and_evaluate(trainer, ctx.scratch, splits["test"], task)
    trainer.model.set_attn_implementation("sdpa")  # the fast path for everything downstream
    model = trainer.model
    info["student_layers"] = model.config.num_hidden_layers
    info["train_rows"] = len(splits["train"])  # the transfer set (the teacher may have trained on a sample)
    if budget is not None:
        metrics |= {"vocab/original_size": float(len(tokenizer)), "vocab/trimmed_size": float(len(budget.kept_ids)),
                    "vocab/validation_changed_share": info["trim_vocab"]["validation"]["changed_share"]}
    elif dcfg.trim_vocab.share_rows:
        shared = plan_shared_rows(ctx, task, raw, model, tokenizer)
        info["trim_vocab"] = {"kept": len(shared[0]), "original": len(tokenizer), "mode": "shared rows"}
        metrics = rescored_after_sharing(trainer, splits, task, metrics)
        metrics |= {"vocab/original_size": float(len(tokenizer)), "vocab/kept_rows": float(len(shared[0]))}
        ctx.log.info("rows shared: validation %s %.4f -> %.4f, test %.4f -> %.4f", task.primary_metric,
                     *(metrics[f"{prefix}{split}/{task.primary_metric}"]
                       for split in ("eval", "test") for prefix in ("full_rows/", "")))
    elif dcfg.trim_vocab.enabled:
        model, student_tokenizer, trim_metrics, info["trim_vocab"] = trim_student(ctx, task, raw, model, tokenizer)
        metrics |= trim_metrics
    metrics |= task.save_model(model, student_tokenizer, ctx.out / "model")
    if dcfg.trim_vocab.share_rows:
        np.savez(ctx.out / "model" / SHARED_ROWS_FILE, kept=np.asarray(shared[0]), position=shared[1])
    save_json(ctx.out / "metrics.json", metrics)
    # The settings this student was made with (the search's choice where it ran), for the model card.
    save_json(ctx.out / "settings.json", {"distill": dcfg.model_dump(mode="json"), "search": info.get("search")})
    ctx.log.info("student test %s %.4f", task.primary_metric, metrics[f"test/{task.primary_metric}"])
    return StageResult(metrics=metrics, outputs={"student_model": "model", "student_metrics": "metrics.json",
                                                 "student_settings": "settings.json"}, info=info)


def rescored_after_sharing(trainer: OrderedEvalTrainer, splits, task: Task, metrics: dict[str, float]) -> dict[str, float]:
    """Validation and test scored again once rows are shared, so the stage reports the model it
    ships (rare pieces now read another piece's row); the scores before move to full_rows/."""
    before = {f"full_rows/{k}": v for k, v in metrics.items() if k.startswith(("eval/", "test/"))}
    return metrics | before | split_scores(trainer, task, eval=splits["validation"], test=splits["test"])


def plan_budget_vocab(ctx: StageContext, task: Task, raw, tokenizer) -> tuple[BudgetVocab, dict]:
    """Cut the vocabulary to max_tokens from the train (+ extra in-domain) texts and report how
    the validation texts' pieces change (the student is then trained on the new pieces)."""
    tcfg = ctx.cfg.distill.trim_vocab
    texts = domain_texts(ctx, task, raw, ("train",))
    kept = budget_token_ids(tokenizer, texts, tcfg.max_tokens, tcfg.keep_characters)
    budget = BudgetVocab(kept, trim_tokenizer(tokenizer, kept))
    report = retokenization(tokenizer, budget.tokenizer, task.texts(raw["validation"]), ctx.cfg.data.max_length)
    ctx.log.info("vocabulary budget: %d -> %d tokens; validation texts split differently: %.1f%%, "
                 "tokens per text %.1f -> %.1f", len(tokenizer), len(kept), 100 * report["changed_share"],
                 report["tokens_per_text_before"], report["tokens_per_text_after"])
    return budget, {"kept": len(kept), "original": len(tokenizer), "validation": report}


def plan_shared_rows(ctx: StageContext, task: Task, raw, model, tokenizer) -> tuple[list[int], np.ndarray]:
    """Keep max_tokens rows of the trained student's embedding and point every other piece at its
    nearest kept row (the PyTorch model then holds copies; export stores only the kept rows)."""
    tcfg = ctx.cfg.distill.trim_vocab
    texts = domain_texts(ctx, task, raw, ("train",))
    weight = model.get_input_embeddings().weight.data.cpu()
    kept, position = shared_row_plan(tokenizer, texts, tcfg.max_tokens, weight, tcfg.keep_characters)
    share_rows(model, kept, position)
    ctx.log.info("embedding rows: %d kept of %d; every other piece reads its nearest kept row",
                 len(kept), len(position))
    return kept, position


def domain_texts(ctx: StageContext, task: Task, raw, names: tuple[str, ...]) -> list[str]:
    """Texts (and pairs) of the named splits plus distill.trim_vocab.extra_texts."""
    tcfg = ctx.cfg.distill.trim_vocab
    texts = [t for name in names for t in task.texts(raw[name])]
    if "text_pair" in raw["train"].column_names:
        texts += [t for name in names for t in raw[name]["text_pair"]]
    if tcfg.extra_texts is not None:
        texts += unlabeled_texts(tcfg.extra_texts, None, ctx.cfg.project.seed)
    return texts


def trim_student(ctx: StageContext, task: Task, raw, model, tokenizer):
    """Vocabulary from the train and validation texts (+ extra in-domain text); the proof runs on
    validation: same token pieces, same predictions. Test texts are left out so the benchmark shows
    honestly what unseen words cost."""
    import copy

    tcfg = ctx.cfg.distill.trim_vocab
    texts = domain_texts(ctx, task, raw, ("train", "validation"))
    original = copy.deepcopy(model).cpu()
    result = trim_vocabulary(model.cpu(), tokenizer, texts, tcfg.keep_characters)
    proof = verify_trim(original, tokenizer, result, task.texts(raw["validation"]), ctx.cfg.data.max_length)
    ctx.log.info("vocabulary %d -> %d tokens; validation check %s",
                 result.original_size, len(result.kept_ids), proof)
    if proof["argmax_changes"] or proof["sequences_with_different_ids"] or proof["max_abs_logit_diff"] > 1e-4:
        raise StageError(f"vocabulary trimming changed validation predictions: {proof}")
    metrics = {"vocab/original_size": float(result.original_size), "vocab/trimmed_size": float(len(result.kept_ids)),
               "vocab/validation_max_logit_diff": proof["max_abs_logit_diff"]}
    return result.model, result.tokenizer, metrics, proof | {"kept": len(result.kept_ids)}
