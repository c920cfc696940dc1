"""Sentence embeddings: one vector per text, for similarity and retrieval.

Teacher: a sentence-transformers model (the built-in all-MiniLM-L6-v2 is one: mean pooling + L2
normalisation), read with sentence-transformers and used as it is; the finetune stage converts it
into stages._sentence's single module (BERT -> pooling -> normalisation) and scores it.
Distillation: the student (a layer subset, optionally narrower or with a vocabulary budget, as for
classification) learns the teacher's embeddings by MSE (Reimers & Gurevych 2020) on the training
texts, plus augmented and unlabelled texts when given: no label is used, so any corpus will do.
The loss is summed over dimensions and averaged over texts: for unit vectors, 2 (1 - cosine).
Evaluation (task.evaluation):
- labels: retrieval by label on the data's own labelled texts, every text querying all the others
  of its split; nDCG@k primary, MRR@k and P@k beside it;
- pairs: Spearman of the cosine against the gold score on scored sentence pairs (STS), Pearson
  beside it; a split's rows hold both sentences, and the model inputs interleave them;
- retrieval: questions against every passage of a SQuAD-format file (ReQA), each question's
  relevant passage the one it was asked about; nDCG@k primary, MRR@k, Recall@1/k/100;
plus agreement with a reference model (mean cosine, top-k neighbour overlap) where one is compared.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from datasets import Dataset, DatasetDict
from transformers import AutoTokenizer, DataCollatorWithPadding

from bertpress.embeddings import l2_normalize, mean_pool
from bertpress.ranking import (
    label_retrieval_metrics,
    mean_metrics,
    per_query_metrics,
    spearman,
    top_k_dot,
    top_k_overlap,
)
from pipeline.stage import StageContext, StageError, StageResult
from stages._hf import (
    MODEL_INPUTS,
    load_splits_dir,
    random_bert_config,
    resolve_model_source,
    save_json,
    save_model,
)
from stages._losses import IGNORE_LABEL
from stages._sentence import (
    SentenceEmbeddingModel,
    load_sentence_model,
    sentence_head,
    st_settings,
    write_st_modules,
)
from stages._stats import ExampleScores
from stages.tasks import embedding_data as ed
from stages.tasks.base import TEACHER_LOGITS, Batch, Task, predict_rows
from stages.tasks.sequence_classification import (
    LABEL,
    TEXT,
    SequenceClassification,
    augmentation_texts,
    teacher_logits,
)

ST_PARITY_MIN_COSINE = 0.9999  # ONNX graph vs sentence-transformers' encode() of the same model


class SentenceEmbedding(Task):
    name = "sentence-embedding"
    export_task = "feature-extraction"
    own_export = True
    argmax_outputs = False  # an embedding's largest coordinate means nothing

    def __init__(self, cfg):
        super().__init__(cfg)
        k = self.k = cfg.task.k
        self.kind = cfg.task.evaluation
        if self.kind == "pairs":
            self.primary_metric = "spearman"
            self.metric_labels = {"spearman": "Spearman", "pearson": "Pearson"}
        elif self.kind == "retrieval":
            self.primary_metric = f"ndcg_at_{k}"
            self.metric_labels = {f"ndcg_at_{k}": f"nDCG@{k}", f"mrr_at_{k}": f"MRR@{k}", "recall_at_1": "R@1",
                                  f"recall_at_{k}": f"R@{k}", "recall_at_100": "R@100"}
        else:
            self.primary_metric = f"ndcg_at_{k}"
            self.metric_labels = {f"ndcg_at_{k}": f"nDCG@{k} by label", f"mrr_at_{k}": f"MRR@{k}",
                                  f"precision_at_{k}": f"P@{k}"}
        self._labelled = SequenceClassification(cfg)  # the labelled-text readers, cleaning, split

    # -- data ----------------------------------------------------------------------------------
    def load(self, cleaning: dict) -> tuple[DatasetDict, list[str]]:
        if self.kind == "labels":
            return self._labelled.load(cleaning)
        data = self.cfg.data
        if self.kind == "retrieval":
            splits, self._report = ed.retrieval_splits(
                ed.read_squad(data.files.train), data.squad_every, data.validation_size, self.cfg.project.seed,
                self.cfg.task.test_queries)
            return splits, []
        return self._pairs(data), []

    def _pairs(self, data) -> DatasetDict:
        from stages._tables import file_splits, read_table

        files = file_splits(data)
        frames = {}
        for split, path in files.items():
            if data.file_format == "sts":
                frames[split] = ed.read_sts(path)
            else:
                table = read_table(path)
                missing = [c for c in (data.text_column, data.text_pair_column, data.label_column) if c not in table]
                if missing:
                    raise StageError(f"{path}: column(s) {missing} not found; it has {list(table.columns)}")
                frames[split] = pd.DataFrame({ed.TEXT: table[data.text_column], ed.PAIR: table[data.text_pair_column],
                                              ed.SCORE: table[data.label_column]})
        splits = {name: ed.pairs_split(frame) for name, frame in frames.items()}
        seed = self.cfg.project.seed
        if "test" not in splits:
            cut = splits["train"].train_test_split(test_size=data.test_size, seed=seed)
            splits["train"], splits["test"] = cut["train"], cut["test"]
        if "validation" not in splits:
            cut = splits["train"].train_test_split(test_size=data.validation_size, seed=seed)
            splits["train"], splits["validation"] = cut["train"], cut["test"]
        return DatasetDict(train=splits["train"], validation=splits["validation"], test=splits["test"])

    def texts(self, split: Dataset) -> list[str]:
        """Every text of a split (both sentences of a pair): vocabulary budgets, calibration."""
        texts = list(split[TEXT])
        return texts + list(split[ed.PAIR]) if ed.PAIR in split.column_names else texts

    def prepare(self, splits: DatasetDict, tokenizer, names: list[str], log) -> tuple[DatasetDict, dict, dict]:
        if self.kind == "labels":
            return self._labelled.prepare(splits, tokenizer, names, log)
        lengths = [len(ids) for ids in tokenizer(self.texts(splits["train"]))["input_ids"]]
        limit = self.cfg.data.max_length
        report = {"evaluation": self.kind, "rows": {s: len(d) for s, d in splits.items()}} | getattr(self, "_report", {})
        metrics = {"data/train_truncated_fraction": sum(n > limit for n in lengths) / max(len(lengths), 1),
                   "data/train_mean_tokens": sum(lengths) / max(len(lengths), 1)}
        log.info("%s: %s", self.kind, report)
        return splits, report, metrics

    # -- models --------------------------------------------------------------------------------
    @property
    def auto_model(self):
        return SentenceEmbeddingModel

    @property
    def ort_model(self):
        from optimum.onnxruntime import ORTModelForFeatureExtraction

        return ORTModelForFeatureExtraction

    def features(self, split: Dataset, tokenizer) -> Dataset:
        """One row per text. Pairs: the two sentences of pair i are rows 2i and 2i+1, both with the
        pair's score; retrieval: queries and documents, with the passage group and the role."""
        if ed.PAIR in split.column_names:
            texts = [t for pair in zip(split[TEXT], split[ed.PAIR], strict=True) for t in pair]
            labels = [s for s in split[ed.SCORE] for _ in (0, 1)]
        else:
            texts, labels = list(split[TEXT]), list(split[LABEL])
        enc = tokenizer(texts, truncation=True, max_length=self.cfg.data.max_length)
        extra = {ed.ROLE: list(split[ed.ROLE])} if ed.ROLE in split.column_names else {}
        return Dataset.from_dict({k: enc[k] for k in MODEL_INPUTS if k in enc} | {"labels": labels} | extra)

    def text_features(self, texts: list[str], tokenizer) -> Dataset:
        """Model inputs of plain texts (no labels needed)."""
        return self.features(Dataset.from_dict({TEXT: list(texts), LABEL: [0] * len(texts)}), tokenizer)

    def corpus_texts(self, split: Dataset) -> tuple[list[str], list[str]] | None:
        if self.kind != "retrieval":
            return None
        roles = split[ed.ROLE]
        texts = split[TEXT]
        return ([t for t, r in zip(texts, roles, strict=True) if r == ed.QUERY],
                [t for t, r in zip(texts, roles, strict=True) if r == ed.DOCUMENT])

    def collator(self, tokenizer):
        return DataCollatorWithPadding(tokenizer)

    def head_logits(self, model, encoded, attention_mask=None):
        return sentence_head(model, encoded, attention_mask)

    # -- metrics -------------------------------------------------------------------------------
    def metrics(self, rows: list[np.ndarray], features: Dataset) -> dict[str, float]:
        roles = features[ed.ROLE] if ed.ROLE in features.column_names else None
        return self.vector_metrics(np.stack(rows), np.asarray(features["labels"]), roles)

    def vector_metrics(self, vectors: np.ndarray, labels: np.ndarray, roles=None) -> dict[str, float]:
        """The task's metrics from one vector per feature row (see `features` for the layouts)."""
        if self.kind == "pairs":
            return pair_metrics(vectors, labels)
        if self.kind == "retrieval":
            return passage_retrieval_metrics(vectors, labels, np.asarray(roles), self.k)
        return label_retrieval_metrics(vectors, labels, self.k)

    def evaluate(self, rows: list[np.ndarray], features: Dataset) -> tuple[dict[str, float], Any]:
        """Passage retrieval adds each query's nDCG@k (their mean is the primary metric), scored pairs
        each pair's (cosine, gold) with Spearman as the statistic; retrieval by label (every text
        queries the others: resampling texts would resample the corpus too) has none."""
        if self.kind == "pairs":
            vectors, gold = np.stack(rows), np.asarray(features["labels"], dtype=np.float64)[0::2]
            per_pair = ExampleScores(np.column_stack([pair_cosines(vectors), gold]), spearman_of_columns)
            return pair_metrics(vectors, features["labels"]), per_pair
        if self.kind != "retrieval":
            return self.metrics(rows, features), None
        vectors, groups, roles = np.stack(rows), np.asarray(features["labels"]), np.asarray(features[ed.ROLE])
        return ranked_passage_metrics(*passage_rankings(vectors, groups, roles, max(100, self.k)), self.k)

    def cross_encoded_rows(self, query_rows: list[np.ndarray], document_rows: list[np.ndarray],
                           features: Dataset) -> list[np.ndarray] | None:
        """Passage retrieval only, and only between vectors of one width (a student in the
        teacher's space; a static model's PCA space, or `output_space: student`, is another)."""
        if (self.kind != "retrieval" or self.cfg.task.output_space == "student"
                or query_rows[0].shape != document_rows[0].shape):
            return None
        return [d if role == ed.DOCUMENT else q
                for q, d, role in zip(query_rows, document_rows, features[ed.ROLE], strict=True)]

    def compare_rows(self, reference: list[np.ndarray], rows: list[np.ndarray]) -> dict[str, float]:
        return embedding_agreement(np.stack(reference), np.stack(rows), self.k)

    # -- teacher -------------------------------------------------------------------------------
    def finetune_stage(self, ctx: StageContext) -> StageResult:
        """The teacher read with sentence-transformers, used as it is or fine-tuned on the train
        pairs (task.finetune_teacher), saved as one module and scored."""
        cfg = ctx.cfg
        tokenizer = AutoTokenizer.from_pretrained(ctx.path("teacher_tokenizer"))
        teacher = load_teacher(cfg, tokenizer)
        splits = load_splits_dir(ctx.path("dataset"))
        raw = {name: split for name, split in splits.items() if name in ("validation", "test")}
        metrics: dict[str, float] = {}
        if cfg.task.finetune_teacher:
            teacher, metrics = finetune_on_pairs(ctx, self, teacher, tokenizer, splits)
        for split, prefix in (("validation", "eval"), ("test", "test")):
            features = self.features(raw[split], tokenizer)
            rows = list(teacher_logits(teacher, tokenizer, features))
            metrics |= {f"{prefix}/{k}": v for k, v in self.metrics(rows, features).items()}
        metrics |= self.save_model(teacher, tokenizer, ctx.out / "model")
        metrics |= {"train/steps": 0.0}
        save_json(ctx.out / "metrics.json", metrics)
        ctx.log.info("teacher %s (%s pooling, %s): test %s %.4f (%s)",
                     cfg.teacher.model, teacher.pooling, "normalised" if teacher.normalize else "not normalised",
                     self.primary_metric, metrics[f"test/{self.primary_metric}"],
                     "fine-tuned on the train pairs" if cfg.task.finetune_teacher else "used as it is, not fine-tuned")
        return StageResult(metrics=metrics, outputs={"teacher_model": "model", "teacher_metrics": "metrics.json"})

    def save_model(self, model, tokenizer, out) -> dict[str, float]:
        metrics = save_model(model, tokenizer, out)
        write_st_modules(model, out, self.cfg.data.max_length)  # sentence-transformers reads it too
        return metrics

    # -- distillation --------------------------------------------------------------------------
    def distillation_data(self, ctx, raw: DatasetDict, teacher, teacher_tokenizer, student_tokenizer,
                          targets_for: frozenset[str]) -> tuple[DatasetDict, dict | None]:
        """Student inputs per split; on the splits in `targets_for` the teacher's embedding of
        each text as a column, computed once on the teacher's pieces.
        Augmented / unlabelled texts join train: they need no label."""
        extra, info = [], None
        train_texts = list(dict.fromkeys(self.texts(raw["train"])))  # each sentence once
        if self.cfg.distill.augment.enabled:
            extra, info = augmentation_texts(ctx, train_texts, teacher, teacher_tokenizer)
        out = DatasetDict()
        for name, split in raw.items():
            if name == "train":  # no label is needed: the target is the teacher's embedding
                texts = train_texts + extra
                plain = Dataset.from_dict({TEXT: texts, LABEL: [IGNORE_LABEL] * len(texts)})
            else:
                plain = split
            out[name] = self.features(plain, student_tokenizer)
            if name in targets_for:
                targets = teacher_logits(teacher, teacher_tokenizer, self.features(plain, teacher_tokenizer),
                                         f"teacher embeddings ({name})")
                out[name] = out[name].add_column(TEACHER_LOGITS, targets.tolist())
        out["train"] = out["train"].shuffle(seed=self.cfg.project.seed)
        return out, info

    def distillation_loss(self, student_logits, teacher_logits, inputs: dict, temperature: float, alpha: float):
        if self.cfg.task.output_space == "student":
            return similarity_mse(student_logits, teacher_logits)
        return embedding_mse(student_logits, teacher_logits)

    def pair_supervision(self, train: Dataset, tokenizer):
        """Train pairs beside the embedding loss: STS-style scored pairs (a, b, score) for CoSENT,
        or retrieval's (question, its paragraph, paragraph id) for in-batch negatives."""
        from stages._pairs import PairSupervision

        dcfg = self.cfg.distill
        settings = (tokenizer, dcfg.pair_batch_size, self.cfg.data.max_length, self.cfg.project.seed)
        if self.kind == "retrieval":
            texts = list(zip(train[TEXT], train[ed.GROUP], train[ed.ROLE], strict=True))  # read each column once
            documents = {g: t for t, g, r in texts if r == ed.DOCUMENT}
            rows = [(t, documents[g], g) for t, g, r in texts if r == ed.QUERY and g in documents]
            return PairSupervision(rows, *settings, loss="in-batch")
        if ed.PAIR not in train.column_names:  # the config allows pair_weight only with pairs
            raise StageError("distill.pair_weight needs scored sentence pairs in the train split; it has "
                             f"columns {train.column_names}")
        rows = list(zip(train[TEXT], train[ed.PAIR], map(float, train[ed.SCORE]), strict=True))
        return PairSupervision(rows, *settings)

    def adapt_student(self, student, teacher):
        """The student embeds as its teacher does (pooling, normalisation) and into its teacher's
        space: a student model of another width (distill.student.model) gets a learned projection
        to it (a narrowed copy of the teacher already has one; see stages._width). With
        task.output_space: student it embeds into its own space instead: no projection."""
        student.config.sentence_pooling, student.config.sentence_normalize = teacher.pooling, teacher.normalize
        if self.cfg.task.output_space == "student":
            student.remove_projection()
        elif student.output_dim != teacher.output_dim:
            weight = torch.nn.init.xavier_uniform_(torch.empty(teacher.output_dim, student.config.hidden_size))
            student.set_projection(weight)
        return student

    # -- export --------------------------------------------------------------------------------
    def stock_predictor(self, session, teacher_dir: Path):
        """Optimum's feature-extraction export returns token vectors: the pooling and normalisation
        (the teacher's) run here, in numpy, as its users have to."""
        from stages._onnx import session_feed

        config = json.loads((Path(teacher_dir) / "config.json").read_text())
        pooling, normalize = config.get("sentence_pooling", "mean"), config.get("sentence_normalize", True)

        def predict(batch: Batch) -> np.ndarray:
            hidden = session.run(["last_hidden_state"], session_feed(session, batch))[0]
            vectors = hidden[:, 0] if pooling == "cls" else mean_pool(hidden, batch["attention_mask"])
            return l2_normalize(vectors) if normalize else vectors

        return predict

    def export_checks(self, model_dir, onnx_path, texts: list[str]) -> dict[str, float]:
        """The graph's output against sentence-transformers' encode() of the same saved model."""
        from sentence_transformers import SentenceTransformer

        from stages._onnx import make_session, session_feed

        st = SentenceTransformer(str(model_dir), device="cpu")
        st.max_seq_length = self.cfg.data.max_length
        want = st.encode(texts, batch_size=16, convert_to_numpy=True)
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        session = make_session(Path(onnx_path), provider_list=["CPUExecutionProvider"])
        features = self.text_features(texts, tokenizer)
        got = np.stack(predict_rows(lambda b: session.run(["logits"], session_feed(session, b))[0],
                                    features, tokenizer))
        cosine = (l2_normalize(got) * l2_normalize(want)).sum(1)
        if cosine.min() < ST_PARITY_MIN_COSINE:
            raise StageError(f"{onnx_path}: embeddings differ from sentence-transformers' encode() of "
                             f"{model_dir} (min cosine {cosine.min():.6f} < {ST_PARITY_MIN_COSINE} on "
                             f"{len(texts)} validation texts); check the pooling settings")
        return {"st_min_cosine": float(cosine.min()), "st_mean_cosine": float(cosine.mean())}

    # -- release -------------------------------------------------------------------------------
    def rows_of(self, split: Dataset) -> tuple[list[str], np.ndarray, list | None]:
        """Texts, labels and roles in the order of `features` rows (pairs interleaved)."""
        if ed.PAIR in split.column_names:
            texts = [t for pair in zip(split[TEXT], split[ed.PAIR], strict=True) for t in pair]
            labels = np.asarray([s for s in split[ed.SCORE] for _ in (0, 1)])
        else:
            texts, labels = list(split[TEXT]), np.asarray(split[LABEL])
        return texts, labels, (split[ed.ROLE] if ed.ROLE in split.column_names else None)

    def score_vectors(self, encode, split: Dataset) -> dict[str, float]:
        """Metrics of any encoder (texts -> vectors) on a split: bundles, the static tier."""
        texts, labels, roles = self.rows_of(split)
        return self.vector_metrics(np.asarray(encode(texts)), labels, roles)

    def score_bundle(self, model, split: Dataset) -> dict[str, float]:
        return self.score_vectors(lambda texts: model.encode(texts, batch_size=1), split)

    def timing_inputs(self, split: Dataset) -> list[Any]:
        """Real single texts (queries first for retrieval: what a search request embeds)."""
        return list(split[TEXT])

    def bundle_metadata(self, model_config: dict[str, Any] | None = None) -> dict[str, Any]:
        config = model_config or {}
        return {"sentence_embedding": {
            "output": "logits", "dim": config.get("sentence_projection") or config.get("hidden_size"),
            "pooling": config.get("sentence_pooling", "mean"),
            "normalized": bool(config.get("sentence_normalize", True))}}


# -- helpers --------------------------------------------------------------------------------------
def embedding_mse(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Squared distance summed over dimensions, averaged over texts (2 - 2 cos for unit vectors)."""
    if student.shape[-1] != teacher.shape[-1]:
        raise StageError(f"the student's embedding has {student.shape[-1]} dimensions, the teacher's "
                         f"{teacher.shape[-1]}: the student should have been given a projection to the "
                         "teacher's space (SentenceEmbedding.adapt_student); report this as a bug")
    return ((student - teacher.to(student.dtype)) ** 2).sum(-1).mean()


def similarity_mse(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of the two models' cosine-similarity matrices over the texts of a
    batch: the teacher's geometry without its coordinates, so the widths may differ."""

    def cosines(x: torch.Tensor) -> torch.Tensor:
        unit = torch.nn.functional.normalize(x.float(), p=2, dim=-1)
        return unit @ unit.T

    return ((cosines(student) - cosines(teacher.to(student.device))) ** 2).mean()


def embedding_agreement(reference: np.ndarray, vectors: np.ndarray, k: int) -> dict[str, float]:
    """Mean cosine to the reference's vector of the same text (same width only: a static model's
    PCA space is another space), and the overlap of each text's k nearest neighbours (among the same
    texts) under the two models."""
    a, b = l2_normalize(reference), l2_normalize(vectors)
    k = min(k, len(a) - 1)

    def neighbours(x: np.ndarray) -> np.ndarray:
        scores = x @ x.T
        np.fill_diagonal(scores, -np.inf)
        return np.argsort(-scores, axis=1, kind="stable")[:, :k]

    overlap = {f"top{k}_overlap": top_k_overlap(neighbours(a), neighbours(b), k)}
    return ({"mean_cosine": float((a * b).sum(1).mean())} | overlap) if a.shape == b.shape else overlap


def pair_cosines(vectors: np.ndarray) -> np.ndarray:
    """Rows 2i and 2i+1 are pair i: each pair's cosine."""
    unit = l2_normalize(np.asarray(vectors, dtype=np.float64))
    return (unit[0::2] * unit[1::2]).sum(1)


def spearman_of_columns(values: np.ndarray) -> float:
    """Spearman of column 0 (cosines) against column 1 (gold scores)."""
    return spearman(values[:, 0], values[:, 1])


def pair_metrics(vectors: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    """Spearman and Pearson of each pair's cosine against its gold score (0-1 like every metric
    here; STS papers print them x100)."""
    cosine, gold = pair_cosines(vectors), np.asarray(scores, dtype=np.float64)[0::2]
    return {"spearman": spearman(cosine, gold), "pearson": float(np.corrcoef(cosine, gold)[0, 1])}


def passage_retrieval_metrics(vectors: np.ndarray, groups: np.ndarray, roles: np.ndarray, k: int) -> dict[str, float]:
    """Query rows (role 0) against document rows (role 1) by dot product; a query's relevant
    documents are those of its group."""
    return ranked_passage_metrics(*passage_rankings(vectors, groups, roles, max(100, k)), k)[0]


def ranked_passage_metrics(rankings: list, q_groups: np.ndarray, k: int) -> tuple[dict[str, float], np.ndarray]:
    """nDCG@k, MRR@k and Recall@1/k/100 of rankings (at least 100 deep) against each query's group,
    and each query's nDCG@k (their mean)."""
    per_query = per_query_metrics(rankings, [{g} for g in q_groups], recall_ks=(1, k, 100), k=k)
    judged = mean_metrics(per_query)
    return ({key.replace("@", "_at_"): value for key, value in judged.items() if key != "queries"},
            per_query[f"ndcg@{k}"])


def passage_rankings(vectors: np.ndarray, groups: np.ndarray, roles: np.ndarray, depth: int) -> tuple[list, np.ndarray]:
    """Each query row's top `depth` documents (as their groups) by dot product, and the queries' groups."""
    queries, documents = vectors[roles == ed.QUERY], vectors[roles == ed.DOCUMENT]
    q_groups, d_groups = groups[roles == ed.QUERY], groups[roles == ed.DOCUMENT]
    top, _ = top_k_dot(queries, documents, depth)
    return [list(d_groups[row]) for row in top], q_groups


def finetune_on_pairs(ctx: StageContext, task: SentenceEmbedding, teacher, tokenizer, splits: DatasetDict):
    """sentence-transformers' own recipe: CoSENTLoss on the train pairs (scores scaled to 0-1),
    through its trainer; its EmbeddingSimilarityEvaluator scores validation before and after, and
    must agree with this task's Spearman (one definition of the metric)."""
    from sentence_transformers import (
        SentenceTransformer,
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
        losses,
    )
    from sentence_transformers.evaluation import EmbeddingSimilarityEvaluator

    cfg, fcfg = ctx.cfg, ctx.cfg.finetune
    start_dir, tuned_dir = ctx.scratch / "teacher-before", ctx.scratch / "teacher-tuned"
    task.save_model(teacher, tokenizer, start_dir)
    st = SentenceTransformer(str(start_dir), device="cpu")
    train, validation = splits["train"], splits["validation"]
    scores = np.asarray(train[ed.SCORE], dtype=np.float64)
    low, high = float(scores.min()), float(scores.max())

    def scaled(values) -> list[float]:
        return [(float(v) - low) / max(high - low, 1e-9) for v in values]

    evaluator = EmbeddingSimilarityEvaluator(list(validation[TEXT]), list(validation[ed.PAIR]),
                                             scaled(validation[ed.SCORE]), name="validation", write_csv=False)
    before = evaluator(st)
    args = SentenceTransformerTrainingArguments(
        output_dir=str(ctx.scratch / "st-checkpoints"), num_train_epochs=fcfg.epochs, max_steps=fcfg.max_steps,
        per_device_train_batch_size=fcfg.batch_size, learning_rate=fcfg.learning_rate,
        warmup_ratio=fcfg.warmup_ratio, lr_scheduler_type=fcfg.lr_scheduler, weight_decay=fcfg.weight_decay,
        seed=cfg.project.seed, save_strategy="no", report_to=[], logging_steps=fcfg.logging_steps, use_cpu=True)
    pairs = Dataset.from_dict({"sentence1": list(train[TEXT]), "sentence2": list(train[ed.PAIR]),
                               "score": scaled(train[ed.SCORE])})
    SentenceTransformerTrainer(model=st, args=args, train_dataset=pairs, loss=losses.CoSENTLoss(st)).train()
    after = evaluator(st)
    st.save(str(tuned_dir))
    tuned = load_sentence_model(tuned_dir, teacher.pooling, teacher.normalize)
    check_agrees_with_sentence_transformers(
        validation, float(after["validation_spearman_cosine"]),
        ours=teacher_logits(tuned, tokenizer, task.text_features(task.rows_of(validation)[0], tokenizer)),
        first=evaluator.embed_inputs(st, evaluator.sentences1), second=evaluator.embed_inputs(st, evaluator.sentences2))
    theirs = float(after["validation_spearman_cosine"])
    ctx.log.info("teacher fine-tuned on %d train pairs (CoSENTLoss): validation Spearman %.4f -> %.4f",
                 len(train), before["validation_spearman_cosine"], theirs)
    return tuned, {"finetune/validation_spearman_before": float(before["validation_spearman_cosine"]),
                   "finetune/validation_spearman_after": theirs}


def check_agrees_with_sentence_transformers(validation: Dataset, evaluator_spearman: float, ours: np.ndarray,
                                            first: np.ndarray, second: np.ndarray) -> None:
    """The fine-tuned teacher as this task reloads it (`ours`, pairs interleaved) against
    sentence-transformers' model and evaluator (`first` / `second`: its embeddings of each pair's
    two texts), in three checks with their own tolerances: same vectors, same cosines, same
    Spearman of the same cosines. One Spearman of each side's own vectors would be flaky: on a
    few pairs, float noise of 1e-7 swaps near-tied cosines and moves Spearman by ~0.01."""
    from sentence_transformers.util import pairwise_cos_sim

    theirs = np.empty((2 * len(first), first.shape[1]), dtype=np.float64)
    theirs[0::2], theirs[1::2] = first, second
    gap = float(np.abs(l2_normalize(np.asarray(ours, dtype=np.float64)) - l2_normalize(theirs)).max())
    if gap > 1e-4:
        raise StageError(f"the fine-tuned teacher, reloaded, embeds differently from sentence-transformers' "
                         f"model (largest difference of unit vectors {gap:.2e} > 1e-4): report this as a bug")
    their_cosine = pairwise_cos_sim(first, second).double().numpy()
    checks = [("cosine", float(np.abs(pair_cosines(theirs) - their_cosine).max()), 1e-5),
              ("Spearman", abs(spearman(their_cosine, validation[ed.SCORE]) - evaluator_spearman), 1e-6)]
    for name, difference, tolerance in checks:
        if difference > tolerance:
            raise StageError(f"this task's {name} and sentence-transformers' differ by {difference:.2e} on the "
                             "same vectors: report this as a bug")


def load_teacher(cfg, tokenizer) -> SentenceEmbeddingModel:
    """The configured teacher as one module; a random BERT (tests) gets mean pooling + normalisation."""
    task = cfg.task
    if cfg.teacher.model == "random":
        config = random_bert_config(cfg.teacher.random, len(tokenizer), cfg.data.max_length)
        config.sentence_pooling, config.sentence_normalize = task.pooling or "mean", (
            True if task.normalize is None else task.normalize)
        return SentenceEmbeddingModel(config)
    source = Path(resolve_model_source(cfg.teacher.model))
    if not source.is_dir():
        raise StageError(f"teacher.model {cfg.teacher.model!r}: sentence-embedding needs a local "
                         "sentence-transformers (or BERT) directory, or builtin:minilm-l6")
    if st_settings(source) is None and task.pooling is None:
        raise StageError(f"{source} is not a sentence-transformers model (no modules.json), so its pooling "
                         "is unknown: set task.pooling (mean or cls) and task.normalize")
    return load_sentence_model(source, task.pooling, task.normalize)


