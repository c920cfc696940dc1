"""Property tests (hypothesis): config overrides and data loading hold their invariants for any input."""

from __future__ import annotations

import copy
import string
from pathlib import Path

import pandas as pd
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_data_stage import files_cfg

from pipeline.config import ConfigError, apply_overrides, load_config, parse_override
from stages.tasks.sequence_classification import SequenceClassification

KEY = st.text(alphabet=string.ascii_lowercase + "_", min_size=1, max_size=8)
SCALAR = st.one_of(
    st.integers(-10**6, 10**6),
    st.floats(allow_nan=False, allow_infinity=False, width=32),
    st.booleans(),
    st.text(alphabet=string.ascii_letters + string.digits + "_-", min_size=1, max_size=12),
)


@given(path=st.lists(KEY, min_size=1, max_size=4), value=SCALAR)
def test_an_override_round_trips_any_yaml_scalar(path, value):
    rendered = yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()
    parts, parsed = parse_override(f"{'.'.join(path)}={rendered}")
    assert parts == path
    assert parsed == value or (isinstance(value, float) and parsed == pytest.approx(value))


@given(raw=st.dictionaries(KEY, st.dictionaries(KEY, SCALAR, max_size=3), max_size=3),
       path=st.lists(KEY, min_size=2, max_size=3), value=SCALAR)
def test_apply_overrides_sets_the_path_and_leaves_the_input_alone(raw, path, value):
    before = copy.deepcopy(raw)
    rendered = yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()
    try:
        out = apply_overrides(raw, [f"{'.'.join(path)}={rendered}"])
    except ConfigError as exc:  # only when a prefix of the path holds a scalar
        assert "holds a value" in str(exc)
        return
    node = out
    for part in path:
        node = node[part]
    assert node == value or node == pytest.approx(value)
    assert raw == before


@given(temperature=st.floats(min_value=-100, max_value=100, allow_nan=False))
def test_distill_temperature_is_accepted_exactly_when_positive(temperature):
    try:
        cfg = load_config(None, [f"distill.temperature={temperature!r}"])
    except ConfigError as exc:
        assert temperature <= 0 and "distill.temperature" in str(exc)
    else:
        assert temperature > 0 and cfg.distill.temperature == pytest.approx(temperature)


TEXT = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), max_size=40)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(noise=st.lists(st.tuples(TEXT, st.sampled_from(["a", "b", "c"])), max_size=30), seed=st.integers(0, 99))
def test_loaded_splits_are_clean_disjoint_and_label_consistent(tmp_path_factory, noise, seed):
    # Enough clean rows per label for a stratified split, plus arbitrary (also blank, duplicate,
    # whitespace-padded, non-ASCII) rows.
    base = [(f"clean example {i}", "abc"[i % 3]) for i in range(45)]
    frame = pd.DataFrame(base + noise, columns=["text", "label"])
    path = Path(tmp_path_factory.mktemp("prop")) / "data.csv"
    frame.to_csv(path, index=False)
    cleaning: dict = {}
    splits, _ = SequenceClassification(files_cfg(path, seed=seed)).load(cleaning)
    seen: list[str] = [t for ds in splits.values() for t in ds["text"]]
    assert all(t == t.strip() and t for t in seen)  # stripped, none empty
    assert len(seen) == len(set(seen))  # no duplicates, hence splits are disjoint
    names = splits["train"].features["label"].names
    assert names == sorted(names) and set(names) <= {"a", "b", "c"}
    for ds in splits.values():
        assert set(ds["label"]) <= set(range(len(names)))
    dropped = sum(v for c in cleaning.values() for v in c.values())
    assert len(seen) + dropped == len(pd.read_csv(path, keep_default_na=False))
