"""Runtime head for extractive question answering, and the SQuAD v1.1 metric (torch-free).

Input: a question and a context ({"question": q, "context": c}, or a (q, c) pair). A context
longer than the model's max_length is read as overlapping windows (the bundle's `doc_stride`
tokens shared by neighbours), every window is scored and the best span over all windows wins,
so no answer is lost to the first window. The graph's `logits` are [batch, seq, 2]: start and
end logits per token. Output per input: the top-k `{answer, start, end, score}` with character
offsets into the context (`context[start:end] == answer`), spans of at most
`max_answer_length` tokens, ranked by start + end logit as the SQuAD reference code does; the
score is the softmax of that sum over the n-best candidates.

The metric is the official SQuAD v1.1 evaluation script's (exact match and F1 over normalised
answers, the max over the gold answers), written out because `evaluate.load("squad")` needs the
hub. Training (stages.tasks.question_answering) scores with these same functions.
"""

from __future__ import annotations

import collections
import re
import string
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from bertpress.errors import InputError
from bertpress.tasks.windows import run_windows

if TYPE_CHECKING:
    from bertpress.runtime import Model

PUNCTUATION = frozenset(string.punctuation)
Offsets = Sequence[tuple[int, int] | None]  # per token: its characters in the context, None outside it


# -- the official SQuAD v1.1 metric ----------------------------------------------------------------
def normalize_answer(text: str) -> str:
    """Lower case, punctuation removed, articles (a, an, the) removed, whitespace collapsed."""
    text = "".join(ch for ch in text.lower() if ch not in PUNCTUATION)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def exact_match(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def f1(prediction: str, gold: str) -> float:
    predicted, wanted = normalize_answer(prediction).split(), normalize_answer(gold).split()
    common = collections.Counter(predicted) & collections.Counter(wanted)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(predicted), same / len(wanted)
    return 2 * precision * recall / (precision + recall)


def squad_scores(predictions: Sequence[str], golds: Sequence[Sequence[str]]) -> dict[str, float]:
    """Mean exact match and F1 (0-1; the official script prints them x100), each the max over a
    question's gold answers."""
    return squad_means(question_scores(predictions, golds))


def squad_means(per_question: dict[str, np.ndarray]) -> dict[str, float]:
    """`question_scores` averaged (0 for no questions)."""
    return {name: float(v.mean()) if len(v) else 0.0 for name, v in per_question.items()}


def question_scores(predictions: Sequence[str], golds: Sequence[Sequence[str]]) -> dict[str, np.ndarray]:
    """Each question's F1 and exact match (the max over its gold answers): what `squad_scores` averages."""
    if len(predictions) != len(golds):
        raise ValueError(f"{len(predictions)} predictions for {len(golds)} questions")
    pairs = list(zip(predictions, golds, strict=True))
    return {"f1": np.asarray([max(f1(p, g) for g in gold) for p, gold in pairs], dtype=float),
            "exact_match": np.asarray([max(exact_match(p, g) for g in gold) for p, gold in pairs], dtype=float)}


# -- spans over windows ------------------------------------------------------------------------------
def best_spans(windows: Sequence[tuple[np.ndarray, np.ndarray, Offsets]], context: str, top_k: int = 1,
               max_answer_length: int = 30, n_best: int = 20) -> list[dict[str, Any]]:
    """The top_k answers over all windows of one context.

    windows: per window (start_logits [L], end_logits [L], offsets [L]) where offsets[i] is token
    i's (start, end) characters in `context`, or None for tokens outside it (question, specials,
    padding). Candidates: each window's n_best starts x n_best ends inside the context, end not
    before start, at most max_answer_length tokens; ranked by start + end logit; one per character
    span (the best window's)."""
    best: dict[tuple[int, int], float] = {}
    for start_logits, end_logits, offsets in windows:
        inside = np.array([o is not None for o in offsets[: len(start_logits)]], dtype=bool)
        if not inside.any():
            continue
        starts = [i for i in np.argsort(-start_logits, kind="stable")[:n_best] if inside[i]]
        ends = [j for j in np.argsort(-end_logits, kind="stable")[:n_best] if inside[j]]
        if not starts or not ends:  # the window's best tokens are all outside: take its best inside
            masked_s = np.where(inside, start_logits, -np.inf)
            masked_e = np.where(inside, end_logits, -np.inf)
            starts = starts or [int(masked_s.argmax())]
            ends = ends or [int(masked_e.argmax())]
        for i in starts:
            for j in ends:
                if j < i or j - i + 1 > max_answer_length:
                    continue
                span = (offsets[i][0], offsets[j][1])
                value = float(start_logits[i] + end_logits[j])
                if value > best.get(span, -np.inf):
                    best[span] = value
    if not best:
        return [{"answer": "", "start": 0, "end": 0, "score": 0.0}]
    ranked = sorted(best.items(), key=lambda item: (-item[1], item[0]))
    values = np.array([v for _, v in ranked])
    probs = np.exp(values - values.max())
    probs /= probs.sum()
    return [{"answer": context[s:e], "start": int(s), "end": int(e), "score": float(p)}
            for ((s, e), _), p in zip(ranked[:top_k], probs[:top_k], strict=False)]


def question_context(item: Any, index: int = 0) -> tuple[str, str]:
    """(question, context) from {"question", "context"} or a two-item list/tuple."""
    if isinstance(item, dict):
        missing = [k for k in ("question", "context") if not isinstance(item.get(k), str)]
        if missing:
            raise InputError(f"input #{index} has no {' / '.join(missing)} text: give "
                             '{"question": "...", "context": "..."}')
        question, context = item["question"], item["context"]
    elif isinstance(item, list | tuple) and len(item) == 2 and all(isinstance(t, str) for t in item):
        question, context = item
    else:
        raise InputError(f"input #{index} is {type(item).__name__}: give "
                         '{"question": "...", "context": "..."} or a [question, context] pair')
    if not question.strip() or not context.strip():
        raise InputError(f"input #{index} has an empty question or context")
    return question, context


class QuestionAnsweringHead:
    task = "question-answering"

    def __init__(self, model: Model):
        from tokenizers import Tokenizer

        self.model = model
        self.doc_stride = int(model.metadata.get("doc_stride", 128))
        self.max_answer_length = int(model.metadata.get("max_answer_length", 30))
        self.n_best = int(model.metadata.get("n_best", 20))
        # A copy: the windows' truncation must not change how the model's tokenizer reads texts.
        self.tokenizer = Tokenizer.from_str(model.tokenizer.to_str())
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(model.max_length, stride=self.doc_stride, strategy="only_second")

    def windows(self, question: str, context: str) -> list[Any]:
        """The encodings of every window of the context, each holding the whole question."""
        try:
            first = self.tokenizer.encode(question, context)
        except Exception as exc:  # tokenizers refuses a question that leaves no room for context
            raise InputError(f"the question is too long for max_length {self.model.max_length} "
                             f"with doc_stride {self.doc_stride} ({exc}); shorten it") from None
        return [first, *first.overflowing]

    def predict(self, items: Sequence[Any], batch_size: int = 32, top_k: int = 1,
                max_answer_length: int | None = None) -> list[dict[str, Any]]:
        if isinstance(items, str | dict):
            raise InputError("pass a list of inputs (wrap it: [{'question': ..., 'context': ...}])")
        if top_k < 1:
            raise InputError(f"top_k must be >= 1, got {top_k}")
        pairs = [question_context(item, i) for i, item in enumerate(items)]
        windows = [(i, w) for i, (q, c) in enumerate(pairs) for w in self.windows(q, c)]
        logits = run_windows(self.model, [w for _, w in windows], batch_size)
        per_input: list[list] = [[] for _ in pairs]
        for (i, window), row in zip(windows, logits, strict=True):
            offsets = [off if seq == 1 else None for off, seq in zip(window.offsets, window.sequence_ids, strict=True)]
            per_input[i].append((row[:, 0], row[:, 1], offsets))
        limit = max_answer_length or self.max_answer_length
        results = []
        for (_, context), found in zip(pairs, per_input, strict=True):
            answers = best_spans(found, context, top_k, limit, max(self.n_best, top_k))
            results.append(answers[0] | {"answers": answers} if top_k > 1 else answers[0])
        return results
