"""Quality-gate logic: floors, comparisons with the champion, and the report's wording."""

from __future__ import annotations

import pytest

from pipeline.config import GatesConfig
from pipeline.gates import Measurement, check_gates, render_report

CHAMPION = Measurement("1", metric=0.85, latency_p50_ms=1.00, size_mb=10.0)


def by_gate(results):
    return {r.gate: r for r in results}


def test_first_release_only_checks_floors():
    gates = GatesConfig(min_metric=0.8, max_size_mb=20)
    results = by_gate(check_gates(Measurement("1", 0.82, 5.0, 12.0), None, gates))
    assert set(results) == {"min_metric", "max_size_mb"}
    assert all(r.passed for r in results.values())


def test_floor_failure_says_by_how_much():
    results = by_gate(check_gates(Measurement("2", 0.78, 1.0, 10.0), None, GatesConfig(min_metric=0.8)))
    gate = results["min_metric"]
    assert not gate.passed and gate.value == 0.78 and gate.limit == 0.8
    assert "short by 2.00 pt" in gate.detail


@pytest.mark.parametrize(("accuracy", "passed"), [(0.8451, True), (0.845, True), (0.8449, False), (0.90, True)])
def test_accuracy_drop_against_the_champion(accuracy, passed):
    gates = GatesConfig(max_metric_drop=0.005, max_latency_increase=None)
    gate = by_gate(check_gates(Measurement("2", accuracy, 1.0, 10.0), CHAMPION, gates))["max_metric_drop"]
    assert gate.passed is passed
    assert gate.value == pytest.approx(0.85 - accuracy)


@pytest.mark.parametrize(("p50", "passed"), [(1.05, True), (1.10, True), (1.11, False), (0.5, True)])
def test_latency_increase_against_the_champion(p50, passed):
    gates = GatesConfig(max_metric_drop=None, max_latency_increase=0.10)
    gate = by_gate(check_gates(Measurement("2", 0.85, p50, 10.0), CHAMPION, gates))["max_latency_increase"]
    assert gate.passed is passed
    assert gate.value == pytest.approx(p50 - 1.0)
    if not passed:
        assert "+11.0%" in gate.detail and "over the allowed +10%" in gate.detail


def test_disabled_gates_are_not_checked():
    gates = GatesConfig(max_metric_drop=None, max_latency_increase=None)
    assert check_gates(Measurement("2", 0.1, 99.0, 99.0), CHAMPION, gates) == []


def test_report_names_the_failed_gate():
    candidate = Measurement("2", 0.80, 1.3, 10.0)
    results = check_gates(candidate, CHAMPION, GatesConfig())
    text = render_report("m", candidate, CHAMPION, results, promoted=False)
    assert "FAILED: champion unchanged" in text
    assert "| max_metric_drop | FAIL | accuracy 0.8000 vs champion v1 0.8500: drop of 5.00 pt" in text
    assert "| max_latency_increase | FAIL |" in text


def test_gates_name_the_tasks_primary_metric():
    candidate = Measurement("2", 0.70, 1.0, 10.0, metric_name="entity_f1")
    champion = Measurement("1", 0.75, 1.0, 10.0, metric_name="entity_f1")
    results = by_gate(check_gates(candidate, champion, GatesConfig(min_metric=0.72, max_metric_drop=0.01)))
    assert not results["min_metric"].passed and not results["max_metric_drop"].passed
    assert "test entity_f1 0.7000 < floor 0.7200" in results["min_metric"].detail
    assert results["max_metric_drop"].detail.startswith("entity_f1 0.7000 vs champion v1 0.7500: drop of 5.00 pt")
    assert "| model | version | test entity_f1 |" in render_report("m", candidate, champion, [], False)


def test_batch1_latencies_take_turns_call_by_call():
    # Who ran when is what makes the candidate/champion ratio fair: an object recording its calls
    # stands in for a bundle (batch1_latencies only calls predict).
    from bertpress.evaluate import batch1_latencies

    calls: list[tuple[str, str]] = []

    class Recorder:
        def __init__(self, name: str):
            self.name = name

        def predict(self, texts):
            calls.append((self.name, texts[0]))

    times = batch1_latencies({"a": Recorder("a"), "b": Recorder("b")}, ["x", "y", "z"], rounds=2, warmup=1)
    timed = calls[2:]  # after one warm-up call each
    assert timed[:6] == [("a", "x"), ("b", "x"), ("b", "y"), ("a", "y"), ("a", "z"), ("b", "z")]
    assert len(timed) == 12 and {len(ms) for ms in times.values()} == {6}
