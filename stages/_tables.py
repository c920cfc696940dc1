"""Reading labelled data files and hub datasets into pandas frames, for any task.

Files: CSV/TSV/JSON/JSONL/Parquet (optionally .gz/.bz2). Hub: a datasets id, its config and a split
mapping; splits a mapping leaves out are not read (GLUE's test labels are hidden).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from pipeline.config import DataConfig
from pipeline.stage import StageError

SPLITS = ("train", "validation", "test")


def read_table(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise StageError(f"data file {path} does not exist; fix data.files in your config")
    # pandas decompresses .gz/.bz2 itself; the format is the suffix before it.
    suffix = path.suffixes[-2] if path.suffix in {".gz", ".bz2"} and len(path.suffixes) > 1 else path.suffix
    readers = {
        ".csv": lambda: pd.read_csv(path),
        ".tsv": lambda: pd.read_csv(path, sep="\t"),
        ".json": lambda: _read_json(path),
        ".jsonl": lambda: pd.read_json(path, lines=True),
        ".parquet": lambda: pd.read_parquet(path),
    }
    reader = readers.get(suffix.lower())
    if reader is None:
        raise StageError(
            f"{path}: unsupported file type {suffix!r}; use one of {', '.join(readers)}"
        )
    try:
        return reader()
    except UnicodeDecodeError as exc:
        raise StageError(f"{path} is not valid UTF-8 ({exc}); re-save it as UTF-8") from None
    except ValueError as exc:
        raise StageError(f"{path} could not be parsed: {exc}") from None


def _read_json(path: Path) -> pd.DataFrame:
    try:
        return pd.read_json(path)
    except ValueError:
        return pd.read_json(path, lines=True)


def file_splits(cfg: DataConfig) -> dict[str, Path]:
    """The configured files, by split (validation/test may be absent: carved out of train)."""
    assert cfg.files is not None  # guaranteed by DataConfig validation
    return {split: Path(getattr(cfg.files, split)) for split in SPLITS
            if getattr(cfg.files, split) is not None}


def load_hub(cfg: DataConfig):
    """{our split: the hub's split (a datasets.Dataset)} for the configured hub dataset."""
    from datasets import load_dataset

    try:
        ds = load_dataset(cfg.hub_name, cfg.hub_config)
    except Exception as exc:  # offline, unknown id, ... -- the library's message says which
        raise StageError(
            f"could not load dataset {cfg.hub_name!r} (config {cfg.hub_config!r}) from the hub: "
            f"{exc}. Offline? Use data.source=builtin or data.source=files."
        ) from None
    # With an explicit mapping only the mapped splits are read (GLUE's test labels are hidden).
    mapping = dict(cfg.hub_splits) or {s: s for s in SPLITS if s in ds}
    found = {}
    for ours, theirs in mapping.items():
        if theirs not in ds:
            raise StageError(f"{cfg.hub_name} has no split {theirs!r}; it has {list(ds)}")
        found[ours] = ds[theirs]
    if "train" not in found:
        raise StageError(f"{cfg.hub_name} has no train split; map one with data.hub_splits.train")
    return found
