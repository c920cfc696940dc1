"""Re-ranking data: (query, passage, relevance) rows, from a SQuAD file through a first-stage
retriever, or from a table of judged pairs.

SQuAD (ReQA-style, as the retrieval evaluation reads it): every paragraph is a document, each
question's relevant document the paragraph it was asked about; articles are split whole
(qa_data.article_parts). Training rows: each train question with its paragraph (label 1) and its
`negatives` hardest negatives, the retriever's best train-article paragraphs that are not it (label
0; test paragraphs are never training text). Evaluation rows: each question with the retriever's
top `depth` paragraphs of the whole file, as a search service would hand them over; a question
whose paragraph the retriever missed keeps its judgment, so re-ranking cannot score it and the
metrics say so.
Tables: a query column, a passage column and a label (0/1, or a graded score); a query's
candidates are its rows, its relevant passages those with a label above 0.
Every row carries its query id, document id, the query's relevant document ids with their gains
and the retriever's score (NaN for tables), so metrics need nothing else.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
from datasets import Dataset

from bertpress.ranking import mean_metrics, per_query_metrics, top_k_dot
from pipeline.stage import StageError

log = logging.getLogger("bertpress.data")
QUERY, PASSAGE, LABEL = "text", "text_pair", "label"
QUERY_ID, DOC_ID, RELEVANT, GAINS, RETRIEVER_SCORE = "query_id", "doc_id", "relevant", "gains", "retriever_score"


def encode_texts(retriever: str, texts: list[str], batch_size: int = 64) -> np.ndarray:
    """L2-normalised vectors of `texts` under the retriever: a bertpress sentence-embedding bundle
    (through the runtime, as `bertpress index` embeds), else a sentence-transformers model."""
    from bertpress import bundle as bundle_format
    from stages._hf import resolve_model_source

    path = Path(retriever).expanduser()
    if (path / bundle_format.METADATA_FILE).is_file():
        from bertpress.runtime import Model

        return Model(path).encode(texts, batch_size=batch_size)
    from sentence_transformers import SentenceTransformer

    source = resolve_model_source(retriever)
    try:
        model = SentenceTransformer(source)
    except Exception as exc:  # noqa: BLE001 - any load failure gets the same advice
        raise StageError(f"task.retriever {retriever!r} could not be loaded ({exc}): give a sentence-transformers "
                         "model directory, builtin:minilm-l6, or a bertpress sentence-embedding bundle") from None
    return model.encode(texts, batch_size=batch_size, convert_to_numpy=True, normalize_embeddings=True,
                        show_progress_bar=len(texts) > 2000)


def squad_rows(queries: list[tuple[str, int]], documents: list[str], ids: np.ndarray, scores: np.ndarray,
               candidates: list[int] | None, negatives: int | None) -> list[dict[str, Any]]:
    """Rows for queries (text, relevant document id) whose retriever ranking over `candidates`
    (document ids; None: all documents) is `ids` / `scores` ([queries, depth], positions into
    `candidates`). With `negatives` (training): the relevant document and the first `negatives`
    ranked ones that are not it. Without: the ranked documents as they are (evaluation)."""
    pool = np.arange(len(documents)) if candidates is None else np.asarray(candidates)
    rows = []
    for q, ((text, gold), ranked, ranked_scores) in enumerate(zip(queries, ids, scores, strict=True)):
        docs = pool[ranked]
        judged = {RELEVANT: [int(gold)], GAINS: [1.0]}
        if negatives is None:
            chosen = list(zip(docs, ranked_scores, strict=True))
        else:
            score_of = dict(zip(docs.tolist(), ranked_scores.tolist(), strict=True))
            others = [(d, s) for d, s in zip(docs, ranked_scores, strict=True) if d != gold][:negatives]
            chosen = [(gold, score_of.get(int(gold), math.nan)), *others]
        rows += [{QUERY: text, PASSAGE: documents[d], LABEL: float(d == gold), QUERY_ID: q, DOC_ID: int(d),
                  RETRIEVER_SCORE: float(s)} | judged for d, s in chosen]
    return rows


def query_sample(count: int, cap: int | None, seed: int, split: str) -> list[int] | None:
    """Sorted positions of a seeded sample of `cap` of `count` queries; None keeps them all. Each
    split draws from a generator of its own, so one split's cap never moves another's sample, and
    the teacher's sample (finetune.max_train_samples) is the one data.max_train_samples would keep."""
    if not cap or count <= cap:
        return None
    rng = np.random.default_rng([seed, ("train", "validation", "test").index(split)])
    return sorted(rng.choice(count, cap, replace=False).tolist())


def squad_splits(articles: list[dict], roles: list[str], retriever: str, depth: int, negatives: int,
                 limits: dict[str, int | None], seed: int, k: int = 10) -> tuple[dict[str, list[dict]], dict[str, Any]]:
    """Training and evaluation rows of a SQuAD file (see the module doc). `limits`: the most
    queries per split (a seeded sample; None keeps all)."""
    from stages.tasks.embedding_data import squad_corpus

    documents, parts, questions = squad_corpus(articles, roles)
    for split, cap in limits.items():
        keep = query_sample(len(questions[split]), cap, seed, split)
        if keep is not None:
            questions[split] = [questions[split][i] for i in keep]
    empty = [split for split, found in questions.items() if not found]
    if empty:
        raise StageError(f"the SQuAD file has no questions for the {', '.join(empty)} split(s): it needs more "
                         "articles (every data.squad_every-th article is a test article)")
    texts = [q for split in ("train", "validation", "test") for q, _ in questions[split]]
    log.info("retriever %s: embedding %d paragraphs and %d questions", retriever, len(documents), len(texts))
    vectors = encode_texts(retriever, documents + texts)
    doc_vectors, query_vectors = vectors[: len(documents)], vectors[len(documents):]
    train_docs = [d for d, part in enumerate(parts) if part == "train"]
    out: dict[str, list[dict]] = {}
    report: dict[str, Any] = {"documents": len(documents), "queries": {}, "retriever": retriever,
                              "rerank_depth": depth, "negatives_per_query": negatives}
    start = 0
    for split in ("train", "validation", "test"):
        found = questions[split]
        mine = query_vectors[start:start + len(found)]
        start += len(found)
        if split == "train":  # negatives among train paragraphs only: test text is never trained on
            ids, scores = top_k_dot(mine, doc_vectors[train_docs], negatives + 1)
            out[split] = squad_rows(found, documents, ids, scores, train_docs, negatives)
        else:
            ids, scores = top_k_dot(mine, doc_vectors, depth)
            out[split] = squad_rows(found, documents, ids, scores, None, None)
            report[f"retriever_{split}"] = ranking_of(out[split], RETRIEVER_SCORE, k=k)
        report["queries"][split] = len(found)
    return out, report


def table_rows(frame, where: str) -> list[dict[str, Any]]:
    """Judged pairs (columns text, text_pair, label) -> rows; a query's id is its first appearance,
    a passage's id its first appearance, its relevant passages those labelled above 0."""
    frame = frame.dropna(subset=[QUERY, PASSAGE, LABEL])
    try:
        labels = frame[LABEL].astype(float).tolist()
    except ValueError:
        raise StageError(f"{where}: the label column must hold numbers (1/0 relevance or a graded score)") from None
    if any(v < 0 for v in labels):
        raise StageError(f"{where}: relevance labels must be >= 0 (0 = not relevant)")
    query_ids: dict[str, int] = {}
    doc_ids: dict[str, int] = {}
    judged: dict[int, dict[int, float]] = {}
    rows = []
    for query, passage, label in zip(frame[QUERY].astype(str), frame[PASSAGE].astype(str), labels, strict=True):
        q, d = query_ids.setdefault(query, len(query_ids)), doc_ids.setdefault(passage, len(doc_ids))
        if label > 0:
            judged.setdefault(q, {})[d] = label
        rows.append({QUERY: query, PASSAGE: passage, LABEL: label, QUERY_ID: q, DOC_ID: d, RETRIEVER_SCORE: math.nan})
    for row in rows:
        gains = judged.get(row[QUERY_ID], {})
        row[RELEVANT], row[GAINS] = list(gains), list(gains.values())
    if not judged:
        raise StageError(f"{where}: no row has a label above 0, so no query has a relevant passage")
    return rows


def split_table_by_query(rows: list[dict], validation: float, test: float, seed: int,
                         given: set[str]) -> dict[str, list[dict]]:
    """train / validation / test with whole queries in each (a query's candidates stay together)."""
    queries = sorted({r[QUERY_ID] for r in rows})
    order = np.random.default_rng(seed).permutation(queries).tolist()
    n_test = 0 if "test" in given else max(1, round(test * len(order)))
    n_val = 0 if "validation" in given else max(1, round(validation * len(order)))
    part = {q: "test" for q in order[:n_test]} | {q: "validation" for q in order[n_test:n_test + n_val]}
    out: dict[str, list[dict]] = {"train": [], "validation": [], "test": []}
    for row in rows:
        out[part.get(row[QUERY_ID], "train")].append(row)
    if not out["train"]:
        raise StageError(f"{len(queries)} queries are too few to split into train, validation and test: "
                         "add queries or give data.files.validation / data.files.test")
    return out


def ranking_of(rows: list[dict] | Dataset, score_column: str | None = None, scores: np.ndarray | None = None,
               k: int = 10) -> dict[str, float]:
    """Ranking metrics of a split's rows ordered per query by `scores` (or a column of them): MRR@k,
    nDCG@k, Recall@1 and Recall@k, each query judged by its relevant ids and gains."""
    if scores is None:
        scores = np.asarray([r[score_column] for r in rows] if isinstance(rows, list) else rows[score_column])
    return ranked(rows, scores, k)[0]


def ranked(rows: list[dict] | Dataset, scores: np.ndarray, k: int) -> tuple[dict[str, float], np.ndarray]:
    """`ranking_of`'s metrics and each judged query's MRR@k (their mean), from one ranking."""
    per_query = per_query_metrics(*query_rankings(rows, scores), recall_ks=(1, k), k=k)
    judged = mean_metrics(per_query)
    return ({key.replace("@", "_at_"): value for key, value in judged.items() if key != "queries"},
            per_query[f"mrr@{k}"])


def query_rankings(rows: list[dict] | Dataset, scores: np.ndarray) -> tuple[list[list], list[dict]]:
    """Per query (in first-appearance order): its candidate ids ordered by `scores`, and its judgments."""
    queries, docs = _column(rows, QUERY_ID), _column(rows, DOC_ID)
    relevant, gains = _column(rows, RELEVANT), _column(rows, GAINS)
    members: dict[int, list[int]] = {}
    for i, q in enumerate(queries):
        members.setdefault(q, []).append(i)
    rankings, judgments = [], []
    for rows_of_query in members.values():
        ranked = sorted(rows_of_query, key=lambda i: -float(scores[i]))
        rankings.append([docs[i] for i in ranked])
        first = rows_of_query[0]
        judgments.append(dict(zip(relevant[first], gains[first], strict=True)))
    return rankings, judgments


def _column(rows: list[dict] | Dataset, name: str) -> list:
    return [r[name] for r in rows] if isinstance(rows, list) else rows[name]
