"""Quality gates: may a released candidate replace the champion? Pure logic, no I/O.

Relative gates compare the candidate with the current champion measured the same way in the same
process (the task's primary metric on the current test split, interleaved batch-1 timing); absolute
floors apply to the candidate alone. With no champion yet, only the floors apply.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from pipeline.config import GatesConfig

EPS = 1e-9  # a limit met exactly (1.10 / 1.00 - 1 in floating point) passes


@dataclass(frozen=True)
class Measurement:
    version: str
    metric: float  # the task's primary metric (accuracy, entity F1, ...), higher is better
    latency_p50_ms: float
    size_mb: float
    metric_name: str = "accuracy"


@dataclass(frozen=True)
class GateResult:
    gate: str
    passed: bool
    value: float
    limit: float
    detail: str  # human sentence: what was compared and by how much it passed or failed


def check_gates(candidate: Measurement, champion: Measurement | None, gates: GatesConfig) -> list[GateResult]:
    results: list[GateResult] = []
    name = candidate.metric_name
    if gates.min_metric is not None:
        ok = candidate.metric >= gates.min_metric
        results.append(GateResult(
            "min_metric", ok, candidate.metric, gates.min_metric,
            f"test {name} {candidate.metric:.4f} {'>=' if ok else '<'} floor {gates.min_metric:.4f}"
            + ("" if ok else f" (short by {(gates.min_metric - candidate.metric) * 100:.2f} pt)"),
        ))
    for gate, what, value, limit, unit in (
        ("max_latency_p50_ms", "p50", candidate.latency_p50_ms, gates.max_latency_p50_ms, "ms"),
        ("max_size_mb", "model", candidate.size_mb, gates.max_size_mb, "MB"),
    ):
        if limit is not None:
            ok = value <= limit
            results.append(GateResult(gate, ok, value, limit,
                                      f"{what} {value:.3g} {unit} {'<=' if ok else '>'} ceiling {limit:.3g} {unit}"))
    if champion is None:
        return results
    if gates.max_metric_drop is not None:
        drop = champion.metric - candidate.metric
        ok = drop <= gates.max_metric_drop + EPS
        results.append(GateResult(
            "max_metric_drop", ok, drop, gates.max_metric_drop,
            f"{name} {candidate.metric:.4f} vs champion v{champion.version} {champion.metric:.4f}: "
            f"{'drop' if drop > 0 else 'gain'} of {abs(drop) * 100:.2f} pt "
            f"({'within' if ok else 'over'} the allowed {gates.max_metric_drop * 100:.2f} pt)",
        ))
    if gates.max_latency_increase is not None:
        increase = candidate.latency_p50_ms / champion.latency_p50_ms - 1
        ok = increase <= gates.max_latency_increase + EPS
        results.append(GateResult(
            "max_latency_increase", ok, increase, gates.max_latency_increase,
            f"p50 {candidate.latency_p50_ms:.3f} ms vs champion v{champion.version} "
            f"{champion.latency_p50_ms:.3f} ms: {increase * 100:+.1f}% "
            f"({'within' if ok else 'over'} the allowed +{gates.max_latency_increase * 100:.0f}%)",
        ))
    return results


def render_report(name: str, candidate: Measurement, champion: Measurement | None,
                  results: list[GateResult], promoted: bool, note: str = "") -> str:
    verdict = "PASSED: promoted to champion" if promoted else "FAILED: champion unchanged"
    lines = [f"# Gate report: {name} v{candidate.version}", "", f"**{verdict}**", ""]
    if note:
        lines += [note, ""]
    lines += [f"| model | version | test {candidate.metric_name} | p50 ms (batch 1) | size MB |",
              "|---|---|---|---|---|"]
    for role, m in (("candidate", candidate), ("champion", champion)):
        if m is not None:
            lines.append(f"| {role} | {m.version} | {m.metric:.4f} | {m.latency_p50_ms:.3f} | {m.size_mb:.2f} |")
    if champion is None:
        lines += ["", "No champion yet: only the absolute floors apply."]
    lines += ["", "| gate | result | detail |", "|---|---|---|"]
    lines += [f"| {r.gate} | {'pass' if r.passed else 'FAIL'} | {r.detail} |" for r in results]
    if not results:
        lines.append("| (none configured) | pass | |")
    return "\n".join(lines) + "\n"


def as_dict(m: Measurement | None) -> dict | None:
    return asdict(m) if m is not None else None
