"""The compression budget as pure functions: which searched students keep it, which are worth a
full-length run, which one ships, and what to say when none does. No I/O, no torch.

A trial is one student the search tried: its validation metric (proxy runs: a short
distillation, fp32; final runs: full length, the INT8 graph that would ship) and its measured
cost (batch-1 p50, throughput at batch 32, INT8 size, and the first two as ratios to Optimum's stock
INT8 teacher timed in the same rounds).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pipeline.config import BudgetConfig

EPS = 1e-9


@dataclass(frozen=True)
class Trial:
    number: int
    phase: str  # "proxy", "final" or "over-limit" (skipped before training)
    params: dict[str, Any]
    latency_ms: float
    size_mb: float
    throughput: float  # inputs/s at batch 32
    speedup: float | None = None  # stock INT8 teacher p50 / this p50 (same rounds)
    size_ratio: float | None = None  # this size / stock INT8 teacher size
    metric: float | None = None  # validation primary metric (None: not trained)
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


def cost(trial: Trial, objective: str) -> float:
    """Lower is better. Latency uses the speed-up ratio where measured (noise-robust)."""
    if objective == "latency":
        return 1.0 / trial.speedup if trial.speedup else trial.latency_ms
    if objective == "throughput":
        return -trial.throughput
    return trial.size_mb


def limit_violations(trial: Trial, budget: BudgetConfig) -> list[str]:
    """Hard limits the trial's architecture breaks (known before any training)."""
    out = []
    if budget.max_latency_ms is not None and trial.latency_ms > budget.max_latency_ms + EPS:
        out.append(f"p50 {trial.latency_ms:.3f} ms > {budget.max_latency_ms:g} ms")
    if budget.max_size_mb is not None and trial.size_mb > budget.max_size_mb + EPS:
        out.append(f"{trial.size_mb:.2f} MB > {budget.max_size_mb:g} MB")
    if budget.min_speedup is not None and trial.speedup is not None and trial.speedup < budget.min_speedup - EPS:
        out.append(f"{trial.speedup:.2f}x the stock INT8 teacher < {budget.min_speedup:g}x")
    if (budget.max_size_ratio is not None and trial.size_ratio is not None
            and trial.size_ratio > budget.max_size_ratio + EPS):
        out.append(f"{trial.size_ratio:.3f} of the stock INT8 teacher's size > {budget.max_size_ratio:g}")
    return out


def metric_floor(teacher_metric: float, budget: BudgetConfig) -> float:
    return teacher_metric - budget.max_metric_drop


def within_budget(trial: Trial, teacher_metric: float, budget: BudgetConfig) -> bool:
    return (trial.metric is not None and trial.metric >= metric_floor(teacher_metric, budget) - EPS
            and not limit_violations(trial, budget))


def by_cost(trials: list[Trial], objective: str, tie_margin: float) -> list[Trial]:
    """Cheapest first; costs within `tie_margin` (relative) of the cheapest remaining one are a
    tie, broken by the better metric, then the smaller model, then the trial number."""
    rest = sorted(trials, key=lambda t: (cost(t, objective), t.number))
    ordered: list[Trial] = []
    while rest:
        base = cost(rest[0], objective)
        tied = [t for t in rest if cost(t, objective) <= base + abs(base) * tie_margin + EPS]
        best = min(tied, key=lambda t: (-(t.metric if t.metric is not None else float("-inf")),
                                        t.size_mb, t.number))
        ordered.append(best)
        rest.remove(best)
    return ordered


def finalist_order(proxies: list[Trial], teacher_metric: float, budget: BudgetConfig, slack: float,
                   tie_margin: float) -> list[Trial]:
    """Proxy trials worth a full-length run: those within the hard limits and no more than `slack`
    below the budget line (short runs under-estimate), cheapest first; then the rest, best proxy
    metric first (the likeliest to get there at full length)."""
    eligible = [t for t in proxies if t.metric is not None and not limit_violations(t, budget)]
    floor = metric_floor(teacher_metric, budget) - slack
    promising = [t for t in eligible if t.metric >= floor - EPS]
    rest = sorted((t for t in eligible if t not in promising), key=lambda t: (-t.metric, t.number))
    return by_cost(promising, budget.objective, tie_margin) + rest


def proxy_gap(finals: list[Trial], default: float) -> float:
    """How much a full-length run gained over its proxy, measured on the finals so far (their
    mean); `default` (search.proxy_slack) until one has finished."""
    gains = [t.metric - t.extra["proxy_metric"] for t in finals
             if t.metric is not None and t.extra.get("proxy_metric") is not None]
    return max(0.0, sum(gains) / len(gains)) if gains else default


def configured_run_estimate(proxies: list[Trial], configured_steps: int) -> float | None:
    """Seconds of one full distillation of the configured student, the unit of search.cpu_budget:
    the first proxy's seconds per step (the configured student when the space holds it) x the
    configured length (`distill.max_steps`; -1, an epoch-based config: the proxy's own length).
    Not the proxy's length: with a space of 2,000-step runs only, the budget doubled with it.
    None before a proxy has trained."""
    timed = [t for t in proxies if t.extra.get("s_per_step")]
    if not timed:
        return None
    first = min(timed, key=lambda t: t.number)
    return first.extra["s_per_step"] * (configured_steps if configured_steps > 0 else first.extra["full_steps"])


def finals_reserve(proxies: list[Trial], lengths: list[int], next_proxy_fraction: float) -> float | None:
    """Seconds the proposals must leave before another proxy starts: a final run of the slowest
    student trained so far (seconds per step) at the longest distillation the space allows
    (`lengths`, plus the proxies' own full lengths), and the next proxy's own run at its worst
    (`next_proxy_fraction` of that length). Not the configured student's full run: a finalist may be
    twice as long (space max_steps [1000, 2000]) and slower per step, which is how a search overran
    its CPU budget by half; and without the next proxy's share, a proxy that started just inside the
    line ran 90 s past it (TREC, 15% over). None before a proxy has trained."""
    timed = [t for t in proxies if t.extra.get("s_per_step")]
    if not timed:
        return None
    longest = max([*lengths, *(t.extra["full_steps"] for t in timed)])
    return max(t.extra["s_per_step"] for t in timed) * longest * (1.0 + next_proxy_fraction)


@dataclass(frozen=True)
class Choice:
    trial: Trial | None
    feasible: bool
    message: str


def choose(finals: list[Trial], teacher_metric: float, budget: BudgetConfig, metric_name: str,
           tie_margin: float) -> Choice:
    """The cheapest full-length student within budget; else the best one found, flagged."""
    good = [t for t in finals if within_budget(t, teacher_metric, budget)]
    floor = metric_floor(teacher_metric, budget)
    if good:
        best = by_cost(good, budget.objective, tie_margin)[0]
        return Choice(best, True, (
            f"trial {best.number} keeps the budget: validation {metric_name} {best.metric:.4f} vs teacher "
            f"{teacher_metric:.4f} (floor {floor:.4f}), {describe_cost(best)}; the cheapest of "
            f"{len(good)} within budget by {budget.objective}"))
    trained = [t for t in finals if t.metric is not None]
    if not trained:
        return Choice(None, False, "no candidate finished a full-length run within the CPU budget "
                                   "(raise search.cpu_budget)")
    best = max(trained, key=lambda t: (t.metric, -t.size_mb, -t.number))
    lost = (teacher_metric - best.metric) * 100
    broken = limit_violations(best, budget)
    return Choice(best, False, (
        f"no student met the budget (validation {metric_name} >= {floor:.4f}, i.e. at most "
        f"{budget.max_metric_drop * 100:.2f} pt below the teacher's {teacher_metric:.4f}"
        + (f", {', '.join(broken)}" if broken else "") + f"); the best found, trial {best.number}, "
        f"reached {best.metric:.4f} ({lost:.2f} pt below the teacher), {describe_cost(best)}. Allow a larger "
        "search.budget.max_metric_drop, widen search.space (more layers, wider FFN, a larger "
        "vocabulary, longer distillation) or raise search.cpu_budget"))


def describe_cost(trial: Trial) -> str:
    speed = f" ({trial.speedup:.2f}x the stock INT8 teacher)" if trial.speedup else ""
    return f"p50 {trial.latency_ms:.3f} ms{speed}, {trial.size_mb:.2f} MB, {trial.throughput:.0f}/s"


def pareto_front(trials: list[Trial], objective: str) -> list[Trial]:
    """The trained trials no other beats on both cost (lower) and metric (higher)."""
    scored = [t for t in trials if t.metric is not None]
    front: list[Trial] = []
    best = float("-inf")
    for t in sorted(scored, key=lambda t: (cost(t, objective), -t.metric, t.number)):
        if t.metric > best + EPS:
            front.append(t)
            best = t.metric
    return front
