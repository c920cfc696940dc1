"""Every shipped config validates and says how to run it."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pipeline.config import PipelineConfig, load_config

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
CONFIGS = sorted(CONFIG_DIR.glob("*.yaml"))


def test_expected_configs_are_shipped() -> None:
    names = {p.name for p in CONFIGS}
    assert len(CONFIGS) >= 3
    assert {"default.yaml", "tiny.yaml", "bert-base-sst2.yaml"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_validates(path: Path) -> None:
    cfg = load_config(path)
    assert isinstance(cfg, PipelineConfig)
    # Nothing in the file was silently dropped: every key it sets survives into the model.
    raw = yaml.safe_load(path.read_text())
    raw.pop("extends", None)  # what the base file sets is checked with the base file
    dumped = cfg.model_dump(mode="json")
    for section, values in raw.items():
        assert section in dumped
        for key in values:
            assert key in dumped[section], f"{path.name}: {section}.{key}"


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_starts_with_run_comment(path: Path) -> None:
    first = path.read_text().splitlines()[0]
    assert first.startswith("# Run"), f"{path.name} starts with {first!r}"


def test_tiny_config_values() -> None:
    cfg = load_config(CONFIG_DIR / "tiny.yaml")
    assert cfg.data.source == "files"
    assert cfg.data.files is not None
    assert cfg.data.files.train == Path("tests/data/tiny_reviews.csv")
    assert cfg.teacher.model == "random"
    assert cfg.teacher.random is not None
    assert cfg.teacher.random.num_hidden_layers == 4
    assert cfg.distill.student.keep_layers == [0, 2]


def test_sst2_config_maps_hidden_test_split() -> None:
    cfg = load_config(CONFIG_DIR / "bert-base-sst2.yaml")
    assert cfg.data.source == "hub"
    assert cfg.data.hub_splits == {"train": "train", "test": "validation"}
    assert cfg.distill.student.keep_layers == [0, 2, 4, 6, 8, 10]


@pytest.mark.parametrize("name", ["trec.yaml", "newsgroups.yaml"])
def test_other_data_uses_the_default_compression_settings(name: str) -> None:
    """Issue 3: the default's compression settings must hold on other data, not be tuned per
    dataset: these configs may change the data, how long the teacher trains, and where outputs go."""
    other = load_config(CONFIG_DIR / name).model_dump(mode="json")
    default = load_config(CONFIG_DIR / "default.yaml").model_dump(mode="json")
    changed = {section for section in default if other[section] != default[section]}
    assert changed <= {"project", "runtime", "data", "finetune", "release", "search"}
    # The search's budget: the speed target away from the default data is 2x, not 3x.
    other["search"]["budget"]["min_speedup"] = default["search"]["budget"]["min_speedup"]
    assert other["search"] == default["search"]
    for section in ("distill", "export", "quantize", "benchmark", "gates"):
        assert other[section] == default[section], section
    assert {k for k in default["release"] if other["release"][k] != default["release"][k]} <= {"model_name"}
    assert other["data"]["builtin"] == name.removesuffix(".yaml")
