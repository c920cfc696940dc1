"""Data readers of the sentence-embedding task beyond labelled texts: scored sentence pairs
(similarity) and questions with the passages that answer them (retrieval).

Pairs: STS Benchmark's files (tab-separated, no header: genre, file, year, id, score, sentence 1,
sentence 2, and on some lines extra license columns), or any table with two text columns and a
score. Retrieval: SQuAD-format JSON (data -> paragraphs -> context, qas -> question) read as ReQA
does: each question's relevant document is the paragraph it was asked about. Articles are split,
never paragraphs or questions, so no test question's paragraph was a training text of its article.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pandas as pd
from datasets import Dataset, DatasetDict

from pipeline.stage import StageError
from stages.tasks.qa_data import article_parts, squad_articles

TEXT, PAIR, SCORE = "text", "text_pair", "label"
GROUP, ROLE = "label", "role"  # retrieval rows: the paragraph a text belongs to; query (0) or document (1)
QUERY, DOCUMENT = 0, 1


def read_sts(path: Path) -> pd.DataFrame:
    """STS Benchmark's TSV: score in column 4, the sentences in 5 and 6 (quoting off: sentences
    hold quote marks); lines with fewer than 7 columns are reported."""
    rows, bad = [], []
    with Path(path).open(encoding="utf-8") as fh:
        for number, parts in enumerate(csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE), 1):
            if len(parts) < 7:
                bad.append(number)
                continue
            try:
                rows.append((parts[5], parts[6], float(parts[4])))
            except ValueError:
                bad.append(number)
    if bad:
        raise StageError(f"{path}: line(s) {bad[:5]} are not STS Benchmark rows (genre, file, year, id, "
                         "score, sentence 1, sentence 2, tab-separated); for another layout use "
                         "data.file_format: table with data.text_column / text_pair_column / label_column")
    if not rows:
        raise StageError(f"{path} has no sentence pairs")
    return pd.DataFrame(rows, columns=[TEXT, PAIR, SCORE])


def pairs_split(frame: pd.DataFrame) -> Dataset:
    frame = frame.dropna()
    frame = frame[(frame[TEXT].str.strip() != "") & (frame[PAIR].str.strip() != "")]
    return Dataset.from_dict({TEXT: frame[TEXT].astype(str).tolist(), PAIR: frame[PAIR].astype(str).tolist(),
                              SCORE: frame[SCORE].astype(float).tolist()})


def read_squad(path: Path) -> list[dict]:
    """Articles as [{"title", "paragraphs": [{"context", "questions": [str]}]}]."""
    articles = []
    for article in squad_articles(path):
        paragraphs = [{"context": p["context"], "questions": [q["question"] for q in p.get("qas", [])]}
                      for p in article.get("paragraphs", [])]
        articles.append({"title": article.get("title", ""), "paragraphs": paragraphs})
    return articles


def squad_corpus(articles: list[dict], roles: list[str]) -> tuple[list[str], list[str], dict[str, list[tuple[str, int]]]]:
    """Every paragraph (a document; its id is its position), the split of each document's article
    (`roles`, one per article), and per split its questions with the id of their paragraph."""
    documents: list[str] = []
    parts: list[str] = []
    questions: dict[str, list[tuple[str, int]]] = {"train": [], "validation": [], "test": []}
    for article, part in zip(articles, roles, strict=True):
        for paragraph in article["paragraphs"]:
            questions[part] += [(q, len(documents)) for q in paragraph["questions"]]
            documents.append(paragraph["context"])
            parts.append(part)
    return documents, parts, questions


def retrieval_splits(articles: list[dict], every: int, validation_share: float, seed: int,
                     queries: str = "test-articles") -> tuple[DatasetDict, dict]:
    """ReQA-style splits. Articles whose index % every == every - 1 are test articles (SQuAD dev
    with every=3: 16 test, 32 train articles); validation is a seeded share of the train articles.
    The corpus of every evaluation split is all paragraphs (documents never seen as relevant in
    training still compete). Test queries: the test articles' questions, or every question
    (queries="all": the train articles' questions were distillation inputs, without labels).
    Train: the train articles' questions and paragraphs (distillation texts; each with its
    paragraph's id and role, for pair supervision)."""
    roles = article_parts(len(articles), every, validation_share, seed)
    texts, parts, questions = squad_corpus(articles, roles)
    documents = [(text, group) for group, text in enumerate(texts)]
    if not questions["test"] or not documents:
        raise StageError("the SQuAD file has no test-article questions: it needs at least "
                         f"{every} articles (data.squad_every)")
    test_queries = questions["test"] if queries == "test-articles" else [
        q for part in ("train", "validation", "test") for q in questions[part]]

    def evaluation(queries_: list[tuple[str, int]]) -> Dataset:
        rows = [(t, g, QUERY) for t, g in queries_] + [(t, g, DOCUMENT) for t, g in documents]
        return Dataset.from_dict({TEXT: [r[0] for r in rows], GROUP: [r[1] for r in rows], ROLE: [r[2] for r in rows]})

    train_docs = [(text, group) for (text, group), part in zip(documents, parts, strict=True) if part == "train"]
    train = [(t, g, QUERY) for t, g in questions["train"]] + [(t, g, DOCUMENT) for t, g in train_docs]
    splits = DatasetDict(
        train=Dataset.from_dict({TEXT: [r[0] for r in train], GROUP: [r[1] for r in train], ROLE: [r[2] for r in train]}),
        validation=evaluation(questions["validation"]), test=evaluation(test_queries))
    report = {"articles": {p: roles.count(p) for p in ("train", "validation", "test")},
              "documents": len(documents), "queries": {"validation": len(questions["validation"]),
                                                      "test": len(test_queries)},
              "test_queries": queries, "train_texts": len(train)}
    return splits, report
