"""search stage: find the cheapest student that keeps the quality budget (search.budget).

Between the teacher and the final distillation. Optuna's multi-objective TPE sampler proposes
students from search.space (depth and which layers, width, FFN, vocabulary budget, distillation
length and recipe); objectives: validation primary metric (up) and cost (down: batch-1 latency as
a ratio to Optimum's stock INT8 teacher, throughput or INT8 size). Cheap things first:
  1. cost: the untrained architecture is exported, fused and dynamically quantized exactly as the
     pipeline ships it (quantize.candidates' first dynamic recipe, e.g. with 4-bit embedding
     tables), then timed in interleaved rounds against the stock INT8 teacher (weights do not
     change latency or size). Over a hard limit: skipped, never trained.
  2. proxy: a short distillation (search.proxy_fraction of its length), scored on validation.
  3. final: the promising proxies, cheapest first, distilled at full length and scored as INT8 on
     validation, until one keeps the budget or the CPU budget (search.cpu_budget x one full
     distillation of the configured student) is spent. Proposing stops while there is still room
     for the longest final run the space allows (the slowest student per step x the longest length).
The chosen student's settings go to the distill stage, which reuses its trained weights.

Resumable: the Optuna study lives in an append-only journal in the stage's scratch directory and
each finished final run writes its record there, so a killed search (even kill -9) continues
with what it had finished; a trial that was running is marked failed and tried afresh.
Every trial is a nested MLflow run. Writes: search.json (every trial, the Pareto front, the choice
and the verdict), winner/ (the chosen student's trained weights, when one finished).
"""

from __future__ import annotations

import copy
import json
import math
import shutil
import statistics
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
from transformers import AutoTokenizer, set_seed

from pipeline.config import DistillConfig, QuantCandidate
from pipeline.stage import StageContext, StageError, StageResult
from stages._budget import (
    Trial,
    by_cost,
    choose,
    configured_run_estimate,
    cost,
    finalist_order,
    finals_reserve,
    limit_violations,
    metric_floor,
    pareto_front,
    proxy_gap,
)
from stages._hf import label_maps, load_model, load_splits_dir, save_json, save_model
from stages._onnx import (
    compact_shared_rows,
    file_mb,
    interleaved_rounds,
    make_session,
    session_feed,
    time_calls,
)
from stages._train import configure_torch, evaluate
from stages._vocab import share_rows, shared_row_plan
from stages.distill import build_trainer, domain_texts, make_student, prepare_distillation
from stages.tasks import get_task
from stages.tasks.base import Task

RESULT_FILE = "search.json"


# -- the space --------------------------------------------------------------------------------
def layer_indices(k: int, n: int, choice: str) -> list[int]:
    """k of a teacher's n layers: spread (every n/k-th from the first), bottom or top."""
    k = min(k, n)
    if choice == "bottom":
        return list(range(k))
    if choice == "top":
        return list(range(n - k, n))
    return [i * n // k for i in range(k)]


def sample(trial, space) -> dict[str, Any]:
    """Define-by-run: the recipe is a choice only where the vocabulary allows layer losses."""
    params: dict[str, Any] = {
        "layers": trial.suggest_categorical("layers", space.layers),
        "layer_choice": trial.suggest_categorical("layer_choice", space.layer_choice),
        "hidden_size": trial.suggest_categorical("hidden_size", space.hidden_size),
        "intermediate_size": trial.suggest_categorical("intermediate_size", space.intermediate_size),
        "max_tokens": trial.suggest_categorical("max_tokens", space.max_tokens),
        "max_steps": trial.suggest_categorical("max_steps", space.max_steps) if space.max_steps else None,
        "augment": trial.suggest_categorical("augment", space.augment),
    }
    params["share_rows"] = (trial.suggest_categorical("share_rows", space.share_rows)
                            if params["max_tokens"] is not None else False)
    aligned = params["max_tokens"] is None or params["share_rows"]
    recipes = space.recipe if aligned else ["logits"]
    params["recipe"] = trial.suggest_categorical("recipe" if aligned else "recipe_budget", recipes)
    for name in ("temperature", "alpha", "learning_rate"):
        if getattr(space, name) is not None:
            params[name] = trial.suggest_categorical(name, getattr(space, name))
    return params


def candidate_config(base: DistillConfig, params: dict[str, Any], teacher_config) -> DistillConfig:
    """The distill section for one searched student (validated like any config)."""
    n, width, heads = (teacher_config.num_hidden_layers, teacher_config.hidden_size,
                       teacher_config.num_attention_heads)
    hidden = params["hidden_size"] or width
    data = base.model_dump(mode="json")
    data["student"] = {"keep_layers": layer_indices(params["layers"], n, params["layer_choice"]),
                       "hidden_size": hidden, "num_attention_heads": max(1, hidden // (width // heads)),
                       "intermediate_size": params["intermediate_size"]}
    data["trim_vocab"] |= {"enabled": True, "max_tokens": params["max_tokens"],
                           "share_rows": params["share_rows"]}
    if params["max_steps"] is not None:
        data["max_steps"] = params["max_steps"]
    data["intermediate"] |= {"hidden_weight": 1.0 if "hidden" in params["recipe"] else 0.0,
                             "attention_weight": 1.0 if "attention" in params["recipe"] else 0.0}
    data["augment"]["enabled"] = params["augment"]
    for name in ("temperature", "alpha", "learning_rate"):
        if name in params:
            data[name] = params[name]
    return DistillConfig.model_validate(data)


def reference_params(dcfg: DistillConfig, space, teacher_config) -> dict[str, Any] | None:
    """The configured student as a point of the space (tried first), if it is one."""
    spec = dcfg.student
    if spec.keep_layers is None:
        return None
    n = teacher_config.num_hidden_layers
    choice = next((c for c in space.layer_choice
                   if layer_indices(len(spec.keep_layers), n, c) == spec.keep_layers), None)
    params = {"layers": len(spec.keep_layers), "layer_choice": choice,
              "hidden_size": spec.hidden_size if spec.hidden_size != teacher_config.hidden_size else None,
              "intermediate_size": spec.intermediate_size or teacher_config.intermediate_size,
              "max_tokens": dcfg.trim_vocab.max_tokens, "max_steps": dcfg.max_steps if space.max_steps else None,
              "augment": dcfg.augment.enabled}
    allowed = {name: getattr(space, name) or [None] for name in params}
    if any(params[k] not in allowed[k] for k in params):
        return None
    if params["max_tokens"] is not None:
        if dcfg.trim_vocab.share_rows not in space.share_rows:
            return None
        params["share_rows"] = dcfg.trim_vocab.share_rows
    inter = dcfg.intermediate
    recipe = "logits" + ("+hidden" if inter.hidden_weight > 0 else "") + ("+attention" if inter.attention_weight > 0 else "")
    if inter.enabled and (inter.hidden_weight not in (0, 1) or inter.attention_weight not in (0, 1)):
        return None  # the recipes use weight 1.0
    aligned = params["max_tokens"] is None or params.get("share_rows")
    if recipe not in (space.recipe if aligned else ["logits"]):
        return None
    params["recipe" if aligned else "recipe_budget"] = recipe
    for name in ("temperature", "alpha", "learning_rate"):
        if getattr(space, name) is not None:
            if getattr(dcfg, name) not in getattr(space, name):
                return None
            params[name] = getattr(dcfg, name)
    return params


def architecture_key(params: dict[str, Any]) -> str:
    return json.dumps({k: params[k] for k in ("layers", "layer_choice", "hidden_size", "intermediate_size",
                                              "max_tokens", "share_rows")}, sort_keys=True)


# -- ONNX: the graph that would ship ------------------------------------------------------------
def cost_recipe(candidates: list[QuantCandidate]) -> QuantCandidate:
    """How the search builds the graph it prices: the first dynamic recipe of quantize.candidates
    (static ones calibrate on data and are never smaller), or plain dynamic INT8."""
    return next((c for c in candidates if c.method == "dynamic"), QuantCandidate())


def int8_graph(model, tokenizer, work: Path, task: Task, opset: int,
               shared: tuple[list[int], np.ndarray] | None, recipe: QuantCandidate | None = None) -> Path:
    """Export, fuse, compact shared rows, dynamic INT8 (`recipe`: 4-bit tables too): as the pipeline ships it."""
    from stages.export import fuse, to_onnx
    from stages.quantize import build

    recipe = recipe or QuantCandidate()
    shutil.rmtree(work, ignore_errors=True)
    save_model(model, tokenizer, work / "model")
    raw = to_onnx(work / "model", work / "onnx", opset, task.export_task)
    fused = work / "fused.onnx"
    fuse(raw, fused, model.config.num_attention_heads, model.config.hidden_size,
         embed_layer_norm=recipe.source_graph != "fused_gather")
    if shared is not None:
        compact_shared_rows(fused, fused, shared[0], shared[1])
    target = work / "int8.onnx"
    build(recipe, fused, target, None, 99.999)
    return target


def timed_cost(candidate: Path, tokenizer, stock: Path, stock_tokenizer, texts: list, ctx: StageContext) -> dict:
    """Batch-1 p50 of the candidate and the stock INT8 teacher, taking turns round by round on the
    same real texts (each through its own tokenizer), throughput at batch 32, and sizes."""
    scfg, max_length = ctx.cfg.search, ctx.cfg.data.max_length
    sessions = {"candidate": (make_session(candidate, ctx.cfg.runtime), tokenizer),
                "stock": (make_session(stock, ctx.cfg.runtime), stock_tokenizer)}
    rounds = interleaved_rounds({n: lambda b, s=session: s.run(None, session_feed(s, b))
                                 for n, (session, _) in sessions.items()},
                                {n: tok for n, (_, tok) in sessions.items()}, texts, max_length,
                                scfg.timing_rounds, scfg.timing_iterations)
    session, tok = sessions["candidate"]
    many = {k: v.astype(np.int64) for k, v in tok((texts * 32)[:32], padding=True, truncation=True,
                                                  max_length=max_length, return_tensors="np").items()}
    batch_ms = float(np.median(time_calls(lambda: session.run(None, session_feed(session, many)), 1, 3)))
    latency, stock_latency = statistics.median(rounds["candidate"]), statistics.median(rounds["stock"])
    return {"latency_ms": latency, "stock_latency_ms": stock_latency, "speedup": stock_latency / latency,
            "throughput": 32 / (batch_ms / 1000), "size_mb": file_mb(candidate),
            "size_ratio": file_mb(candidate) / file_mb(stock), "rounds_ms": rounds["candidate"]}


# -- the search --------------------------------------------------------------------------------
class Search:
    """State of one search: the teacher, data, a cache of prepared distillation data per
    vocabulary, and the records on disk (scratch) that make it resumable."""

    def __init__(self, ctx: StageContext):
        self.ctx, self.cfg, self.scfg = ctx, ctx.cfg, ctx.cfg.search
        self.task = get_task(self.cfg)
        self.tokenizer = AutoTokenizer.from_pretrained(ctx.path("teacher_tokenizer"))
        self.raw = load_splits_dir(ctx.path("dataset"))
        self.id2label, _ = label_maps(ctx.path("labels"))
        self.teacher = load_model(ctx.path("teacher_model"), self.task.auto_model)
        self.teacher_metric = float(ctx.read_json("teacher_metrics")[f"eval/{self.task.primary_metric}"])
        self.stock = ctx.path("stock_int8")
        self.recipe = cost_recipe(ctx.cfg.quantize.candidates)
        self.stock_tokenizer = self.tokenizer  # the stock export reads the teacher's pieces
        self.texts = self.task.timing_inputs(self.raw["validation"])[:50]
        self.prepared: dict[tuple, tuple] = {}
        ctx.scratch.mkdir(parents=True, exist_ok=True)
        self.costs_file = ctx.scratch / "costs.json"
        self.costs: dict[str, dict] = json.loads(self.costs_file.read_text()) if self.costs_file.is_file() else {}
        self.finals_dir = ctx.scratch / "finals"
        self.finals_dir.mkdir(exist_ok=True)

    # A trial's view of the pipeline: the same context with its own distill section.
    def trial_context(self, dcfg: DistillConfig) -> tuple[StageContext, Task]:
        cfg = self.cfg.model_copy(update={"distill": dcfg})
        return replace(self.ctx, cfg=cfg), get_task(cfg)

    def data_for(self, dcfg: DistillConfig):
        budget_vocab = dcfg.trim_vocab.max_tokens is not None and not dcfg.trim_vocab.share_rows
        key = (dcfg.trim_vocab.max_tokens if budget_vocab else None, dcfg.augment.enabled)
        if key not in self.prepared:
            ctx, task = self.trial_context(dcfg)
            self.prepared[key] = prepare_distillation(ctx, task, self.raw, self.teacher, self.tokenizer)
        return self.prepared[key]

    def student(self, dcfg: DistillConfig, task: Task, budget):
        set_seed(self.cfg.project.seed)
        return make_student(dcfg, self.teacher, self.id2label, self.tokenizer, task, budget)

    def shared_plan(self, dcfg: DistillConfig, model) -> tuple[list[int], np.ndarray] | None:
        if not dcfg.trim_vocab.share_rows:
            return None
        ctx, task = self.trial_context(dcfg)
        texts = domain_texts(ctx, task, self.raw, ("train",))
        weight = model.get_input_embeddings().weight.data.cpu()
        return shared_row_plan(self.tokenizer, texts, dcfg.trim_vocab.max_tokens, weight,
                               dcfg.trim_vocab.keep_characters)

    def measure(self, params: dict[str, Any], dcfg: DistillConfig) -> dict:
        """Cost of the architecture (cached per architecture, on disk)."""
        key = architecture_key(params)
        if key not in self.costs:
            _, task = self.trial_context(dcfg)
            budget, _, _ = self.data_for(dcfg)
            model = self.student(dcfg, task, budget).eval()
            tok = budget.tokenizer if budget else self.tokenizer
            shared = self.shared_plan(dcfg, model)
            if shared is not None:
                share_rows(model, *shared)
            path = int8_graph(model, tok, self.ctx.scratch / "cost-graph", self.task, self.cfg.export.opset, shared,
                              self.recipe)
            self.costs[key] = timed_cost(path, tok, self.stock, self.stock_tokenizer, self.texts, self.ctx)
            self.costs_file.write_text(json.dumps(self.costs, indent=1))
        return self.costs[key]

    def train(self, dcfg: DistillConfig, scratch: Path):
        ctx, task = self.trial_context(dcfg)
        budget, splits, _ = self.data_for(dcfg)
        model = self.student(dcfg, task, budget)
        tok = budget.tokenizer if budget else self.tokenizer
        shutil.rmtree(scratch, ignore_errors=True)  # a trial is redone whole, never resumed
        trainer = build_trainer(ctx, task, dcfg, self.teacher, model, tok, splits["train"], splits["validation"],
                                scratch)
        start = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - start
        return trainer, tok, splits, seconds

    # -- phases --------------------------------------------------------------------------------
    def proxy(self, trial) -> tuple[float, float]:
        import optuna

        params = sample(trial, self.scfg.space)
        try:
            dcfg = candidate_config(self.cfg.distill, params, self.teacher.config)
        except ValueError as exc:  # a combination the config rules refuse
            trial.set_user_attr("record", {"number": trial.number, "phase": "invalid", "params": params,
                                           "error": str(exc)[:300]})
            raise optuna.TrialPruned(str(exc)) from None
        twin = next((t for t in recorded(trial.study) if t.params == params), None)
        if twin is not None:  # the sampler proposed a student already tried: same answer, no work
            trial.set_user_attr("record", {"number": trial.number, "phase": "invalid", "params": params,
                                           "error": f"same as trial {twin.number}"})
            if twin.metric is None:
                raise optuna.TrialPruned(f"same as trial {twin.number}")
            return twin.metric, cost(twin, self.scfg.budget.objective)
        start = time.perf_counter()
        with self.ctx.tracker.child_run(f"trial-{trial.number}", params | {"phase": "proxy"}):
            try:
                measured = self.measure(params, dcfg)
            except StageError as exc:  # e.g. a vocabulary budget below what share_rows must keep
                trial.set_user_attr("record", {"number": trial.number, "phase": "invalid", "params": params,
                                               "error": str(exc)[:300]})
                self.ctx.log.info("trial %d cannot be built (%s): %s", trial.number, exc, params)
                raise optuna.TrialPruned(str(exc)) from None
            record = Trial(trial.number, "proxy", params, measured["latency_ms"], measured["size_mb"],
                           measured["throughput"], measured["speedup"], measured["size_ratio"])
            broken = limit_violations(record, self.scfg.budget)
            if broken:
                record = replace(record, phase="over-limit", seconds=time.perf_counter() - start,
                                 extra={"limits": broken})
                self.ctx.tracker.log_metrics(self.cost_metrics(record))
                trial.set_user_attr("record", as_json(record))
                self.ctx.log.info("trial %d over a hard limit (%s): %s, not trained", trial.number,
                                  "; ".join(broken), params)
                raise optuna.TrialPruned("; ".join(broken))
            steps = max(1, round(self.full_steps(dcfg) * self.scfg.proxy_fraction))
            short = dcfg.model_copy(update={"max_steps": steps, "checkpoint_steps": steps})
            trainer, _, splits, train_s = self.train(short, self.ctx.scratch / "proxy")
            metric = evaluate(trainer, splits["validation"], self.task)[self.task.primary_metric]
            record = replace(record, metric=metric, seconds=time.perf_counter() - start,
                             extra={"steps": steps, "train_s": train_s, "s_per_step": train_s / steps,
                                    "full_steps": self.full_steps(dcfg)})
            self.ctx.tracker.log_metrics(self.cost_metrics(record) | {f"eval/{self.task.primary_metric}": metric})
        shutil.rmtree(self.ctx.scratch / "proxy", ignore_errors=True)
        trial.set_user_attr("record", as_json(record))
        self.ctx.log.info("trial %d (proxy, %d steps): validation %s %.4f, %s, %s", trial.number, steps,
                          self.task.primary_metric, metric, describe(record), params)
        return metric, cost(record, self.scfg.budget.objective)

    def final(self, proxy: Trial) -> Trial:
        record_file = self.finals_dir / f"{proxy.number}.json"
        if record_file.is_file():  # finished before an interruption
            return from_json(json.loads(record_file.read_text()))
        dcfg = candidate_config(self.cfg.distill, proxy.params, self.teacher.config)
        start = time.perf_counter()
        with self.ctx.tracker.child_run(f"final-{proxy.number}", proxy.params | {"phase": "final"}):
            trainer, tok, splits, train_s = self.train(dcfg, self.ctx.scratch / "final")
            model = trainer.model.eval()
            fp32 = evaluate(trainer, splits["validation"], self.task)[self.task.primary_metric]
            shipped = copy.deepcopy(model).cpu()
            shared = self.shared_plan(dcfg, shipped)
            if shared is not None:
                share_rows(shipped, *shared)
            path = int8_graph(shipped, tok, self.ctx.scratch / "final-graph", self.task, self.cfg.export.opset, shared,
                              self.recipe)
            features = self.task.features(self.raw["validation"], tok)
            from stages.quantize import (
                score,  # the quantize stage's validation scoring of an ONNX file
            )

            int8 = score(path, features, tok, self.ctx, self.task)[self.task.primary_metric]
            model.set_attn_implementation("sdpa")
            save_model(model, tok, self.finals_dir / str(proxy.number) / "model")
            record = replace(proxy, phase="final", metric=int8, seconds=time.perf_counter() - start,
                             extra={"fp32_metric": fp32, "steps": self.full_steps(dcfg), "train_s": train_s,
                                    "proxy_metric": proxy.metric})
            self.ctx.tracker.log_metrics(self.cost_metrics(record) | {
                f"eval/{self.task.primary_metric}": int8, f"eval/fp32_{self.task.primary_metric}": fp32})
        shutil.rmtree(self.ctx.scratch / "final", ignore_errors=True)
        record_file.write_text(json.dumps(as_json(record)))
        self.ctx.log.info("final %d (%d steps): validation %s INT8 %.4f (fp32 %.4f), %s", proxy.number,
                          self.full_steps(dcfg), self.task.primary_metric, int8, fp32, describe(record))
        return record

    def full_steps(self, dcfg: DistillConfig) -> int:
        """Optimizer steps of a full distillation (max_steps, else epochs over the training set)."""
        if dcfg.max_steps > 0:
            return dcfg.max_steps
        budget, splits, _ = self.data_for(dcfg)
        return max(1, math.ceil(len(splits["train"]) / dcfg.batch_size * dcfg.epochs))

    @staticmethod
    def cost_metrics(record: Trial) -> dict[str, float]:
        out = {"cost/latency_ms": record.latency_ms, "cost/size_mb": record.size_mb,
               "cost/throughput_per_s": record.throughput}
        if record.speedup:
            out |= {"cost/speedup_vs_stock_int8": record.speedup, "cost/size_ratio_vs_stock_int8": record.size_ratio}
        return out


def as_json(trial: Trial) -> dict:
    return asdict(trial)


def from_json(data: dict) -> Trial:
    return Trial(**data)


def describe(t: Trial) -> str:
    speed = f" ({t.speedup:.2f}x stock INT8)" if t.speedup else ""
    return f"p50 {t.latency_ms:.3f} ms{speed}, {t.size_mb:.2f} MB"


def open_study(ctx: StageContext, task: Task):
    """The study in an append-only journal (survives kill -9); trials left running by a killed
    process are marked failed so they are tried again."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = JournalStorage(JournalFileBackend(str(ctx.scratch / "study.journal")))
    study = optuna.create_study(
        study_name="search", storage=storage, load_if_exists=True,
        directions=["maximize" if task.greater_is_better else "minimize", "minimize"],
        sampler=optuna.samplers.TPESampler(seed=ctx.cfg.project.seed, n_startup_trials=4),
    )
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        storage.set_trial_state_values(trial._trial_id, optuna.trial.TrialState.FAIL)
        ctx.log.info("trial %d was interrupted; it is tried again", trial.number)
    return study


def recorded(study) -> list[Trial]:
    return [from_json(t.user_attrs["record"]) for t in study.get_trials(deepcopy=False)
            if "record" in t.user_attrs and t.user_attrs["record"].get("phase") != "invalid"]


def run(ctx: StageContext) -> StageResult:
    scfg = ctx.cfg.search
    if not scfg.enabled:
        save_json(ctx.out / RESULT_FILE, {"enabled": False})
        return StageResult(outputs={"search_result": RESULT_FILE}, info={"enabled": False})

    import optuna

    configure_torch(ctx.cfg.runtime)
    search = Search(ctx)
    task, budget = search.task, scfg.budget
    study = open_study(ctx, task)
    started = time.perf_counter()
    spent_before = float(study.user_attrs.get("spent_s", 0.0))

    def spent() -> float:
        return spent_before + time.perf_counter() - started

    def save_spent() -> None:
        study.set_user_attr("spent_s", spent())

    reference = reference_params(ctx.cfg.distill, scfg.space, search.teacher.config)
    tried = [t.params for t in study.get_trials(deepcopy=False) if t.state.is_finished()
             and t.state != optuna.trial.TrialState.FAIL]
    waiting = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,))
    if reference is not None and reference not in tried and not waiting:
        study.enqueue_trial(reference)  # the configured student first (again, if a kill cut it short)
    resumed = len(recorded(study))
    ctx.log.info("search: teacher validation %s %.4f, budget: at most %.2f pt lower (floor %.4f), objective "
                 "%s; %d trials already done", task.primary_metric, search.teacher_metric,
                 budget.max_metric_drop * 100, metric_floor(search.teacher_metric, budget), budget.objective,
                 resumed)

    def full_run_estimate() -> float | None:
        return configured_run_estimate([t for t in recorded(study) if t.phase == "proxy"],
                                       ctx.cfg.distill.max_steps)

    from tqdm.auto import tqdm

    with tqdm(total=scfg.proxy_trials, desc="search: proxy trials", unit="trial") as bar:
        while True:
            trained = [t for t in recorded(study) if t.phase == "proxy"]  # over-limit ones cost no training
            bar.n = len(trained)
            bar.refresh()
            estimate = full_run_estimate()
            if len(trained) >= scfg.proxy_trials:
                break
            reserve = finals_reserve(trained, scfg.space.max_steps or [], scfg.proxy_fraction)
            if reserve is not None and spent() + reserve > scfg.cpu_budget * estimate:
                ctx.log.info("search: CPU budget reached after %d proxy runs (%.0f s spent of %.0f; ~%.0f s "
                             "kept for the next proxy and the longest final run)", len(trained), spent(),
                             scfg.cpu_budget * estimate, reserve)
                break
            if len(study.trials) >= 4 * scfg.proxy_trials:  # mostly refused or over-limit proposals: stop
                break
            study.optimize(search.proxy, n_trials=1, catch=())
            save_spent()

    records = recorded(study)
    proxies = [t for t in records if t.phase == "proxy"]
    if not records:
        raise StageError("search: every student the sampler proposed was refused by the config rules "
                         "(see the log); widen search.space")
    estimate = full_run_estimate() or 0.0
    if not proxies:  # every architecture broke a hard limit: train the cheapest, so the verdict names a real student
        ctx.log.warning("search: every architecture tried broke a hard limit; the cheapest is trained so "
                        "the report can say what it would keep")
    finals: list[Trial] = []
    pending = list(proxies) if proxies else by_cost(records, budget.objective, scfg.latency_tie_margin)[:1]
    while pending and len(finals) < scfg.finalists:
        # Which proxies could make it at full length: the gain finals showed over their proxies so far.
        gap = proxy_gap(finals, scfg.proxy_slack)
        order = (finalist_order(pending, search.teacher_metric, budget, gap, scfg.latency_tie_margin)
                 if proxies else pending)
        if not order:
            break
        proxy = order[0]
        pending.remove(proxy)
        cost_estimate = proxy.extra.get("s_per_step", 0.0) * proxy.extra.get("full_steps", 0)
        done = (search.finals_dir / f"{proxy.number}.json").is_file()
        if finals and not done and spent() + cost_estimate > scfg.cpu_budget * max(estimate, 1e-9):
            ctx.log.info("search: CPU budget spent; %d finalist(s) trained", len(finals))
            break
        finals.append(search.final(proxy))
        save_spent()
        if choose(finals, search.teacher_metric, budget, task.primary_metric, scfg.latency_tie_margin).feasible:
            break  # promising finalists come cheapest first: the first within budget is the cheapest
    choice = choose(finals, search.teacher_metric, budget, task.primary_metric, scfg.latency_tie_margin)
    (ctx.log.info if choice.feasible else ctx.log.warning)("search: %s", choice.message)

    everything = records + finals
    front = pareto_front(everything, budget.objective)
    outputs = {"search_result": RESULT_FILE}
    chosen = None
    if choice.trial is not None:
        dcfg = candidate_config(ctx.cfg.distill, choice.trial.params, search.teacher.config)
        chosen = {"number": choice.trial.number, "params": choice.trial.params,
                  "distill": dcfg.model_dump(mode="json")}
        shutil.copytree(search.finals_dir / str(choice.trial.number) / "model", ctx.out / "winner")
        outputs["search_winner"] = "winner"
    wall = spent()
    report = {
        "enabled": True, "primary_metric": task.primary_metric, "teacher_metric": search.teacher_metric,
        "floor": metric_floor(search.teacher_metric, budget), "budget": budget.model_dump(),
        "objective": budget.objective, "feasible": choice.feasible, "message": choice.message,
        "cost_recipe": search.recipe.name, "chosen": chosen, "trials": [as_json(t) for t in everything],
        "pareto_front": [[t.phase, t.number] for t in front],
        "invalid": [t.user_attrs["record"] for t in study.get_trials(deepcopy=False)
                    if t.user_attrs.get("record", {}).get("phase") == "invalid"],
        "resumed_with_trials": resumed, "wall_s": wall, "full_run_estimate_s": estimate, "cpu_budget_s": scfg.cpu_budget * estimate,
        "space": scfg.space.model_dump(mode="json"),
    }
    save_json(ctx.out / RESULT_FILE, report)
    ctx.tracker.log_artifact(ctx.out / RESULT_FILE)
    metrics = {"search/feasible": float(choice.feasible), "search/trials": float(len(records)),
               "search/finals": float(len(finals)), "search/wall_s": wall,
               "search/teacher_metric": search.teacher_metric}
    if choice.trial is not None:
        metrics |= {"search/chosen_metric": choice.trial.metric, "search/chosen_latency_ms": choice.trial.latency_ms,
                    "search/chosen_size_mb": choice.trial.size_mb}
        if choice.trial.speedup:
            metrics["search/chosen_speedup"] = choice.trial.speedup
    return StageResult(metrics=metrics, outputs=outputs,
                       info={"feasible": choice.feasible, "message": choice.message,
                             "chosen": chosen and {k: chosen[k] for k in ("number", "params")}})
