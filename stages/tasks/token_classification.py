"""Token classification: one tag per word (named-entity recognition).

Data: sentences as words with tags (CoNLL files, JSON/JSONL rows, hub datasets with a ClassLabel
sequence, or the built-in WNUT-16), checked in the declared tag scheme and normalised to IOB2.
Alignment: a word's tag goes on its first piece; later pieces are ignored (or, with
task.label_all_tokens, tagged I-X). Sentences longer than max_length are read as overlapping
windows (task.stride tokens shared), never cut: a word seen by several windows is scored from the
window where it has the most context (bertpress.tasks.windows).
Distillation works at word level: the teacher's logits at each word's first piece, so a student
that splits words into other pieces (a vocabulary budget) still gets aligned targets.
Metric: entity-level micro F1 (primary), precision, recall with seqeval's default mode
(conlleval-compatible), per-type F1 and token accuracy.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch
from datasets import ClassLabel, Dataset, DatasetDict
from datasets import Sequence as SequenceFeature
from transformers import AutoModelForTokenClassification, DataCollatorForTokenClassification

from bertpress.tasks.windows import owners
from pipeline.config import CONLL_SUFFIXES
from pipeline.stage import StageError
from stages._losses import IGNORE_LABEL, token_distillation_loss
from stages._sources import WNUT16, extract
from stages._stats import ExampleScores
from stages._tables import SPLITS, file_splits, load_hub, read_table
from stages.tasks.base import TEACHER_LOGITS, Task, predict_rows
from stages.tasks.ner_data import (
    Sentence,
    entity_counts,
    entity_scores,
    f1_of_counts,
    read_conll,
    read_token_rows,
    to_iob2,
)

TOKENS, TAGS, TEXT = "tokens", "tags", "text"
WORD_START = "word_start"  # 1 at each word's first piece: where word-level targets sit


class TokenClassification(Task):
    name = "token-classification"
    export_task = "token-classification"
    primary_metric = "entity_f1"
    metric_labels = {"entity_f1": "entity F1", "entity_precision": "precision",
                     "entity_recall": "recall", "token_accuracy": "token accuracy"}
    per_token = True
    distillation_columns = (TEACHER_LOGITS, WORD_START)

    # -- data ----------------------------------------------------------------------------------
    def load(self, cleaning: dict) -> tuple[DatasetDict, list[str]]:
        data = self.cfg.data
        raw = _read_sentences(data)
        sentences = {}
        for split, found in raw.items():
            where = f"the {split} split"
            checked = [(words, to_iob2(tags, data.tag_scheme, i, where)) for i, (words, tags) in enumerate(found)]
            sentences[split], cleaning[split] = _clean(checked, split, data.bad_rows)
            if not sentences[split]:
                raise StageError(f"{where} has no sentences left; check the file behind it")
        names = tag_names(sentences["train"])
        if len(names) < 3:
            raise StageError("the train split has no entity tags at all (only 'O'); check "
                             "data.tags_column and that the data is tagged")
        for split in ("validation", "test"):
            unknown = {t for _, tags in sentences.get(split, []) for t in tags} - set(names)
            if unknown:
                raise StageError(f"the {split} split has tags {sorted(unknown)} whose entity type the "
                                 "train split never has; add examples of them to train")
        return self._split(sentences, names), names

    def _split(self, sentences: dict[str, list[Sentence]], names: list[str]) -> DatasetDict:
        data, seed = self.cfg.data, self.cfg.project.seed
        train = sentences["train"]
        rng = np.random.default_rng(seed)
        order = [int(i) for i in rng.permutation(len(train))]
        parts = {}
        for split, size in (("test", data.test_size), ("validation", data.validation_size)):
            if split in sentences:
                parts[split] = sentences[split]
                continue
            take = max(1, round(len(train) * size))
            if take >= len(order):
                raise StageError(f"only {len(train)} training sentences: too few to carve a {split} "
                                 f"split of {size:.0%}; add data or give data.files.{split}")
            parts[split], order = [train[i] for i in sorted(order[:take])], order[take:]
        parts["train"] = [train[i] for i in sorted(order)]
        result = DatasetDict({split: _to_dataset(parts[split], names) for split in SPLITS})
        if data.max_train_samples and len(result["train"]) > data.max_train_samples:
            result["train"] = result["train"].shuffle(seed=seed).select(range(data.max_train_samples))
        if data.max_eval_samples:
            for split in SPLITS[1:]:
                if len(result[split]) > data.max_eval_samples:
                    result[split] = result[split].shuffle(seed=seed).select(range(data.max_eval_samples))
        return result

    def prepare(self, splits: DatasetDict, tokenizer, names: list[str], log) -> tuple[DatasetDict, dict, dict]:
        report: dict[str, Any] = {"tag_scheme_in": self.cfg.data.tag_scheme, "tag_scheme": "iob2",
                                  "entity_counts": {}, "windows": {}, "long_sentences": {}}
        for split, ds in splits.items():
            report["entity_counts"][split] = dict(sorted(Counter(
                names[t][2:] for tags in ds[TAGS] for t in tags if names[t].startswith("B-")).items()))
            features = self.features(ds, tokenizer)
            report["windows"][split] = len(features)
            report["long_sentences"][split] = len(features) - len(ds)
        lengths = [len(ids) for ids in tokenizer(list(splits["train"][TOKENS]), is_split_into_words=True)["input_ids"]]
        log.info("windows per split (max_length %d, stride %d): %s; sentences needing more than one: %s",
                 self.cfg.data.max_length, self.cfg.task.stride, report["windows"], report["long_sentences"])
        metrics = {"data/num_labels": float(len(names)),
                   "data/train_entities": float(sum(report["entity_counts"]["train"].values())),
                   "data/train_windows": float(report["windows"]["train"]),
                   "data/train_mean_tokens": sum(lengths) / max(len(lengths), 1)}
        return splits, report, metrics

    # -- models --------------------------------------------------------------------------------
    @property
    def auto_model(self):
        return AutoModelForTokenClassification

    @property
    def ort_model(self):
        from optimum.onnxruntime import ORTModelForTokenClassification

        return ORTModelForTokenClassification

    def features(self, split: Dataset, tokenizer) -> Dataset:
        """One row per window: model inputs, `labels` (first pieces; -100 elsewhere unless
        label_all_tokens), `word_start`, and for scoring the sentence index, each token's word
        and the sentence's gold tags."""
        enc = tokenizer(list(split[TOKENS]), is_split_into_words=True, truncation=True,
                        max_length=self.cfg.data.max_length, stride=self.cfg.task.stride,
                        return_overflowing_tokens=True, return_offsets_mapping=True)
        sentence_of = enc["overflow_to_sample_mapping"]
        keys = [_token_keys(enc.word_ids(i), enc["offset_mapping"][i]) for i in range(len(sentence_of))]
        first: dict[tuple[int, int], tuple] = {}  # (sentence, word) -> key of its first piece
        for i, window in enumerate(keys):
            for key in window:
                if key is not None:
                    known = first.get((sentence_of[i], key[0]))
                    first[(sentence_of[i], key[0])] = key if known is None else min(known, key)
        gold, names = split[TAGS], tag_names_of(split)
        # Later pieces of a word: ignored, or with label_all_tokens B-X -> I-X (HF's b_to_i_label).
        later = ({i: names.index("I-" + n[2:]) if n.startswith("B-") else i for i, n in enumerate(names)}
                 if self.cfg.task.label_all_tokens else {})
        columns: dict[str, list] = {c: [] for c in ("labels", WORD_START, "sentence", "word_ids", "gold")}
        for i, window in enumerate(keys):
            s = sentence_of[i]
            starts = [int(k is not None and first[(s, k[0])] == k) for k in window]
            columns["labels"].append([
                IGNORE_LABEL if k is None else gold[s][k[0]] if start else later.get(gold[s][k[0]], IGNORE_LABEL)
                for k, start in zip(window, starts, strict=True)])
            columns[WORD_START].append(starts)
            columns["sentence"].append(s)
            columns["word_ids"].append([-1 if k is None else k[0] for k in window])
            columns["gold"].append(gold[s])
        inputs = {k: enc[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc}
        return Dataset.from_dict(inputs | columns).cast_column("gold", SequenceFeature(ClassLabel(names=names)))

    def collator(self, tokenizer):
        return DataCollatorForTokenClassification(tokenizer)

    def collator_for_distillation(self, tokenizer):
        return WordTargetsCollator(tokenizer)

    def head_logits(self, model, encoded, attention_mask=None):
        return model.classifier(model.dropout(encoded.last_hidden_state))

    # -- metrics -------------------------------------------------------------------------------
    def word_predictions(self, rows: list[np.ndarray], features: Dataset) -> dict[int, dict[int, np.ndarray]]:
        """Per sentence, per word: the logits at its first piece, read from the window where that
        piece has the most context (when windows overlap)."""
        members: dict[int, list[int]] = {}
        for i, s in enumerate(features["sentence"]):
            members.setdefault(s, []).append(i)
        words, starts = features["word_ids"], features[WORD_START]
        out: dict[int, dict[int, np.ndarray]] = {}
        for s, windows in members.items():
            content = [[j for j, w in enumerate(words[i]) if w >= 0] for i in windows]
            # A first piece is keyed by its word (the same token in every window that holds it);
            # other pieces only count for the distance to a window's edge.
            keyed = [[words[i][j] if starts[i][j] else ("piece", n, j) for j in c]
                     for n, (i, c) in enumerate(zip(windows, content, strict=True))]
            out[s] = {key: rows[windows[n]][content[n][p]] for key, (n, p) in owners(keyed).items()
                      if not isinstance(key, tuple)}
        return out

    def metrics(self, rows: list[np.ndarray], features: Dataset) -> dict[str, float]:
        return _flat(entity_scores(*self._tag_sequences(rows, features)))

    def evaluate(self, rows: list[np.ndarray], features: Dataset) -> tuple[dict[str, float], ExampleScores]:
        """Entity F1 is not a mean over sentences: each sentence's (tp, fp, fn) entity counts, with
        micro F1 over their sums as the statistic, for the benchmark's paired bootstrap."""
        gold, pred = self._tag_sequences(rows, features)
        return _flat(entity_scores(gold, pred)), ExampleScores(entity_counts(gold, pred), f1_of_counts)

    def _tag_sequences(self, rows: list[np.ndarray], features: Dataset) -> tuple[list[list[str]], list[list[str]]]:
        """Gold and predicted tags per sentence (words the windows never reached: O)."""
        names = features.features["gold"].feature.names
        predicted = self.word_predictions(rows, features)
        gold_of = dict(zip(features["sentence"], features["gold"], strict=True))
        gold, pred = [], []
        for s in sorted(gold_of):
            tags = gold_of[s]
            gold.append([names[t] for t in tags])
            pred.append([names[int(predicted[s][w].argmax())] if w in predicted[s] else "O"
                         for w in range(len(tags))])
        return gold, pred

    # -- distillation --------------------------------------------------------------------------
    def distillation_data(self, ctx, raw: DatasetDict, teacher, teacher_tokenizer, student_tokenizer,
                          targets_for: frozenset[str]) -> tuple[DatasetDict, dict | None]:
        out = DatasetDict()
        for name, split in raw.items():
            student = self.features(split, student_tokenizer)
            if name in targets_for:
                teacher_side = self.features(split, teacher_tokenizer)
                rows = predict_rows(_torch_predictor(teacher), teacher_side, teacher_tokenizer,
                                    desc=f"teacher targets ({name})")
                words = self.word_predictions(rows, teacher_side)
                targets = [[words[s][w].tolist() for w, start in zip(ids, starts, strict=True) if start]
                           for s, ids, starts in zip(student["sentence"], student["word_ids"],
                                                     student[WORD_START], strict=True)]
                student = student.add_column(TEACHER_LOGITS, targets)
            out[name] = student
        if targets_for:
            out["train"] = out["train"].shuffle(seed=self.cfg.project.seed)
        return out, None

    def distillation_loss(self, student_logits, teacher_logits, inputs: dict, temperature: float, alpha: float):
        starts = inputs[WORD_START].bool()
        if teacher_logits.dim() == 3:  # live teacher on the same pieces
            teacher_logits = teacher_logits[starts]
        return token_distillation_loss(student_logits, teacher_logits, inputs["labels"], starts,
                                       temperature, alpha)

    # -- release -------------------------------------------------------------------------------
    def score_bundle(self, model, split: Dataset) -> dict[str, float]:
        names = tag_names_of(split)
        predicted = model.head.word_tags([list(t) for t in split[TOKENS]], batch_size=1)
        gold = [[names[t] for t in tags] for tags in split[TAGS]]
        return _flat(entity_scores(gold, predicted))

    def bundle_metadata(self, model_config: dict[str, Any] | None = None) -> dict[str, Any]:
        return {"aggregation": self.cfg.task.aggregation, "stride": self.cfg.task.stride,
                "tag_scheme": "iob2"}


class WordTargetsCollator:
    """DataCollatorForTokenClassification plus the word-start mask (padded with 0) and the
    precomputed word-level teacher logits, flattened in row-major word order to [N, labels]."""

    def __init__(self, tokenizer):
        self.base = DataCollatorForTokenClassification(tokenizer)

    def __call__(self, features: list[dict]) -> dict:
        features = [dict(f) for f in features]
        starts = [f.pop(WORD_START) for f in features]
        targets = [f.pop(TEACHER_LOGITS) for f in features] if TEACHER_LOGITS in features[0] else None
        batch = self.base(features)
        length = batch["input_ids"].shape[1]
        batch[WORD_START] = torch.tensor([list(s) + [0] * (length - len(s)) for s in starts], dtype=torch.long)
        if targets is not None:
            rows = [row for t in targets for row in t]
            batch[TEACHER_LOGITS] = torch.tensor(rows, dtype=torch.float32)
        return batch


def tag_names(sentences: list[Sentence]) -> list[str]:
    """O, then B-X and I-X for every entity type in the sentences (both, so the model can emit
    I-X even for a type whose entities are all one word), types sorted."""
    types = sorted({tag[2:] for _, tags in sentences for tag in tags if tag != "O"})
    return ["O", *(f"{p}-{t}" for t in types for p in "BI")]


def tag_names_of(split: Dataset) -> list[str]:
    return list(split.features[TAGS].feature.names)


def _flat(scores: dict) -> dict[str, float]:
    per_type = scores.pop("per_type")
    return scores | {f"f1_{kind}": v["f1"] for kind, v in per_type.items()}


def _token_keys(word_ids: list[int | None], offsets: list[tuple[int, int]]) -> list[tuple | None]:
    """Per token: (word, start, end) within its word, or None for special tokens and padding."""
    return [None if w is None else (w, *map(int, off)) for w, off in zip(word_ids, offsets, strict=True)]


def _torch_predictor(model):
    model.eval()

    def predict(batch: dict[str, np.ndarray]) -> np.ndarray:
        with torch.no_grad():
            feed = {k: torch.from_numpy(v).to(model.device) for k, v in batch.items()}
            return model(**feed).logits.float().cpu().numpy()

    return predict


# --------------------------------------------------------------------------------------------
# Reading


def _read_sentences(data) -> dict[str, list[Sentence]]:
    if data.source == "builtin":
        return {"train": read_conll(extract(WNUT16))}
    if data.source == "files":
        return {split: _read_file(path, data) for split, path in file_splits(data).items()}
    found = {}
    for ours, split in load_hub(data).items():
        where = f"{data.hub_name}[{ours}]"
        for column in (data.tokens_column, data.tags_column):
            if column not in split.column_names:
                raise StageError(f"{where} has no column {column!r}; it has {split.column_names}. Set "
                                 "data.tokens_column / data.tags_column to match")
        names = _class_names(split.features[data.tags_column])
        rows = split.to_list()
        if names:
            for row in rows:
                row[data.tags_column] = [names[int(t)] for t in row[data.tags_column]]
        found[ours] = read_token_rows(rows, data.tokens_column, data.tags_column, where)
    return found


def _class_names(feature) -> list[str] | None:
    """Tag names of a hub ClassLabel sequence (datasets' Sequence or List feature), else None."""
    inner = getattr(feature, "feature", None)
    return list(inner.names) if isinstance(inner, ClassLabel) else None


def _read_file(path: Path, data) -> list[Sentence]:
    if path.suffix.lower() in CONLL_SUFFIXES:
        return read_conll(path)
    frame = read_table(path)
    return read_token_rows(frame.to_dict("records"), data.tokens_column, data.tags_column, str(path))


def _clean(sentences: list[Sentence], split: str, policy: str) -> tuple[list[Sentence], dict[str, int]]:
    """Drop empty/whitespace-only words (with their tags), then sentences left empty, then exact
    duplicates; with data.bad_rows=fail, an empty word or sentence is an error."""
    kept, empty_words, empty_sentences, seen = [], 0, 0, set()
    for i, (words, tags) in enumerate(sentences):
        good = [(w, t) for w, t in zip(words, tags, strict=True) if w.strip()]
        if len(good) != len(words) or not good:
            if policy == "fail":
                raise StageError(f"the {split} split's sentence {i} (0-based) has an empty word or no "
                                 "words at all; fix the data, or set data.bad_rows=drop")
            empty_words += len(words) - len(good)
        if not good:
            empty_sentences += 1
            continue
        key = tuple(good)
        if key in seen:
            continue
        seen.add(key)
        kept.append(([w for w, _ in good], [t for _, t in good]))
    return kept, {"dropped_empty_words": empty_words, "dropped_empty": empty_sentences,
                  "dropped_duplicates": len(sentences) - empty_sentences - len(kept)}


def _to_dataset(sentences: list[Sentence], names: list[str]) -> Dataset:
    index = {n: i for i, n in enumerate(names)}
    return Dataset.from_dict(
        {TOKENS: [w for w, _ in sentences], TAGS: [[index[t] for t in tags] for _, tags in sentences],
         TEXT: [" ".join(w) for w, _ in sentences]},
    ).cast_column(TAGS, SequenceFeature(ClassLabel(names=names)))
