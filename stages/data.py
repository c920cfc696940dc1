"""data stage: load labelled text, clean it, split it (seeded, stratified), tokenize it with the
teacher's tokenizer, and save it with its label map.

Writes: dataset/ (a datasets.DatasetDict with text, label and token ids), tokenizer/, labels.json,
data_report.json.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pandas as pd
from datasets import ClassLabel, Dataset, DatasetDict, load_dataset

from pipeline.config import DataConfig, PipelineConfig
from pipeline.stage import StageContext, StageError, StageResult
from stages._hf import build_tokenizer, save_json
from stages._sources import (
    NEWSGROUPS_TEST,
    NEWSGROUPS_TRAIN,
    ROTTEN_TOMATOES,
    TREC,
    extract,
    source_fingerprint,
)

SPLITS = ("train", "validation", "test")
TEXT, PAIR, LABEL = "text", "text_pair", "label"


# --------------------------------------------------------------------------------------------
# Loading: every source is normalised to DataFrames with columns text, [text_pair], label.


def _load_builtin(name: str) -> dict[str, pd.DataFrame]:
    if name == "trec":
        return {"train": _read_trec(extract(TREC))}
    if name == "newsgroups":
        return {"train": _read_orange_tab(extract(NEWSGROUPS_TRAIN)),
                "test": _read_orange_tab(extract(NEWSGROUPS_TEST))}
    frame = pd.read_csv(extract(ROTTEN_TOMATOES))
    frame = frame[frame["category"].isin(["fresh", "rotten"])]  # 'plot' rows are not reviews
    return {"train": pd.DataFrame({TEXT: frame["text"], LABEL: frame["category"]})}


def _read_trec(path: Path) -> pd.DataFrame:
    """`LABEL question` per line, e.g. `HUM:ind Who wrote Hamlet ?`."""
    rows = [line.split(" ", 1) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return pd.DataFrame({TEXT: [q for _, q in rows], LABEL: [label for label, _ in rows]})


def _read_orange_tab(path: Path) -> pd.DataFrame:
    """Orange's .tab: a header row of names, then rows of types and flags, then the data."""
    lines = path.read_text(encoding="utf-8").split("\n")
    header = lines[0].split("\t")
    text, label = header.index("Text"), header.index("Category")
    rows = [line.split("\t") for line in lines[3:] if line.strip()]
    return pd.DataFrame({TEXT: [r[text] for r in rows], LABEL: [r[label] for r in rows]})


def _read_file(path: Path) -> pd.DataFrame:
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


def _select_columns(frame: pd.DataFrame, cfg: DataConfig, where: str) -> pd.DataFrame:
    wanted = {TEXT: cfg.text_column, LABEL: cfg.label_column}
    if cfg.text_pair_column:
        wanted[PAIR] = cfg.text_pair_column
    missing = [col for col in wanted.values() if col not in frame.columns]
    if missing:
        raise StageError(
            f"{where}: column(s) {missing} not found; it has {list(frame.columns)}. "
            f"Set data.text_column / data.label_column / data.text_pair_column to match."
        )
    return pd.DataFrame({ours: frame[theirs] for ours, theirs in wanted.items()})


def _load_files(cfg: DataConfig) -> dict[str, pd.DataFrame]:
    assert cfg.files is not None
    frames = {}
    for split in SPLITS:
        path = getattr(cfg.files, split)
        if path is not None:
            frames[split] = _select_columns(_read_file(Path(path)), cfg, str(path))
    return frames


def _load_hub(cfg: DataConfig) -> tuple[dict[str, pd.DataFrame], list[str] | None]:
    try:
        ds = load_dataset(cfg.hub_name, cfg.hub_config)
    except Exception as exc:  # offline, unknown id, ... -- the library's message says which
        raise StageError(
            f"could not load dataset {cfg.hub_name!r} (config {cfg.hub_config!r}) from the hub: "
            f"{exc}. Offline? Use data.source=builtin or data.source=files."
        ) from None
    names = None
    frames = {}
    # With an explicit mapping only the mapped splits are read (GLUE's test labels are hidden).
    mapping = dict(cfg.hub_splits) or {s: s for s in SPLITS if s in ds}
    for ours, theirs in mapping.items():
        if theirs not in ds:
            raise StageError(f"{cfg.hub_name} has no split {theirs!r}; it has {list(ds)}")
        feature = ds[theirs].features.get(cfg.label_column)
        if isinstance(feature, ClassLabel):
            names = feature.names
        frames[ours] = _select_columns(ds[theirs].to_pandas(), cfg, f"{cfg.hub_name}[{theirs}]")
    if "train" not in frames:
        raise StageError(f"{cfg.hub_name} has no train split; map one with data.hub_splits.train")
    return frames, names


# --------------------------------------------------------------------------------------------
# Cleaning and splitting


def _bad_rows_error(split: str, what: str, rows: list[int]) -> StageError:
    shown = ", ".join(map(str, rows[:5])) + (", ..." if len(rows) > 5 else "")
    return StageError(
        f"the {split} split has {len(rows)} row(s) with {what} (data rows {shown}, 0-based, header "
        "not counted); fix the data, or set data.bad_rows=drop to drop such rows with a count"
    )


def _clean(frame: pd.DataFrame, split: str = "train", policy: str = "drop") -> tuple[pd.DataFrame, dict[str, int]]:
    no_label = frame[LABEL].isna() | (frame[LABEL].astype(str).str.strip() == "")
    blank = frame[TEXT].isna() | (frame[TEXT].astype(str).str.strip() == "")
    if policy == "fail":
        if blank.any():
            raise _bad_rows_error(split, "an empty or whitespace-only text", frame.index[blank].tolist())
        if no_label.any():
            raise _bad_rows_error(split, "a missing label", frame.index[no_label].tolist())
    frame = frame[~(blank | no_label)].copy()
    frame[TEXT] = frame[TEXT].astype(str).str.strip()
    # A blank label cell makes pandas read integer labels as floats; restore 0.0 -> 0.
    if frame[LABEL].dtype.kind == "f" and (frame[LABEL] % 1 == 0).all():
        frame[LABEL] = frame[LABEL].astype(int)
    kept = len(frame)
    keys = [TEXT, PAIR] if PAIR in frame else [TEXT]
    frame = frame.drop_duplicates(subset=keys)
    return frame.reset_index(drop=True), {
        "dropped_empty": int((blank & ~no_label).sum()),
        "dropped_missing_label": int(no_label.sum()),
        "dropped_duplicates": kept - len(frame),
    }


def _label_names(frames: dict[str, pd.DataFrame], hub_names: list[str] | None) -> list[str]:
    if hub_names:
        return list(hub_names)
    # From train only: a label that appears only in validation/test is an error, not a new class.
    values = frames["train"][LABEL].unique().tolist()
    # Sort ints numerically, strings alphabetically: a stable order for any labelling.
    return [str(v) for v in sorted(values, key=lambda v: (isinstance(v, str), v))]


def _to_dataset(frame: pd.DataFrame, names: list[str]) -> Dataset:
    frame = frame.copy()
    frame[LABEL] = frame[LABEL].map(lambda v: names.index(str(v)))
    ds = Dataset.from_pandas(frame, preserve_index=False)
    return ds.cast_column(LABEL, ClassLabel(names=names))


def _carve(ds: Dataset, size: float, seed: int, stratify: str | None, name: str) -> tuple[Dataset, Dataset]:
    try:
        cut = ds.train_test_split(test_size=size, seed=seed, stratify_by_column=stratify)
    except ValueError as exc:
        raise StageError(
            f"cannot carve a stratified {name} split ({size:.0%} of {len(ds)} examples) with one "
            f"example of every class: {exc}. Provide more data, a larger data.{name}_size, or a "
            f"separate data.files.{name} file."
        ) from None
    return cut["train"], cut["test"]


def _split(
    frames: dict[str, pd.DataFrame], names: list[str], cfg: DataConfig, seed: int
) -> DatasetDict:
    train = _to_dataset(frames["train"], names)
    for split in SPLITS[1:]:
        unknown = set(frames[split][LABEL].astype(str)) - set(names) if split in frames else set()
        if unknown:
            raise StageError(f"{split} split has labels {sorted(unknown)} that train lacks")
    counts = Counter(train[LABEL])
    stratify = LABEL if min(counts.values()) >= 2 else None
    parts: dict[str, Dataset] = {}
    if "test" in frames:
        parts["test"] = _to_dataset(frames["test"], names)
    else:
        train, parts["test"] = _carve(train, cfg.test_size, seed, stratify, "test")
    if "validation" in frames:
        parts["validation"] = _to_dataset(frames["validation"], names)
    else:
        share = cfg.validation_size / (1 - (0 if "test" in frames else cfg.test_size))
        train, parts["validation"] = _carve(train, share, seed, stratify, "validation")
    result = DatasetDict(train=train, validation=parts["validation"], test=parts["test"])
    if cfg.max_train_samples and len(result["train"]) > cfg.max_train_samples:
        result["train"] = result["train"].shuffle(seed=seed).select(range(cfg.max_train_samples))
    if cfg.max_eval_samples:
        for split in SPLITS[1:]:
            if len(result[split]) > cfg.max_eval_samples:
                result[split] = result[split].shuffle(seed=seed).select(range(cfg.max_eval_samples))
    return result


def load_splits(cfg: PipelineConfig, cleaning: dict | None = None) -> DatasetDict:
    """Load, clean and split the configured data (no tokenization); per-split drop counts go
    into `cleaning` when given."""
    data = cfg.data
    hub_names = None
    if data.source == "builtin":
        frames = _load_builtin(data.builtin)
    elif data.source == "files":
        frames = _load_files(data)
    else:
        frames, hub_names = _load_hub(data)
    cleaned = {}
    for split, frame in frames.items():
        if frame.empty:
            raise StageError(f"the {split} split has no rows; check the file behind it")
        cleaned[split], counts = _clean(frame, split, data.bad_rows)
        if cleaning is not None:
            cleaning[split] = counts
        if cleaned[split].empty:
            raise StageError(f"the {split} split is empty after dropping empty texts and missing labels")
    names = _label_names(cleaned, hub_names)
    if len(names) < 2:
        raise StageError(f"the train split has only one label ({names}): classification needs two or "
                         "more; check data.label_column and that the train file holds every class")
    return _split(cleaned, names, data, cfg.project.seed)


# --------------------------------------------------------------------------------------------


def drop_far_too_long(splits: DatasetDict, tokenizer, cfg: PipelineConfig, cleaning: dict, log) -> DatasetDict:
    """Texts far beyond max_length (documents where sentences were expected): drop or fail."""
    factor = cfg.data.long_text_factor
    if factor is None:
        return splits
    limit = int(factor * cfg.data.max_length)
    kept = {}
    for split, ds in splits.items():
        lengths = [len(ids) for ids in tokenizer(list(ds[TEXT]), add_special_tokens=False)["input_ids"]]
        far = [i for i, n in enumerate(lengths) if n > limit]
        cleaning.setdefault(split, {})["dropped_too_long"] = len(far)
        if far and cfg.data.bad_rows == "fail":
            raise StageError(
                f"the {split} split has {len(far)} text(s) longer than {limit} tokens "
                f"({factor:g} x data.max_length {cfg.data.max_length}; the longest has {max(lengths)}), "
                f"e.g. {ds[far[0]][TEXT][:80]!r}...; raise data.max_length (up to 512), split long "
                "documents, raise data.long_text_factor, or set data.bad_rows=drop"
            )
        if far:
            log.warning("%s: dropping %d text(s) longer than %d tokens (data.long_text_factor)", split, len(far), limit)
            far_set = set(far)
            ds = ds.select([i for i in range(len(ds)) if i not in far_set])
            if len(ds) == 0:
                raise StageError(f"every text of the {split} split is longer than {limit} tokens")
        kept[split] = ds
    return DatasetDict(kept)


def run(ctx: StageContext) -> StageResult:
    cfg = ctx.cfg
    cleaning: dict[str, dict[str, int]] = {}
    splits = load_splits(cfg, cleaning)
    names = splits["train"].features[LABEL].names
    tokenizer = build_tokenizer(cfg.teacher, splits["train"][TEXT])
    tokenizer.save_pretrained(ctx.out / "tokenizer")
    splits = drop_far_too_long(splits, tokenizer, cfg, cleaning, ctx.log)
    dropped = {s: {k: v for k, v in c.items() if v} for s, c in cleaning.items()}
    if any(dropped.values()):
        ctx.log.warning("rows dropped (data.bad_rows=drop): %s", {s: c for s, c in dropped.items() if c})

    def tokenize(batch):
        pair = batch.get(PAIR)
        return tokenizer(batch[TEXT], pair, truncation=True, max_length=cfg.data.max_length)

    tokenized = splits.map(tokenize, batched=True, desc="tokenize")
    tokenized.save_to_disk(str(ctx.out / "dataset"))

    id2label = dict(enumerate(names))
    save_json(ctx.out / "labels.json", {"id2label": id2label, "label2id": {v: k for k, v in id2label.items()}})
    counts = {
        split: {names[i]: int(n) for i, n in sorted(Counter(tokenized[split][LABEL]).items())}
        for split in SPLITS
    }
    truncated = sum(len(ids) >= cfg.data.max_length for ids in tokenized["train"]["input_ids"])
    lengths = [len(ids) for ids in tokenized["train"]["input_ids"]]
    report = {
        "source": cfg.data.source,
        "source_fingerprint": source_fingerprint(cfg.data),
        "dataset_fingerprint": {s: tokenized[s]._fingerprint for s in SPLITS},
        "class_counts": counts,
        "num_labels": len(names),
        "id2label": id2label,
        "cleaning": cleaning,
    }
    save_json(ctx.out / "data_report.json", report)
    ctx.tracker.log_artifact(ctx.out / "data_report.json")
    ctx.log.info("splits: %s; labels: %s", {s: len(tokenized[s]) for s in SPLITS}, names)
    metrics = {f"data/{s}_examples": float(len(tokenized[s])) for s in SPLITS}
    metrics |= {
        "data/num_labels": float(len(names)),
        "data/train_truncated_fraction": truncated / max(len(lengths), 1),
        "data/train_mean_tokens": sum(lengths) / max(len(lengths), 1),
        "data/dropped_rows": float(sum(v for c in cleaning.values() for k, v in c.items() if k != "dropped_duplicates")),
    }
    return StageResult(
        metrics=metrics,
        outputs={"dataset": "dataset", "tokenizer": "tokenizer", "labels": "labels.json"},
        info={"class_counts": counts, "id2label": id2label, "cleaning": cleaning},
    )
