"""Question-answering data: SQuAD-format JSON, JSONL/hub rows of the squad shape, answer checks,
and the split by article.

Rows are the hub's `squad` shape: id, title, question, context, answers {"text": [...],
"answer_start": [...]} (JSONL rows may also give answers as a list of {"text", "answer_start"}).
Every answer's `answer_start` must point at its text in the context; one that does not is
reported with its question id (an error with data.bad_rows: fail; dropped and counted with drop).
Splits keep whole articles apart (a title, or a context where rows have no title): articles whose
index % data.squad_every == squad_every - 1 are the test articles (SQuAD v1.1 dev with 3: 16 of
48), and validation is a seeded share of the others, so no test question's paragraph was read in
training.
"""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path
from typing import Any

from pipeline.stage import StageError

log = logging.getLogger("bertpress.data")
ID, TITLE, QUESTION, CONTEXT, ANSWERS = "id", "title", "question", "context", "answers"


def squad_articles(path: Path) -> list[dict[str, Any]]:
    """The `data` list of a SQuAD-format JSON file."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))["data"]
        if not isinstance(data, list):
            raise TypeError("'data' is not a list")
    except (KeyError, TypeError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise StageError(f"{path} is not SQuAD-format JSON ({exc}): expected data -> paragraphs -> "
                         "context and qas -> question, answers") from None
    return data


def read_squad_rows(path: Path) -> list[dict[str, Any]]:
    """One row per question of a SQuAD-format file, in file order."""
    rows = []
    for a, article in enumerate(squad_articles(path)):
        title = article.get("title") or f"article-{a}"
        for p, paragraph in enumerate(article.get("paragraphs", [])):
            for q, qa in enumerate(paragraph.get("qas", [])):
                answers = qa.get("answers", [])
                rows.append({ID: str(qa.get("id", f"{a}-{p}-{q}")), TITLE: title, QUESTION: qa.get("question"),
                             CONTEXT: paragraph.get("context"),
                             ANSWERS: {"text": [x.get("text") for x in answers],
                                       "answer_start": [x.get("answer_start") for x in answers]}})
    return rows


def read_qa_records(records: list[dict[str, Any]], where: str) -> list[dict[str, Any]]:
    """Rows of a JSONL file or a hub split: question, context, answers (hub shape or a list of
    {"text", "answer_start"}); id and title optional."""
    rows = []
    for n, record in enumerate(records):
        missing = [k for k in (QUESTION, CONTEXT, ANSWERS) if k not in record]
        if missing:
            raise StageError(f"{where}: row {n + 1} has no {', '.join(missing)} (it has {sorted(record)}); "
                             "question answering reads rows with question, context and answers "
                             '({"text": [...], "answer_start": [...]}); a SQuAD-format JSON file needs '
                             "data.file_format: squad")
        answers = record[ANSWERS]
        if isinstance(answers, list):
            answers = {"text": [a.get("text") for a in answers if isinstance(a, dict)],
                       "answer_start": [a.get("answer_start") for a in answers if isinstance(a, dict)]}
        if not isinstance(answers, dict) or "text" not in answers or "answer_start" not in answers:
            raise StageError(f"{where}: row {n + 1}'s answers must be {{\"text\": [...], \"answer_start\": "
                             "[...]}} or a list of {\"text\", \"answer_start\"}")
        rows.append({ID: str(record.get(ID) or f"row-{n + 1}"), TITLE: str(record.get(TITLE) or ""),
                     QUESTION: record[QUESTION], CONTEXT: record[CONTEXT],
                     ANSWERS: {"text": list(answers["text"]), "answer_start": list(answers["answer_start"])}})
    return rows


def check_answers(rows: list[dict[str, Any]], policy: str, where: str) -> tuple[list[dict[str, Any]], dict]:
    """Keep questions whose text fields are present and whose answers point at their text. With
    policy "fail" any bad answer is an error naming the question ids; with "drop" bad answers
    are dropped, and questions left without one (or empty) with them; both are counted."""
    kept, bad_answers, empty, no_answer = [], [], [], []
    for row in rows:
        question, context = row[QUESTION], row[CONTEXT]
        if not isinstance(question, str) or not question.strip() or not isinstance(context, str) or not context.strip():
            empty.append(row[ID])
            continue
        good = {"text": [], "answer_start": []}
        for text, start in zip(row[ANSWERS]["text"], row[ANSWERS]["answer_start"], strict=False):
            if (isinstance(text, str) and text.strip() and isinstance(start, int) and start >= 0
                    and context[start:start + len(text)] == text):
                good["text"].append(text)
                good["answer_start"].append(start)
            else:
                bad_answers.append(row[ID])
        if not good["text"]:
            no_answer.append(row[ID])
            continue
        # Leading whitespace of some SQuAD questions would only waste window room.
        kept.append(row | {QUESTION: question.strip(), ANSWERS: good})
    if policy == "fail" and (bad_answers or empty or no_answer):
        problems = []
        if bad_answers:
            problems.append(f"answer_start does not point at the answer text for question id(s) "
                            f"{sorted(set(bad_answers))[:10]}")
        if empty:
            problems.append(f"empty question or context for id(s) {empty[:10]}")
        if no_answer:
            problems.append(f"no answer for id(s) {sorted(set(no_answer) - set(bad_answers))[:10]}")
        raise StageError(f"{where}: {'; '.join(problems)}. Fix the file (answer_start is the answer's "
                         "character offset in the context), or set data.bad_rows: drop")
    if bad_answers:
        log.warning("%s: %d answer(s) whose answer_start does not point at the answer text, dropped "
                    "(data.bad_rows=drop); question ids: %s", where, len(bad_answers), sorted(set(bad_answers))[:20])
    return kept, {"bad_answers": len(bad_answers), "dropped_empty": len(empty), "dropped_no_answer": len(no_answer)}


def article_of(row: dict[str, Any]) -> str:
    return row[TITLE] or row[CONTEXT]


def article_parts(count: int, every: int, validation_share: float, seed: int, test_given: bool = False,
                  validation_given: bool = False) -> list[str]:
    """The split ("train" / "validation" / "test") of each of `count` articles, in order: index %
    every == every - 1 is test, a seeded share of the others validation (unless given as files)."""
    test = set() if test_given else {i for i in range(count) if i % every == every - 1}
    rest = [i for i in range(count) if i not in test]
    shuffled = rest[:]
    random.Random(seed).shuffle(shuffled)
    validation = set() if validation_given else set(shuffled[:max(1, round(validation_share * len(rest)))])
    return ["test" if i in test else "validation" if i in validation else "train" for i in range(count)]


def split_by_article(rows: list[dict[str, Any]], every: int, validation_share: float, seed: int,
                     test_given: bool = False, validation_given: bool = False) -> dict[str, list[dict]]:
    """train / validation / test with whole articles in each (see the module doc); splits given as
    their own files are not carved out of these rows."""
    articles: dict[str, list[dict]] = {}
    for row in rows:
        articles.setdefault(article_of(row), []).append(row)
    names = list(articles)
    parts: dict[str, list[dict]] = {"train": [], "validation": [], "test": []}
    for name, part in zip(names, article_parts(len(names), every, validation_share, seed, test_given,
                                               validation_given), strict=True):
        parts[part] += articles[name]
    needed = [p for p, given in (("train", False), ("validation", validation_given), ("test", test_given))
              if not given and not parts[p]]
    if needed:
        raise StageError(f"{len(names)} article(s) are too few to split whole articles into {', '.join(needed)} "
                         f"(every {every}th article is a test article): add articles, or give "
                         "data.files.validation / data.files.test")
    return parts
