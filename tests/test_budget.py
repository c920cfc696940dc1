"""The compression budget as pure functions: feasible, infeasible, hard limits, ties, the order of
the finalists and the Pareto front; and the search space's mapping to a distill section."""

from __future__ import annotations

import pytest
from transformers import BertConfig

from pipeline.config import BudgetConfig, DistillConfig, SearchSpace
from stages._budget import (
    Trial,
    choose,
    cost,
    finalist_order,
    limit_violations,
    pareto_front,
    within_budget,
)

TEACHER = 0.82


def trial(number: int, metric: float | None, latency: float, size: float = 5.0, speedup: float | None = None,
          phase: str = "final", throughput: float = 1000.0) -> Trial:
    return Trial(number, phase, {"n": number}, latency, size, throughput, speedup,
                 None if speedup is None else size / 23.0, metric)


def test_feasible_picks_the_cheapest_within_budget():
    budget = BudgetConfig(max_metric_drop=0.005)
    finals = [trial(0, 0.818, 1.0), trial(1, 0.816, 0.6), trial(2, 0.810, 0.4)]  # floor 0.815
    choice = choose(finals, TEACHER, budget, "accuracy", tie_margin=0.05)
    assert choice.feasible and choice.trial.number == 1
    assert "trial 1 keeps the budget" in choice.message and "floor 0.8150" in choice.message


def test_exactly_on_the_floor_is_within_budget():
    budget = BudgetConfig(max_metric_drop=0.005)
    assert within_budget(trial(0, 0.815, 1.0), TEACHER, budget)
    assert not within_budget(trial(0, 0.8149, 1.0), TEACHER, budget)
    assert not within_budget(trial(0, None, 1.0), TEACHER, budget)


def test_infeasible_names_the_best_found_and_what_it_lost():
    budget = BudgetConfig(max_metric_drop=0.005)
    finals = [trial(3, 0.80, 0.5), trial(4, 0.79, 0.3)]
    choice = choose(finals, TEACHER, budget, "accuracy", tie_margin=0.05)
    assert not choice.feasible and choice.trial.number == 3
    assert "no student met the budget" in choice.message
    assert "trial 3" in choice.message and "2.00 pt below the teacher" in choice.message
    assert "search.budget.max_metric_drop" in choice.message  # names the fix


def test_nothing_finished_is_infeasible_without_a_trial():
    choice = choose([], TEACHER, BudgetConfig(), "accuracy", tie_margin=0.05)
    assert not choice.feasible and choice.trial is None and "cpu_budget" in choice.message


def test_cost_ties_go_to_the_better_metric_then_the_smaller_model():
    budget = BudgetConfig(max_metric_drop=0.05)
    # 1.00 and 1.03 ms are within a 5% tie margin: the better metric wins though it is slower.
    finals = [trial(0, 0.80, 1.00), trial(1, 0.81, 1.03), trial(2, 0.82, 1.20)]
    assert choose(finals, TEACHER, budget, "accuracy", tie_margin=0.05).trial.number == 1
    # Same cost and metric: the smaller model.
    same = [trial(5, 0.81, 1.0, size=6.0), trial(6, 0.81, 1.0, size=5.0)]
    assert choose(same, TEACHER, budget, "accuracy", tie_margin=0.05).trial.number == 6
    # Without a tie margin the cheaper one wins.
    assert choose(finals, TEACHER, budget, "accuracy", tie_margin=0.0).trial.number == 0


def test_hard_limits_make_a_trial_infeasible_whatever_its_metric():
    budget = BudgetConfig(max_metric_drop=0.05, min_speedup=3.0, max_size_ratio=0.25, max_latency_ms=2.0,
                          max_size_mb=10.0)
    fast = trial(0, 0.82, 0.5, size=5.0, speedup=3.2)
    slow = trial(1, 0.82, 0.7, size=5.0, speedup=2.5)
    big = trial(2, 0.82, 0.5, size=6.9, speedup=3.5)  # 6.9 / 23 = 0.30 of the teacher
    assert limit_violations(fast, budget) == []
    assert limit_violations(slow, budget) == ["2.50x the stock INT8 teacher < 3x"]
    assert limit_violations(big, budget) == ["0.300 of the stock INT8 teacher's size > 0.25"]
    assert len(limit_violations(trial(3, 0.8, 2.5, size=11.0), budget)) == 2  # ms and MB
    choice = choose([slow, big], TEACHER, budget, "accuracy", tie_margin=0.05)
    assert not choice.feasible and "2.50x the stock INT8 teacher < 3x" in choice.message


@pytest.mark.parametrize(("objective", "cheapest"), [("latency", 1), ("throughput", 2), ("size", 0)])
def test_the_objective_decides_what_cheapest_means(objective, cheapest):
    budget = BudgetConfig(max_metric_drop=0.05, objective=objective)
    finals = [trial(0, 0.81, 1.0, size=3.0, speedup=2.0, throughput=900),
              trial(1, 0.81, 0.5, size=6.0, speedup=4.0, throughput=1000),
              trial(2, 0.81, 0.8, size=5.0, speedup=2.5, throughput=2000)]
    assert choose(finals, TEACHER, budget, "accuracy", tie_margin=0.0).trial.number == cheapest


def test_latency_cost_is_the_ratio_to_the_stock_teacher_where_measured():
    assert cost(trial(0, 0.8, 0.5, speedup=4.0), "latency") == pytest.approx(0.25)
    assert cost(trial(0, 0.8, 0.5), "latency") == 0.5


def test_finalists_are_promising_proxies_cheapest_first():
    budget = BudgetConfig(max_metric_drop=0.005, min_speedup=3.0)
    proxies = [trial(0, 0.80, 0.9, speedup=3.1, phase="proxy"),   # within slack (floor 0.815 - 0.02)
               trial(1, 0.79, 0.5, speedup=4.0, phase="proxy"),   # below the slack line
               trial(2, 0.81, 0.7, speedup=3.5, phase="proxy"),
               trial(3, 0.83, 1.5, speedup=2.0, phase="over-limit")]
    order = finalist_order(proxies, TEACHER, budget, slack=0.02, tie_margin=0.0)
    assert [t.number for t in order] == [2, 0, 1]  # promising by cost, then the rest by metric


def test_without_a_promising_proxy_the_best_ones_come_first():
    budget = BudgetConfig(max_metric_drop=0.005)
    proxies = [trial(0, 0.70, 0.9, phase="proxy"), trial(1, 0.75, 0.5, phase="proxy"),
               trial(2, 0.74, 0.4, phase="proxy")]
    assert [t.number for t in finalist_order(proxies, TEACHER, budget, 0.02, 0.0)] == [1, 2, 0]


def test_the_proxy_gap_is_learned_from_the_finals():
    from dataclasses import replace

    from stages._budget import proxy_gap

    assert proxy_gap([], 0.02) == 0.02
    finals = [replace(trial(0, 0.83, 1.0), extra={"proxy_metric": 0.78}),
              replace(trial(1, 0.82, 1.0), extra={"proxy_metric": 0.79})]
    assert proxy_gap(finals, 0.02) == pytest.approx(0.04)
    # A wider gap lets a proxy 4 points under the line through (floor 0.815).
    proxies = [trial(2, 0.78, 0.5, phase="proxy"), trial(3, 0.80, 0.9, phase="proxy")]
    budget = BudgetConfig(max_metric_drop=0.005)
    assert [t.number for t in finalist_order(proxies, TEACHER, budget, 0.02, 0.0)] == [3, 2]
    assert [t.number for t in finalist_order(proxies, TEACHER, budget, 0.04, 0.0)] == [2, 3]


def test_the_finals_reserve_is_the_slowest_student_at_the_longest_length():
    from dataclasses import replace

    from stages._budget import finals_reserve

    def timed(number: int, s_per_step: float, full_steps: int) -> Trial:
        return replace(trial(number, 0.8, 1.0, phase="proxy"),
                       extra={"s_per_step": s_per_step, "full_steps": full_steps})

    assert finals_reserve([], [1000, 2000], 0.25) is None
    assert finals_reserve([trial(0, 0.8, 1.0, phase="proxy")], [2000], 0.25) is None  # no timing recorded
    # 20 Newsgroups' run: the first proxy (1,000 steps at 0.80 s) was the estimate, but the finalist
    # ran 2,000 steps at 0.86 s. The reserve covers a 2,000-step run of the slowest student seen.
    proxies = [timed(1, 0.80, 1000), timed(2, 0.56, 2000)]
    assert finals_reserve(proxies, [1000, 2000], 0.0) == pytest.approx(1600.0)
    # Without search.space.max_steps every student runs the configured length.
    assert finals_reserve([timed(1, 0.5, 1200)], [], 0.0) == pytest.approx(600.0)
    # TREC's run: the last proxy started inside the line and ran 90 s past it. The next proxy's
    # worst case (proxy_fraction of the longest run) is reserved too.
    assert finals_reserve(proxies, [1000, 2000], 0.25) == pytest.approx(2000.0)


def test_pareto_front():
    points = [trial(0, 0.80, 1.0), trial(1, 0.82, 2.0), trial(2, 0.79, 1.5), trial(3, 0.78, 0.5),
              trial(4, None, 0.1, phase="over-limit")]
    assert [t.number for t in pareto_front(points, "latency")] == [3, 0, 1]


# -- the space ------------------------------------------------------------------------------------
def test_layer_choices():
    from stages.search import layer_indices

    assert layer_indices(3, 6, "spread") == [0, 2, 4]  # the default student's layers
    assert layer_indices(2, 6, "spread") == [0, 3]
    assert layer_indices(2, 6, "bottom") == [0, 1]
    assert layer_indices(2, 6, "top") == [4, 5]
    assert layer_indices(8, 6, "spread") == list(range(6))


TEACHER_CONFIG = BertConfig(num_hidden_layers=6, hidden_size=384, num_attention_heads=12, intermediate_size=1536)


def params(**changes):
    base = {"layers": 2, "layer_choice": "spread", "hidden_size": None, "intermediate_size": 768,
            "max_tokens": 5000, "share_rows": False, "max_steps": 2000, "augment": False,
            "recipe_budget": "logits", "recipe": "logits"}
    return base | changes


def test_candidate_config_maps_a_point_to_a_valid_distill_section():
    from stages.search import candidate_config

    dcfg = candidate_config(DistillConfig(), params(hidden_size=256), TEACHER_CONFIG)
    assert dcfg.student.keep_layers == [0, 3]
    assert (dcfg.student.hidden_size, dcfg.student.num_attention_heads, dcfg.student.intermediate_size) == (256, 8, 768)
    assert dcfg.trim_vocab.max_tokens == 5000 and dcfg.trim_vocab.enabled and dcfg.max_steps == 2000
    shared = candidate_config(DistillConfig(), params(share_rows=True, recipe="logits+hidden"), TEACHER_CONFIG)
    assert shared.trim_vocab.share_rows and shared.intermediate.hidden_weight == 1.0
    with pytest.raises(ValueError, match="max_tokens splits rare words"):  # the config's own rule
        candidate_config(DistillConfig(), params(recipe="logits+hidden"), TEACHER_CONFIG)


def test_the_configured_student_is_a_point_of_the_default_space():
    from pipeline.config import load_config
    from stages.search import reference_params

    cfg = load_config("configs/default.yaml")
    ref = reference_params(cfg.distill, cfg.search.space, TEACHER_CONFIG)
    assert ref is not None and ref["layers"] == 3 and ref["max_tokens"] == 7000 and ref["max_steps"] == 1000
    assert reference_params(cfg.distill, SearchSpace(layers=[2]), TEACHER_CONFIG) is None


def test_recipes_map_to_layer_loss_weights():
    from stages.search import candidate_config

    both = candidate_config(DistillConfig(), params(max_tokens=None, recipe="logits+hidden+attention"),
                            TEACHER_CONFIG)
    assert (both.intermediate.hidden_weight, both.intermediate.attention_weight) == (1.0, 1.0)
    attention = candidate_config(DistillConfig(), params(max_tokens=None, recipe="logits+attention"),
                                 TEACHER_CONFIG)
    assert (attention.intermediate.hidden_weight, attention.intermediate.attention_weight) == (0.0, 1.0)


def test_the_cpu_budgets_unit_is_the_configured_length_at_the_first_proxys_pace():
    from dataclasses import replace

    from stages._budget import configured_run_estimate

    def timed(number: int, s_per_step: float, full_steps: int) -> Trial:
        return replace(trial(number, 0.8, 1.0, phase="proxy"),
                       extra={"s_per_step": s_per_step, "full_steps": full_steps})

    assert configured_run_estimate([], 1000) is None
    # A space of 2,000-step runs only: its first proxy (0.52 s/step) is not the configured
    # 1,000-step student; the unit stays 1,000 steps (it was 2,000: the budget doubled).
    proxies = [timed(3, 0.9, 2000), timed(0, 0.52, 2000)]
    assert configured_run_estimate(proxies, 1000) == pytest.approx(520.0)
    # An epoch-based config (max_steps -1): the first proxy's own full length.
    assert configured_run_estimate(proxies, -1) == pytest.approx(1040.0)
