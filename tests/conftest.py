"""Shared fixtures. Everything here runs offline: no hub, no network."""

from __future__ import annotations

import os

# Set before anything imports huggingface_hub / transformers / datasets.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from pipeline.config import PipelineConfig, load_config  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY_YAML = REPO_ROOT / "configs" / "tiny.yaml"
TINY_CSV = REPO_ROOT / "tests" / "data" / "tiny_reviews.csv"


@pytest.fixture(autouse=True)
def _in_repo_root(monkeypatch: pytest.MonkeyPatch) -> Path:
    """Config paths (configs/tiny.yaml's data file) are relative to the repository root."""
    monkeypatch.chdir(REPO_ROOT)
    # An inherited tracking URI must not leak into the tests' configs.
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return REPO_ROOT


@pytest.fixture
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture
def tiny_overrides(tmp_path: Path) -> list[str]:
    """Overrides that keep every output of a test inside its tmp_path."""
    return [
        f"runtime.artifacts_dir={tmp_path / 'artifacts'}",
        f"runtime.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}",
    ]


@pytest.fixture
def tiny_cfg(tiny_overrides: list[str]) -> PipelineConfig:
    """configs/tiny.yaml with artifacts and MLflow redirected into tmp_path."""
    return load_config(TINY_YAML, tiny_overrides)


@pytest.fixture
def load_tiny(tiny_overrides: list[str]):
    """Load configs/tiny.yaml with extra overrides on top of the tmp_path redirection."""

    def load(*extra: str) -> PipelineConfig:
        return load_config(TINY_YAML, [*tiny_overrides, *extra])

    return load
