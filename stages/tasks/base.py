"""What every task provides, and the task-independent plumbing around it.

A task owns everything that differs between BERT heads: how its data is read, checked and split;
its model class and collator; its model inputs (`features`); its distillation targets and loss;
its metrics with one primary metric; its export task; how a released bundle is scored through
the torch-free runtime and what the bundle records. Stages ask the task and never name one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np
from datasets import Dataset, DatasetDict
from tqdm.auto import tqdm

from pipeline.config import PipelineConfig
from stages._hf import MODEL_INPUTS

Batch = dict[str, np.ndarray]
TEACHER_LOGITS = "teacher_logits"  # precomputed teacher targets, when the student reads other pieces


class Task:
    name: ClassVar[str]
    export_task: ClassVar[str]  # optimum's task name for the ONNX export
    primary_metric: ClassVar[str]  # the metric that decides (INT8 tolerance, gates, best checkpoint)
    metric_labels: ClassVar[dict[str, str]]  # reported metrics, primary first -> column titles
    greater_is_better: ClassVar[bool] = True
    per_token: ClassVar[bool] = False  # logits per token ([batch, seq, labels]) or per input
    # Columns of the distillation data that the loss reads besides the model inputs and labels.
    distillation_columns: ClassVar[tuple[str, ...]] = (TEACHER_LOGITS,)
    # Export through stages._multi_output's wrapper (the task's head in the graph) even without
    # embedding outputs: optimum's export task for this head would leave the head out.
    own_export: ClassVar[bool] = False
    # Whether the argmax of the outputs is a prediction (export parity counts argmax changes).
    argmax_outputs: ClassVar[bool] = True
    # Distillation reads the train rows in their given order (a loss that pairs neighbouring rows).
    keeps_batch_order: bool = False

    def __init__(self, cfg: PipelineConfig):
        self.cfg = cfg

    # -- data ----------------------------------------------------------------------------------
    def load(self, cleaning: dict) -> tuple[DatasetDict, list[str]]:
        """Read, check, clean and split the configured data: (splits, label names)."""
        raise NotImplementedError

    def texts(self, split: Dataset) -> list[str]:
        """Raw texts of a split (tokenizer training, vocabulary budgets, calibration, timing)."""
        return list(split["text"])

    def prepare(self, splits: DatasetDict, tokenizer, names: list[str], log) -> tuple[DatasetDict, dict, dict]:
        """What the data stage saves, its report and its metrics."""
        raise NotImplementedError

    # -- models --------------------------------------------------------------------------------
    @property
    def auto_model(self):
        """The transformers Auto class of this head."""
        raise NotImplementedError

    @property
    def ort_model(self):
        """optimum.onnxruntime's model class of this head (the stock baseline)."""
        raise NotImplementedError

    def features(self, split: Dataset, tokenizer) -> Dataset:
        """Model inputs and `labels` of a split, tokenized by `tokenizer` (each model reads with
        its own: a vocabulary-trimmed student splits words differently)."""
        raise NotImplementedError

    def collator(self, tokenizer):
        raise NotImplementedError

    def head_logits(self, model, encoded, attention_mask=None):
        """The head's logits from the base model's output (for multi-output export)."""
        raise NotImplementedError

    # -- metrics -------------------------------------------------------------------------------
    def metrics(self, rows: list[np.ndarray], features: Dataset) -> dict[str, float]:
        """Metrics from per-row logits (row i of `features`; per-token rows cut to their length)."""
        raise NotImplementedError

    def trainer_metrics(self, features: Dataset) -> Callable[[Any], dict[str, float]]:
        """compute_metrics for a Trainer evaluating on `features` (predictions padded with -100)."""
        lengths = [len(ids) for ids in features["input_ids"]]

        def compute(eval_pred) -> dict[str, float]:
            logits = eval_pred[0]
            if isinstance(logits, tuple):
                logits = logits[0]
            return self.metrics(rows_from_padded(np.asarray(logits), lengths), features)

        return compute

    # -- distillation --------------------------------------------------------------------------
    def distillation_data(self, ctx, raw: DatasetDict, teacher, teacher_tokenizer, student_tokenizer,
                          targets_for: frozenset[str]) -> tuple[DatasetDict, dict | None]:
        """Student inputs per split, with the teacher's targets as a column on the splits named in
        `targets_for` (the student reads other pieces than the teacher, so the teacher runs once,
        on its own). Distillation names the train split alone: checkpoints are chosen by the task's
        metric, so evaluation rows need no targets (the distillation trainer scores their loss on
        the labels alone), and the teacher's pass over validation and test (a third of the work on
        SQuAD's windows) is saved."""
        raise NotImplementedError

    def distillation_loss(self, student_logits, teacher_logits, inputs: dict, temperature: float,
                          alpha: float):
        raise NotImplementedError

    def collator_for_distillation(self, tokenizer):
        return self.collator(tokenizer)

    def pair_supervision(self, train: Dataset, tokenizer):
        """Labelled pairs the student also learns from beside its teacher (distill.pair_weight);
        None where the task has none."""
        return None

    def adapt_student(self, student, teacher):
        """A student made to keep the head's contract with its teacher before it is distilled
        (default: as it is)."""
        return student

    def save_model(self, model, tokenizer, out) -> dict[str, float]:
        """Save a trained model (teacher or student) where the next stage loads it from."""
        from stages._hf import save_model

        return save_model(model, tokenizer, out)

    sample_unit: ClassVar[str] = "rows"  # what data.max_train_samples / finetune.max_train_samples count

    def sample_units(self, train: Dataset) -> int:
        return len(train)

    def teacher_sample(self, train: Dataset, size: int | None, seed: int) -> Dataset:
        """The teacher's seeded sample of the training split (finetune.max_train_samples; the whole
        split when size is None or not smaller): the rows data.max_train_samples would keep, so
        moving a sample size from there to finetune trains the same teacher."""
        if size is None or len(train) <= size:
            return train
        return train.shuffle(seed=seed).select(range(size))

    def finetune_stage(self, ctx):
        """The task's own finetune stage (a StageResult), or None: stages.finetune's Trainer run."""
        return None

    # -- export, comparison ----------------------------------------------------------------------
    def stock_predictor(self, session, teacher_dir) -> Callable[[Batch], np.ndarray]:
        """batch -> the task's output, from Optimum's stock export of the teacher (the baseline
        stage's graph, whose outputs are those of the task's optimum export)."""
        names = {i.name for i in session.get_inputs()}
        return lambda batch: session.run(["logits"], {k: v for k, v in batch.items() if k in names})[0]

    def evaluate(self, rows: list[np.ndarray], features: Dataset) -> tuple[dict[str, float], Any]:
        """`metrics`, and per-example scores for the benchmark's paired bootstrap of each variant's
        gap to the teacher, from one pass over the outputs: a vector whose mean is the primary
        metric, or `stages._stats.ExampleScores` (per-example values and the statistic that makes
        the metric of them: entity F1, Spearman); None where examples cannot be resampled alone."""
        return self.metrics(rows, features), None

    def compare_rows(self, reference: list[np.ndarray], rows: list[np.ndarray]) -> dict[str, float]:
        """How close one model's outputs are to a reference's on the same inputs (INT8 vs fp32,
        student vs teacher), beyond the metrics; {} when the metrics say it all."""
        return {}

    def cross_encoded_rows(self, query_rows: list[np.ndarray], document_rows: list[np.ndarray],
                           features: Dataset) -> list[np.ndarray] | None:
        """A dual encoder's test rows with the queries from one model and the documents from
        another (a student answering queries over an index its teacher built); None where the
        task has no such split, or the two models' vectors live in different spaces."""
        return None

    def corpus_texts(self, split: Dataset) -> tuple[list[str], list[str]] | None:
        """(queries, documents) of a retrieval split, for the benchmark's index timings; None
        for tasks that do not retrieve."""
        return None

    def reference_rows(self, split: Dataset) -> dict[str, dict[str, float]]:
        """Metrics of systems that are not model variants, on the benchmark's test rows (a
        re-ranker's first-stage retriever alone); {} when there are none."""
        return {}

    def export_checks(self, model_dir, onnx_path, texts: list[str]) -> dict[str, float]:
        """Task-specific checks of an exported graph against the library that defines the model
        (raise StageError on failure); recorded in the export's parity report."""
        return {}

    # -- release -------------------------------------------------------------------------------
    def score_bundle(self, model, split: Dataset) -> dict[str, float]:
        """Metrics of a bundle through the torch-free runtime, at batch 1 as production runs it."""
        raise NotImplementedError

    def bundle_metadata(self, model_config: dict[str, Any] | None = None) -> dict[str, Any]:
        """Task settings the runtime needs (written into bundle.json)."""
        return {}

    def calibration_inputs(self, split: Dataset) -> list[Any]:
        """What static INT8 calibration feeds the graph: texts, or (text, pair) tuples."""
        return self.texts(split)

    def timing_inputs(self, split: Dataset) -> list[Any]:
        """Real inputs for batch-1 timing through the runtime (`Model.predict([x])`)."""
        return self.texts(split)


def rows_from_padded(padded: np.ndarray, lengths: list[int]) -> list[np.ndarray]:
    """Per-row outputs from a padded batch: [N, C] stays per row, [N, L, C] is cut to each length."""
    if padded.ndim == 2:
        return list(padded)
    return [padded[i, :n] for i, n in enumerate(lengths)]


def predict_rows(predict: Callable[[Batch], np.ndarray], features: Dataset, tokenizer,
                 batch_size: int = 64, desc: str | None = None) -> list[np.ndarray]:
    """Run `predict` over `features` in padded batches; one output row per feature row (with a
    progress bar named `desc`, for passes long enough to need one)."""
    columns = [c for c in MODEL_INPUTS if c in features.column_names]
    rows: list[np.ndarray] = []
    for start in tqdm(range(0, len(features), batch_size), desc=desc, unit="batch", disable=desc is None):
        chunk = features[start : start + batch_size]
        encoded = [{c: chunk[c][i] for c in columns} for i in range(len(chunk[columns[0]]))]
        batch = tokenizer.pad(encoded, return_tensors="np")
        out = predict({c: np.asarray(batch[c], dtype=np.int64) for c in columns})
        rows += rows_from_padded(np.asarray(out), [len(e["input_ids"]) for e in encoded])
    return rows
