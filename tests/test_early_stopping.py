"""The teacher's training length chosen by validation (finetune.early_stopping_patience)."""

from __future__ import annotations

import json

import pytest

from pipeline.config import ConfigError, load_config
from stages._train import stopped_early
from tests.conftest import TINY_YAML, run_cli


def _finetune_metrics(root) -> dict:
    [path] = (root / "artifacts").glob("finetune/*/metrics.json")
    return json.loads(path.read_text())


def test_a_teacher_whose_validation_metric_stops_improving_stops_early(tmp_path):
    # A learning rate of 1e-30 leaves the predictions, hence validation accuracy, exactly as they
    # were at the first evaluation (1e-9 could still move weights by an ulp and flip a near-tied
    # prediction of this random model): with patience 1 the second evaluation ends training.
    run_cli("run", "finetune", "--set", "finetune.early_stopping_patience=1", "--set",
            "finetune.learning_rate=1e-30", "--set", "finetune.checkpoint_steps=2", "--set",
            "finetune.max_steps=12", root=tmp_path)
    metrics = _finetune_metrics(tmp_path)
    assert metrics["train/steps"] == 4  # evaluations at steps 2 and 4
    assert metrics["train/best_step"] == 2
    assert metrics["train/max_steps"] == 12  # the ceiling, not the length
    assert metrics["train/stopped_early"] == 1


def test_a_teacher_the_ceiling_stops_is_named_with_the_setting_to_raise(tmp_path):
    # Patience 5 cannot run out in 2 evaluations: the 4-step ceiling ends training, and the user
    # is told that early stopping did not choose the length and what to raise.
    proc = run_cli("run", "finetune", "--set", "finetune.early_stopping_patience=5", "--set",
                   "finetune.checkpoint_steps=2", "--set", "finetune.max_steps=4", root=tmp_path)
    metrics = _finetune_metrics(tmp_path)
    assert metrics["train/steps"] == metrics["train/max_steps"] == 4
    assert metrics["train/stopped_early"] == 0
    said = " ".join(proc.stderr.split())
    assert "early stopping did not choose its length" in said and "Raise finetune.max_steps" in said


def test_without_patience_the_teacher_trains_its_full_length(tiny_run):
    # The session's tiny run (no patience set) is the control: every planned step was trained.
    metrics = _finetune_metrics(tiny_run)
    assert metrics["train/steps"] == metrics["train/max_steps"] > 0
    assert "train/stopped_early" not in metrics  # nothing to judge without patience
    assert 0 < metrics["train/best_step"] <= metrics["train/steps"]


def test_patience_must_be_positive():
    with pytest.raises(ConfigError, match="early_stopping_patience"):
        load_config(TINY_YAML, ["finetune.early_stopping_patience=0"])


@pytest.mark.parametrize(("without_improvement", "expected"), [
    (3, True),    # patience ran out, before the ceiling or on its very last step: no warning
    (2, False),   # the ceiling ended it one evaluation before patience would have
    (0, False),   # still improving at the ceiling
])
def test_stopped_early_is_patience_running_out(without_improvement, expected):
    assert stopped_early(without_improvement, patience=3) is expected


def test_reduce_lr_on_plateau_halves_the_rate_at_each_evaluation_without_improvement(tmp_path):
    # At 1e-30 validation never improves, so after the first evaluation (step 2) sets the best,
    # every later one (4, 6) halves the rate; the decay follows validation, not the 8-step ceiling.
    from mlflow import MlflowClient

    run_cli("run", "finetune", "--set", "finetune.lr_scheduler=reduce_lr_on_plateau", "--set",
            "finetune.learning_rate=1e-30", "--set", "finetune.checkpoint_steps=2", "--set",
            "finetune.max_steps=8", "--set", "finetune.logging_steps=1", root=tmp_path)
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("bertpress-tiny")
    [run] = [r for r in client.search_runs([experiment.experiment_id]) if r.data.tags.get("stage") == "finetune"]
    rates = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "train/learning_rate")}
    def approx(rate: float):
        return pytest.approx(rate, rel=1e-6, abs=0)

    assert rates[1] == rates[2] == approx(1e-30)  # constant, no warmup, until the first evaluation
    assert rates[5] == approx(0.5e-30) and rates[7] == approx(0.25e-30)


def test_plateau_schedule_is_refused_where_the_teacher_has_no_validation_during_training():
    with pytest.raises(ConfigError, match="reduce_lr_on_plateau needs validation during training"):
        load_config("configs/tiny-sts.yaml", ["finetune.lr_scheduler=reduce_lr_on_plateau"])
