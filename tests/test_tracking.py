"""pipeline.tracking.flatten and resolve_tracking_uri (no MLflow server needed)."""

from __future__ import annotations

from pathlib import Path
from types import MappingProxyType

import pytest

from pipeline.tracking import flatten, resolve_tracking_uri


def test_flatten_nested() -> None:
    data = {"a": {"b": 1, "c": {"d": "x", "e": None}}, "f": 2.5}
    assert flatten(data) == {"a.b": 1, "a.c.d": "x", "a.c.e": None, "f": 2.5}


def test_flatten_flat_is_identity() -> None:
    data = {"x": 1, "y": "two", "z": False}
    assert flatten(data) == data


def test_flatten_keeps_lists_as_values() -> None:
    data = {"distill": {"student": {"keep_layers": [0, 2]}}, "seq": [{"a": 1}]}
    assert flatten(data) == {"distill.student.keep_layers": [0, 2], "seq": [{"a": 1}]}


def test_flatten_prefix_and_dotted_keys() -> None:
    assert flatten({"b": {"c": 1}}, prefix="a.") == {"a.b.c": 1}
    # section_values() produces keys that already contain dots, e.g. 'project.seed'.
    assert flatten({"project.seed": 13, "data": {"max_length": 32}}) == {
        "project.seed": 13,
        "data.max_length": 32,
    }


def test_flatten_any_mapping() -> None:
    assert flatten(MappingProxyType({"a": MappingProxyType({"b": 1})})) == {"a.b": 1}


def test_flatten_empty() -> None:
    assert flatten({}) == {}


def test_flatten_int_keys_become_strings() -> None:
    assert flatten({"id2label": {0: "neg", 1: "pos"}}) == {"id2label.0": "neg", "id2label.1": "pos"}


def test_flatten_real_config(tiny_cfg) -> None:
    flat = flatten(tiny_cfg.model_dump(mode="json"))
    assert flat["distill.temperature"] == 2.0
    assert flat["teacher.random.hidden_size"] == 32
    assert flat["distill.student.keep_layers"] == [0, 2]
    assert flat["data.files.train"] == "tests/data/tiny_reviews.csv"
    assert all(not isinstance(v, dict) for v in flat.values())


def test_resolve_tracking_uri(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_tracking_uri("http://mlflow:5000", tmp_path) == "http://mlflow:5000"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///env.db")
    assert resolve_tracking_uri(None, tmp_path) == "sqlite:///env.db"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    root = tmp_path / "arts"
    assert resolve_tracking_uri(None, root) == f"sqlite:///{root.resolve() / 'mlflow.db'}"
    assert root.is_dir()
