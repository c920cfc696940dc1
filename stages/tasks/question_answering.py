"""Extractive question answering (SQuAD): start and end logits over the context's tokens.

Data: SQuAD-format JSON, JSONL rows or hub datasets of the squad shape (stages.tasks.qa_data),
answers checked against their contexts, split by article.
Windows: question + context longer than max_length is read as overlapping windows of the context
(task.doc_stride tokens shared), each holding the whole question; a training window whose context
part lacks the answer points at [CLS] (SQuAD v1.1 practice). Scoring reads every window and takes
the best span over all of them (bertpress.tasks.question_answering.best_spans, the runtime's own
code), mapped back to characters of the original context.
Model: transformers' BertForQuestionAnswering whose `logits` are [batch, seq, 2] (start, end):
the layout the Trainer, the distillation loop, the export wrapper (the head in the graph) and the
benchmark share with the per-token heads. Saved as a plain BertForQuestionAnswering directory.
Distillation: KL at temperature on the start and on the end distributions plus CE on the gold
positions (stages._losses.span_distillation_loss). With a vocabulary budget the teacher reads the
student's pieces (every kept piece is one of its own), so targets line up position by position.
Metric: the official SQuAD v1.1 exact match and F1 (F1 primary).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from datasets import Dataset, DatasetDict
from transformers import BertForQuestionAnswering, DataCollatorWithPadding
from transformers.modeling_outputs import TokenClassifierOutput

from bertpress.tasks.question_answering import (
    best_spans,
    question_scores,
    squad_means,
    squad_scores,
)
from pipeline.stage import StageError
from stages._losses import span_cross_entropy, span_distillation_loss
from stages._tables import SPLITS, file_splits, load_hub, read_table
from stages.tasks import qa_data
from stages.tasks.base import TEACHER_LOGITS, Task, predict_rows
from stages.tasks.qa_data import ANSWERS, CONTEXT, QUESTION

LABELS = ["start", "end"]  # the two logits per token
OUTSIDE = -1  # offsets of tokens outside the context (question, specials)


class SpanQuestionAnswering(BertForQuestionAnswering):
    """BertForQuestionAnswering with `logits` = qa_outputs(sequence) [B, L, 2] and `labels` =
    [B, 2] gold (start, end) token positions; the weights and config are the stock class's."""

    @classmethod
    def from_config(cls, config):
        return cls(config)

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, labels=None,
                output_hidden_states=None, output_attentions=None, return_dict=None, **_):
        encoded = self.bert(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                            output_hidden_states=output_hidden_states, output_attentions=output_attentions,
                            return_dict=True)
        logits = self.qa_outputs(encoded.last_hidden_state)
        loss = span_cross_entropy(logits, labels, attention_mask) if labels is not None else None
        return TokenClassifierOutput(loss=loss, logits=logits, hidden_states=encoded.hidden_states,
                                     attentions=encoded.attentions)


class QuestionAnswering(Task):
    name = "question-answering"
    export_task = "question-answering"
    primary_metric = "f1"
    metric_labels = {"f1": "F1", "exact_match": "EM"}
    per_token = True
    own_export = True  # one [B, L, 2] output instead of optimum's start_logits / end_logits
    argmax_outputs = False  # start vs end per token is no prediction; parity is the logit difference

    # -- data ----------------------------------------------------------------------------------
    def load(self, cleaning: dict) -> tuple[DatasetDict, list[str]]:
        data, seed = self.cfg.data, self.cfg.project.seed
        found = _read_rows(data)
        checked = {}
        for split, rows in found.items():
            checked[split], cleaning[split] = qa_data.check_answers(rows, data.bad_rows, f"the {split} split")
            if not checked[split]:
                raise StageError(f"the {split} split has no question with a valid answer left")
        parts = qa_data.split_by_article(checked["train"], data.squad_every, data.validation_size, seed,
                                         test_given="test" in checked, validation_given="validation" in checked)
        parts |= {split: rows for split, rows in checked.items() if split != "train"}
        splits = DatasetDict({split: Dataset.from_list(parts[split]) for split in SPLITS})
        if data.max_train_samples and len(splits["train"]) > data.max_train_samples:
            splits["train"] = splits["train"].shuffle(seed=seed).select(range(data.max_train_samples))
        if data.max_eval_samples:
            for split in SPLITS[1:]:
                if len(splits[split]) > data.max_eval_samples:
                    splits[split] = splits[split].shuffle(seed=seed).select(range(data.max_eval_samples))
        return splits, LABELS

    def texts(self, split: Dataset) -> list[str]:
        """The questions, then each distinct context once."""
        return list(split[QUESTION]) + list(dict.fromkeys(split[CONTEXT]))

    def timing_inputs(self, split: Dataset) -> list[Any]:
        return list(zip(split[QUESTION], split[CONTEXT], strict=True))

    def calibration_inputs(self, split: Dataset) -> list[Any]:
        return self.timing_inputs(split)

    def prepare(self, splits: DatasetDict, tokenizer, names: list[str], log) -> tuple[DatasetDict, dict, dict]:
        report: dict[str, Any] = {"questions": {}, "contexts": {}, "articles": {}, "windows": {},
                                  "answer_outside_every_window": {}}
        for split, ds in splits.items():
            features = self.features(ds, tokenizer)
            found = {int(e) for e, (s, _) in zip(features["example"], features["labels"], strict=True) if s > 0}
            report["questions"][split] = len(ds)
            report["contexts"][split] = len(set(ds[CONTEXT]))
            report["articles"][split] = len({qa_data.article_of(r) for r in ds.select_columns([qa_data.TITLE, CONTEXT])})
            report["windows"][split] = len(features)
            report["answer_outside_every_window"][split] = len(ds) - len(found)
        log.info("questions %s, windows (max_length %d, doc_stride %d) %s; answers beyond every window "
                 "(cut at a window edge): %s", report["questions"], self.cfg.data.max_length,
                 self.cfg.task.doc_stride, report["windows"], report["answer_outside_every_window"])
        metrics = {"data/train_questions": float(report["questions"]["train"]),
                   "data/train_windows": float(report["windows"]["train"]),
                   "data/test_questions": float(report["questions"]["test"])}
        return splits, report, metrics

    # -- models --------------------------------------------------------------------------------
    @property
    def auto_model(self):
        return SpanQuestionAnswering

    @property
    def ort_model(self):
        from optimum.onnxruntime import ORTModelForQuestionAnswering

        return ORTModelForQuestionAnswering

    def features(self, split: Dataset, tokenizer) -> Dataset:
        """One row per window: model inputs, `labels` [start, end] token positions of the first
        gold answer (0, [CLS], when the window's context part does not hold all of it), and for
        scoring the example index, each token's context offsets (-1 outside the context), the
        context and the gold answers."""
        data, task = self.cfg.data, self.cfg.task
        enc = tokenizer(list(split[QUESTION]), list(split[CONTEXT]), truncation="only_second",
                        max_length=data.max_length, stride=task.doc_stride, return_overflowing_tokens=True,
                        return_offsets_mapping=True)
        example_of = enc["overflow_to_sample_mapping"]
        answers, contexts = split[ANSWERS], split[CONTEXT]
        columns: dict[str, list] = {c: [] for c in ("labels", "example", "offsets", "context", "gold")}
        for i, e in enumerate(example_of):
            sequence = enc.sequence_ids(i)
            offsets = [list(o) if s == 1 else [OUTSIDE, OUTSIDE] for o, s in zip(enc["offset_mapping"][i], sequence,
                                                                                   strict=True)]
            first = answers[e]["answer_start"][0]
            columns["labels"].append(answer_positions(offsets, first, first + len(answers[e]["text"][0])))
            columns["example"].append(e)
            columns["offsets"].append(offsets)
            columns["context"].append(contexts[e])
            columns["gold"].append(answers[e]["text"])
        inputs = {k: enc[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc}
        return Dataset.from_dict(inputs | columns)

    def collator(self, tokenizer):
        return SpanCollator(tokenizer)

    def head_logits(self, model, encoded, attention_mask=None):
        return model.qa_outputs(encoded.last_hidden_state)

    def save_model(self, model, tokenizer, out) -> dict[str, float]:
        from stages._hf import save_model

        model.config.architectures = ["BertForQuestionAnswering"]  # a stock transformers QA directory
        return save_model(model, tokenizer, out)

    # -- metrics -------------------------------------------------------------------------------
    def predictions(self, rows: list[np.ndarray], features: Dataset) -> dict[int, tuple[str, list[str]]]:
        """Per example: the best answer over its windows, and its gold answers."""
        task = self.cfg.task
        members: dict[int, list[int]] = {}
        for i, e in enumerate(features["example"]):
            members.setdefault(e, []).append(i)
        offsets, contexts, golds = features["offsets"], features["context"], features["gold"]
        out = {}
        for e, windows in members.items():
            spans = [(rows[i][:, 0], rows[i][:, 1], [None if o[0] == OUTSIDE else tuple(o) for o in offsets[i]])
                     for i in windows]
            best = best_spans(spans, contexts[windows[0]], 1, task.max_answer_length, task.n_best)[0]
            out[e] = (best["answer"], golds[windows[0]])
        return out

    def metrics(self, rows: list[np.ndarray], features: Dataset) -> dict[str, float]:
        return self.evaluate(rows, features)[0]

    def evaluate(self, rows: list[np.ndarray], features: Dataset) -> tuple[dict[str, float], np.ndarray]:
        """SQuAD's scores and each question's F1 (the max over its gold answers; their mean is F1),
        from one span search."""
        found = self.predictions(rows, features)
        per_question = question_scores([p for p, _ in found.values()], [g for _, g in found.values()])
        return squad_means(per_question), per_question["f1"]

    # -- distillation --------------------------------------------------------------------------
    def distillation_data(self, ctx, raw: DatasetDict, teacher, teacher_tokenizer, student_tokenizer,
                          targets_for: frozenset[str]) -> tuple[DatasetDict, dict | None]:
        out = DatasetDict()
        to_teacher = teacher_ids(teacher_tokenizer, student_tokenizer) if targets_for else None
        for name, split in raw.items():
            student = self.features(split, student_tokenizer)
            if name in targets_for:
                seen = student.map(lambda row: {"input_ids": to_teacher[row["input_ids"]].tolist()})
                rows = predict_rows(torch_predictor(teacher), seen, teacher_tokenizer, desc=f"teacher targets ({name})")
                student = student.add_column(TEACHER_LOGITS, [r.tolist() for r in rows])
            out[name] = student
        if targets_for:
            out["train"] = out["train"].shuffle(seed=self.cfg.project.seed)
        return out, None

    def distillation_loss(self, student_logits, teacher_logits, inputs: dict, temperature: float, alpha: float):
        return span_distillation_loss(student_logits, teacher_logits, inputs["labels"], inputs.get("attention_mask"),
                                      temperature, alpha)

    # -- export, comparison ----------------------------------------------------------------------
    def stock_predictor(self, session, teacher_dir):
        names = {i.name for i in session.get_inputs()}

        def predict(batch):
            start, end = session.run(["start_logits", "end_logits"], {k: v for k, v in batch.items() if k in names})
            return np.stack([start, end], axis=-1)

        return predict

    # -- release -------------------------------------------------------------------------------
    def score_bundle(self, model, split: Dataset) -> dict[str, float]:
        predicted = model.predict(self.timing_inputs(split), batch_size=1)
        return squad_scores([p["answer"] for p in predicted], [a["text"] for a in split[ANSWERS]])

    def bundle_metadata(self, model_config: dict[str, Any] | None = None) -> dict[str, Any]:
        task = self.cfg.task
        return {"doc_stride": task.doc_stride, "max_answer_length": task.max_answer_length, "n_best": task.n_best}


def answer_positions(offsets: list[list[int]], start_char: int, end_char: int) -> list[int]:
    """[start, end] token positions of the characters [start_char, end_char) in a window whose
    context tokens have `offsets` (OUTSIDE elsewhere); [0, 0] ([CLS]) when the window's context
    part does not hold the whole answer."""
    inside = [i for i, o in enumerate(offsets) if o[0] != OUTSIDE]
    if not inside or offsets[inside[0]][0] > start_char or offsets[inside[-1]][1] < end_char:
        return [0, 0]
    start = next(i for i in inside if offsets[i][1] > start_char)
    end = next(i for i in reversed(inside) if offsets[i][0] < end_char)
    return [start, end] if start <= end else [0, 0]


def teacher_ids(teacher_tokenizer, student_tokenizer) -> np.ndarray:
    """For each student id, the teacher's id of the same piece (a vocabulary budget keeps a subset
    of the teacher's pieces)."""
    pieces = student_tokenizer.convert_ids_to_tokens(list(range(len(student_tokenizer))))
    mapped = np.asarray(teacher_tokenizer.convert_tokens_to_ids(pieces), dtype=np.int64)
    unknown = [p for p, m in zip(pieces, mapped, strict=True)
               if m == teacher_tokenizer.unk_token_id and p != teacher_tokenizer.unk_token]
    if unknown:
        raise StageError(f"the student's vocabulary has pieces its teacher does not know ({unknown[:5]}): "
                         "the teacher cannot read the student's windows")
    return mapped


def torch_predictor(model):
    model.eval()

    def predict(batch: dict[str, np.ndarray]) -> np.ndarray:
        with torch.no_grad():
            feed = {k: torch.from_numpy(v).to(model.device) for k, v in batch.items()}
            return model(**feed).logits.float().cpu().numpy()

    return predict


class SpanCollator:
    """Padded model inputs, `labels` [B, 2], and precomputed teacher logits padded to [B, L, 2]."""

    def __init__(self, tokenizer):
        self.base = DataCollatorWithPadding(tokenizer)

    def __call__(self, features: list[dict]) -> dict:
        features = [dict(f) for f in features]
        targets = [f.pop(TEACHER_LOGITS) for f in features] if TEACHER_LOGITS in features[0] else None
        batch = self.base(features)
        if targets is not None:
            length = batch["input_ids"].shape[1]
            padded = np.zeros((len(targets), length, 2), dtype=np.float32)
            for i, rows in enumerate(targets):
                padded[i, : len(rows)] = rows
            batch[TEACHER_LOGITS] = torch.from_numpy(padded)
        return batch


# --------------------------------------------------------------------------------------------
# Reading


def _read_rows(data) -> dict[str, list[dict[str, Any]]]:
    if data.source == "files":
        return {split: _read_file(path, data) for split, path in file_splits(data).items()}
    found = {}
    for ours, split in load_hub(data).items():
        found[ours] = qa_data.read_qa_records(split.to_list(), f"{data.hub_name}[{ours}]")
    return found


def _read_file(path: Path, data) -> list[dict[str, Any]]:
    if data.file_format == "squad":
        return qa_data.read_squad_rows(path)
    return qa_data.read_qa_records(read_table(path).to_dict("records"), str(path))
