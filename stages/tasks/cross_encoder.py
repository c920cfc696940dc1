"""Re-ranking with a cross-encoder: one relevance logit for a (query, passage) pair read together.

Data (stages.tasks.rerank_data): a SQuAD file read through a first-stage embedding retriever
(task.retriever): training pairs are each question with its paragraph and its hardest retrieved
negatives; evaluation pairs are each question with the retriever's top task.rerank_depth
paragraphs of the whole file. Or a table of judged (query, passage, label) rows.
Model: BertForSequenceClassification with one output ([CLS] -> pooler -> dense -> 1 logit), trained
with binary cross-entropy on the labels (sentence-transformers' CrossEncoder recipe); saved as a
plain BertForSequenceClassification directory.
Distillation: alpha * BCE(labels) + (1 - alpha) * either MSE on the teacher's logits or Margin-MSE
over a query's relevant / irrelevant pairs (task.distill_loss; Margin-MSE keeps a query's rows in one
batch). With a vocabulary budget the teacher's scores are computed once on its own pieces.
Metric: the candidates of each query re-ranked by score: MRR@k (primary), nDCG@k, Recall@1, Recall@k;
the retriever's own ranking of the same candidates is in the data report (and beside each result).
With task.retriever_weight > 0 the order is the cross-encoder's score fused with the retriever's
(bertpress.ranking.fuse_scores) wherever the rows carry retriever scores, the cross-encoder alone
reported beside it (keys prefixed cross_encoder_).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from datasets import Dataset, DatasetDict
from transformers import BertForSequenceClassification
from transformers.modeling_outputs import SequenceClassifierOutput

from bertpress.ranking import fuse_scores
from pipeline.stage import StageError
from stages._hf import MODEL_INPUTS
from stages._losses import relevance_bce, score_distillation_loss
from stages._tables import SPLITS, file_splits, read_table
from stages.tasks import rerank_data as rd
from stages.tasks.base import TEACHER_LOGITS, Task
from stages.tasks.sequence_classification import SequenceClassification, teacher_logits

LABELS = ["relevance"]  # one logit
ALONE = "cross_encoder_"  # metric keys of the cross-encoder alone when its scores are fused


class RelevanceCrossEncoder(BertForSequenceClassification):
    """BertForSequenceClassification with one logit whose loss is binary cross-entropy against the
    float relevance labels; the weights and config are the stock class's."""

    @classmethod
    def from_config(cls, config):
        return cls(config)

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, labels=None,
                output_hidden_states=None, output_attentions=None, return_dict=None, **_):
        out = super().forward(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                              output_hidden_states=output_hidden_states, output_attentions=output_attentions,
                              return_dict=True)
        loss = relevance_bce(out.logits, labels) if labels is not None else None
        return SequenceClassifierOutput(loss=loss, logits=out.logits, hidden_states=out.hidden_states,
                                        attentions=out.attentions)


class CrossEncoder(Task):
    name = "cross-encoder"
    export_task = "text-classification"
    argmax_outputs = False  # one logit: parity is its difference, not an argmax

    def __init__(self, cfg):
        super().__init__(cfg)
        k = self.k = cfg.task.k
        self.primary_metric = f"mrr_at_{k}"
        self.metric_labels = {f"mrr_at_{k}": f"MRR@{k}", f"ndcg_at_{k}": f"nDCG@{k}", "recall_at_1": "R@1"}
        self.retriever_weight = cfg.task.retriever_weight
        if self.retriever_weight:  # the fused order is the metric; the cross-encoder alone beside it
            self.metric_labels[f"{ALONE}mrr_at_{k}"] = f"MRR@{k} (cross-encoder alone)"
        # Margin-MSE pairs a query's rows inside a batch: they stay together (see distillation_data).
        self.keeps_batch_order = cfg.task.distill_loss == "margin-mse"
        self.distillation_columns = (TEACHER_LOGITS, rd.QUERY_ID)

    # -- data ----------------------------------------------------------------------------------
    def load(self, cleaning: dict) -> tuple[DatasetDict, list[str]]:
        data, task, seed = self.cfg.data, self.cfg.task, self.cfg.project.seed
        files = file_splits(data)
        if data.file_format == "squad":
            from stages.tasks.embedding_data import read_squad
            from stages.tasks.qa_data import article_parts

            articles = read_squad(files["train"])
            roles = article_parts(len(articles), data.squad_every, data.validation_size, seed)
            limits = {"train": data.max_train_samples, "validation": data.max_eval_samples,
                      "test": data.max_eval_samples}
            rows, self._report = rd.squad_splits(articles, roles, task.retriever, task.rerank_depth, task.negatives,
                                                 limits, seed, self.k)
        else:
            found = {split: rd.table_rows(self._table(path), str(path)) for split, path in files.items()}
            rows = rd.split_table_by_query(found["train"], data.validation_size, data.test_size, seed, set(found))
            rows |= {split: r for split, r in found.items() if split != "train"}
            self._report = {"queries": {s: len({r[rd.QUERY_ID] for r in r_}) for s, r_ in rows.items()}}
        for split in SPLITS:
            cleaning[split] = {}
        return DatasetDict({split: Dataset.from_list(rows[split]) for split in SPLITS}), LABELS

    def _table(self, path) -> pd.DataFrame:
        data = self.cfg.data
        table = read_table(path)
        wanted = {rd.QUERY: data.text_column, rd.PASSAGE: data.text_pair_column, rd.LABEL: data.label_column}
        missing = [c for c in wanted.values() if c not in table.columns]
        if missing:
            raise StageError(f"{path}: column(s) {missing} not found; it has {list(table.columns)}. Set "
                             "data.text_column (query), data.text_pair_column (passage), data.label_column "
                             "(relevance)")
        return pd.DataFrame({ours: table[theirs] for ours, theirs in wanted.items()})

    sample_unit = "queries"  # a query keeps all its pairs (Margin-MSE and the metrics need them whole)

    def sample_units(self, train: Dataset) -> int:
        return len(set(train[rd.QUERY_ID]))

    def teacher_sample(self, train: Dataset, size: int | None, seed: int) -> Dataset:
        queries = sorted(set(train[rd.QUERY_ID]))
        keep = rd.query_sample(len(queries), size, seed, "train")
        if keep is None:
            return train
        wanted = {queries[i] for i in keep}
        return train.select([i for i, q in enumerate(train[rd.QUERY_ID]) if q in wanted])

    def texts(self, split: Dataset) -> list[str]:
        """The queries, then each distinct passage once."""
        return list(dict.fromkeys(split[rd.QUERY])) + list(dict.fromkeys(split[rd.PASSAGE]))

    def timing_inputs(self, split: Dataset) -> list[Any]:
        return list(zip(split[rd.QUERY], split[rd.PASSAGE], strict=True))

    def calibration_inputs(self, split: Dataset) -> list[Any]:
        return self.timing_inputs(split)

    def prepare(self, splits: DatasetDict, tokenizer, names: list[str], log) -> tuple[DatasetDict, dict, dict]:
        report = {"pairs": {s: len(d) for s, d in splits.items()},
                  "relevant_pairs": {s: int(sum(v > 0 for v in d[rd.LABEL])) for s, d in splits.items()}}
        report |= getattr(self, "_report", {})
        lengths = [len(ids) for ids in tokenizer(list(splits["train"][rd.QUERY]),
                                                 list(splits["train"][rd.PASSAGE]))["input_ids"]]
        metrics = {"data/train_pairs": float(len(splits["train"])),
                   "data/train_truncated_fraction": sum(n > self.cfg.data.max_length for n in lengths) / max(len(lengths), 1)}
        for split in ("validation", "test"):
            for key, value in report.get(f"retriever_{split}", {}).items():
                metrics[f"data/retriever_{split}_{key}"] = value
        log.info("re-ranking pairs %s (relevant %s); retriever alone on test: %s", report["pairs"],
                 report["relevant_pairs"], report.get("retriever_test", "n/a (judged pairs, no retriever)"))
        return splits, report, metrics

    # -- models --------------------------------------------------------------------------------
    @property
    def auto_model(self):
        return RelevanceCrossEncoder

    # The graph, its loader, batching and head are sequence classification's (one output).
    ort_model = SequenceClassification.ort_model
    collator = SequenceClassification.collator
    head_logits = SequenceClassification.head_logits

    def features(self, split: Dataset, tokenizer) -> Dataset:
        """One row per pair: model inputs, the float label, and what ranking needs (query id,
        document id, the query's judgments)."""
        enc = tokenizer(list(split[rd.QUERY]), list(split[rd.PASSAGE]), truncation=True,
                        max_length=self.cfg.data.max_length)
        carried = {c: list(split[c]) for c in (rd.QUERY_ID, rd.DOC_ID, rd.RELEVANT, rd.GAINS, rd.RETRIEVER_SCORE)}
        return Dataset.from_dict({k: enc[k] for k in MODEL_INPUTS if k in enc}
                                 | {"labels": [float(v) for v in split[rd.LABEL]]} | carried)

    def save_model(self, model, tokenizer, out) -> dict[str, float]:
        from stages._hf import save_model

        model.config.architectures = ["BertForSequenceClassification"]  # a stock transformers directory
        return save_model(model, tokenizer, out)

    # -- metrics -------------------------------------------------------------------------------
    def metrics(self, rows: list[np.ndarray], features: Dataset) -> dict[str, float]:
        return self.evaluate(rows, features)[0]

    def evaluate(self, rows: list[np.ndarray], features: Dataset) -> tuple[dict[str, float], np.ndarray]:
        """The metrics, and each judged query's MRR@k from the ranking the primary metric reads."""
        return self._ranking(features, np.asarray([np.asarray(r).reshape(-1)[0] for r in rows], dtype=np.float64))

    def _ranking(self, split: Dataset, scores: np.ndarray) -> tuple[dict[str, float], np.ndarray]:
        """The candidates ranked by the cross-encoder's scores, fused with the retriever's when
        task.retriever_weight > 0 and the split has them (then the cross-encoder alone is beside it,
        its keys prefixed cross_encoder_); and each judged query's MRR@k in the ranking the primary
        metric reads."""
        alone, alone_mrr = rd.ranked(split, scores, self.k)
        retriever = np.asarray(split[rd.RETRIEVER_SCORE], dtype=np.float64)
        if not self.retriever_weight or np.isnan(retriever).any():
            return alone, alone_mrr
        fused, fused_mrr = rd.ranked(split, fuse_scores(scores, retriever, self.retriever_weight,
                                                        split[rd.QUERY_ID]), self.k)
        return fused | {ALONE + key: v for key, v in alone.items()}, fused_mrr

    # -- distillation --------------------------------------------------------------------------
    def distillation_data(self, ctx, raw: DatasetDict, teacher, teacher_tokenizer, student_tokenizer,
                          targets_for: frozenset[str]) -> tuple[DatasetDict, dict | None]:
        """Student inputs per split, with the teacher's scores as a column of the splits in
        `targets_for`.
        Train rows are shuffled by query, each query's rows kept together (Margin-MSE reads them
        in one batch; the MSE loss samples rows at random anyway)."""
        out = DatasetDict()
        for name, split in raw.items():
            student = self.features(split, student_tokenizer)
            if name in targets_for:
                scores = teacher_logits(teacher, teacher_tokenizer, self.features(split, teacher_tokenizer),
                                        f"teacher scores ({name})")
                student = student.add_column(TEACHER_LOGITS, scores.tolist())
            out[name] = student
        queries = np.asarray(out["train"][rd.QUERY_ID])
        order = np.random.default_rng(self.cfg.project.seed).permutation(np.unique(queries))
        rank = {q: i for i, q in enumerate(order)}
        out["train"] = out["train"].select(np.argsort([rank[q] for q in queries], kind="stable"))
        return out, None

    def distillation_loss(self, student_logits, teacher_logits, inputs: dict, temperature: float, alpha: float):
        return score_distillation_loss(student_logits, teacher_logits, inputs["labels"], inputs.get(rd.QUERY_ID),
                                       alpha, self.cfg.task.distill_loss)

    def reference_rows(self, split: Dataset) -> dict[str, dict[str, float]]:
        """The retriever alone: the same candidates in the retriever's order."""
        scores = np.asarray(split[rd.RETRIEVER_SCORE], dtype=np.float64)
        if np.isnan(scores).any():  # judged pairs from a table: no retriever ranked them
            return {}
        return {"retriever-alone": rd.ranking_of(split, scores=scores, k=self.k)}

    # -- release -------------------------------------------------------------------------------
    def score_bundle(self, model, split: Dataset) -> dict[str, float]:
        # As `bertpress rerank` runs: length-sorted batches of rerank_depth pairs (a dynamic INT8
        # graph scores a little differently than one pair at a time; the README has the numbers).
        scores = model.head.scores(self.timing_inputs(split), batch_size=self.cfg.task.rerank_depth)
        return self._ranking(split, scores)[0]

    def bundle_metadata(self, model_config: dict[str, Any] | None = None) -> dict[str, Any]:
        return {"rerank_depth": self.cfg.task.rerank_depth, "retriever_weight": self.retriever_weight}

