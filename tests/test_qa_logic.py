"""Question answering's pure logic: the SQuAD v1.1 metric on hand-worked answers, the span search
over windows (an answer in a later window wins; offsets map back into the context), answer
positions in a window, the start/end distillation loss against its closed form, the readers and
the split by article."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from transformers import BertTokenizerFast

from bertpress.tasks.question_answering import (
    best_spans,
    exact_match,
    f1,
    normalize_answer,
    squad_scores,
)
from pipeline.stage import StageError
from stages._losses import span_cross_entropy, span_distillation_loss
from stages.tasks import qa_data
from stages.tasks.question_answering import answer_positions


# -- metric ------------------------------------------------------------------------------------
def test_normalisation_is_the_official_scripts():
    assert normalize_answer("The  Eiffel-Tower!") == "eiffeltower"
    assert normalize_answer("an Apple, a pear and THE plum") == "apple pear and plum"
    assert normalize_answer("  ") == ""


def test_exact_match_and_f1_by_hand():
    assert exact_match("the Nile", "Nile") == 1.0
    assert exact_match("Nile river", "Nile") == 0.0
    # prediction "nile river" vs gold "longest river nile": 2 common tokens,
    # precision 2/2, recall 2/3 -> F1 = 2 * 1 * (2/3) / (1 + 2/3) = 0.8
    assert f1("Nile river", "the longest river, Nile") == pytest.approx(0.8)
    assert f1("Egypt", "Sudan") == 0.0
    assert f1("", "Sudan") == 0.0
    # the max over gold answers, then the mean over questions
    scores = squad_scores(["Nile river", "1998"], [["Sudan", "the longest river, Nile"], ["in 1998", "1998"]])
    assert scores["f1"] == pytest.approx((0.8 + 1.0) / 2)
    assert scores["exact_match"] == pytest.approx(0.5)


# -- spans -------------------------------------------------------------------------------------
CONTEXT = "Paris is big. Oskar painted it blue."


def _window(start_logits, end_logits, offsets):
    return np.asarray(start_logits, dtype=np.float32), np.asarray(end_logits, dtype=np.float32), offsets


def test_best_span_over_windows_maps_to_context_characters():
    # Window 1 holds "Paris is big." (tokens 1-4); window 2 "Oskar painted it blue." (tokens 1-5).
    # Token 0 is [CLS] (outside the context) and has the highest logits: it must never be picked.
    w1 = _window([9, 2, 0, 0, 0], [9, 0, 0, 0, 1], [None, (0, 5), (6, 8), (9, 12), (12, 13)])
    w2 = _window([9, 4, 0, 0, 0, 0], [9, 0, 0, 0, 3, 0],
                 [None, (14, 19), (20, 27), (28, 30), (31, 35), (35, 36)])
    best = best_spans([w1, w2], CONTEXT, top_k=2, max_answer_length=10)
    # window 2's "Oskar ... blue" (4 + 3 = 7) beats window 1's "Paris ... ." (2 + 1 = 3)
    assert best[0]["answer"] == "Oskar painted it blue" and (best[0]["start"], best[0]["end"]) == (14, 35)
    assert CONTEXT[best[0]["start"]:best[0]["end"]] == best[0]["answer"]
    assert best[1]["score"] < best[0]["score"] and sum(b["score"] for b in best) <= 1.0 + 1e-6


def test_span_limits_end_before_start_and_length():
    w = _window([0, 5, 0, 0], [0, 0, 0, 6], [None, (0, 5), (6, 8), (9, 12)])
    # end 3 - start 1 + 1 = 3 tokens: allowed with 3, not with 2 (then the best is shorter)
    assert best_spans([w], CONTEXT, max_answer_length=3)[0]["answer"] == "Paris is big"
    assert best_spans([w], CONTEXT, max_answer_length=2)[0]["answer"] != "Paris is big"
    # an end logit peak before the start peak is never paired with it
    backwards = _window([0, 0, 0, 5], [0, 6, 0, 0], [None, (0, 5), (6, 8), (9, 12)])
    answer = best_spans([backwards], CONTEXT)[0]
    assert answer["start"] <= answer["end"]


def test_the_same_span_seen_by_two_windows_is_one_candidate():
    shared = [None, (0, 5), (6, 8)]
    a, b = _window([0, 3, 0], [0, 3, 0], shared), _window([0, 2, 0], [0, 2, 0], shared)
    found = best_spans([a, b], CONTEXT, top_k=5)
    assert [f["answer"] for f in found].count("Paris") == 1


@pytest.mark.parametrize("start,end,expected", [
    (0, 5, [1, 1]),       # "Paris": exactly token 1
    (6, 12, [2, 3]),      # "is big": tokens 2-3
    (7, 11, [2, 3]),      # inside tokens: the tokens that hold the characters
    (14, 19, [0, 0]),     # beyond the window's context part: [CLS]
])
def test_answer_positions(start, end, expected):
    offsets = [[-1, -1], [0, 5], [6, 8], [9, 12], [-1, -1]]
    assert answer_positions(offsets, start, end) == expected


def test_windows_of_a_real_tokenizer_find_a_late_answer(tmp_path):
    """features() on a context longer than max_length: the answer lands in a later window, at the
    right tokens, and the span search reads it back exactly."""
    from pipeline.config import load_config
    from stages.tasks.question_answering import QuestionAnswering

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *"abcdefghijklmnopqrstuvwxyz.?",
             "the", "town", "had", "a", "market", "on", "day", "who", "painted", "lighthouse", "oskar", "blue"]
    (tmp_path / "vocab.txt").write_text("\n".join(words))
    tokenizer = BertTokenizerFast(str(tmp_path / "vocab.txt"))
    context = " ".join(["the town had a market on day a."] * 12) + " oskar painted the lighthouse blue."
    start = context.index("oskar")
    from datasets import Dataset

    split = Dataset.from_list([{"id": "q", "title": "t", "question": "who painted the lighthouse?",
                                "context": context, "answers": {"text": ["oskar"], "answer_start": [start]}}])
    cfg = load_config("configs/tiny-qa.yaml", [])
    features = QuestionAnswering(cfg).features(split, tokenizer)
    assert len(features) > 1  # several windows
    labelled = [i for i, lab in enumerate(features["labels"]) if lab != [0, 0]]
    assert labelled and labelled[0] > 0  # not in the first window
    i = labelled[-1]
    s, e = features["labels"][i]
    assert features["offsets"][i][s][0] == start and features["offsets"][i][e][1] == start + len("oskar")
    # logits that point at those tokens in that window only: the metric reads the answer back
    rows = []
    for n, ids in enumerate(features["input_ids"]):
        row = np.zeros((len(ids), 2), dtype=np.float32)
        if n == i:
            row[s, 0] = row[e, 1] = 10.0
        rows.append(row)
    assert QuestionAnswering(cfg).metrics(rows, features) == {"f1": 1.0, "exact_match": 1.0}


# -- losses ------------------------------------------------------------------------------------
def test_span_cross_entropy_is_the_mean_of_start_and_end_ce():
    logits = torch.tensor([[[1.0, 0.0], [2.0, 3.0], [0.0, 1.0]]])  # [1, 3, 2]
    positions = torch.tensor([[1, 2]])
    start = -math.log(math.exp(2) / (math.exp(1) + math.exp(2) + math.exp(0)))
    end = -math.log(math.exp(1) / (math.exp(0) + math.exp(3) + math.exp(1)))
    assert span_cross_entropy(logits, positions).item() == pytest.approx((start + end) / 2, rel=1e-5)
    # padding (mask 0) leaves both softmaxes: the third token's logits no longer count
    masked = span_cross_entropy(logits, torch.tensor([[1, 1]]), torch.tensor([[1, 1, 0]]))
    start = -math.log(math.exp(2) / (math.exp(1) + math.exp(2)))
    end = -math.log(math.exp(3) / (math.exp(0) + math.exp(3)))
    assert masked.item() == pytest.approx((start + end) / 2, rel=1e-5)


def test_span_distillation_loss_closed_form():
    student = torch.tensor([[[0.0, 1.0], [1.0, 0.0], [5.0, 5.0]]])
    teacher = torch.tensor([[[1.0, 0.0], [0.0, 2.0], [-3.0, 7.0]]])
    mask = torch.tensor([[1, 1, 0]])  # the third position is padding
    positions = torch.tensor([[0, 1]])
    T, alpha = 2.0, 0.3

    def kl(t, s):  # KL(softmax(t/T) || softmax(s/T)) over the two real positions
        p = np.exp(np.array(t) / T) / np.exp(np.array(t) / T).sum()
        q = np.exp(np.array(s) / T) / np.exp(np.array(s) / T).sum()
        return float((p * np.log(p / q)).sum())

    soft = T**2 * (kl([1, 0], [0, 1]) + kl([0, 2], [1, 0])) / 2
    hard = span_cross_entropy(student, positions, mask).item()
    got = span_distillation_loss(student, teacher, positions, mask, T, alpha).item()
    assert got == pytest.approx(alpha * hard + (1 - alpha) * soft, rel=1e-5)


# -- data --------------------------------------------------------------------------------------
def _squad(tmp_path, answers_start=10):
    data = {"data": [{"title": f"t{a}", "paragraphs": [{"context": "The river Nile flows north.", "qas": [
        {"id": f"q{a}", "question": "  Which river?", "answers": [{"text": "Nile", "answer_start": answers_start}]}]}]}
        for a in range(6)]}
    path = tmp_path / "squad.json"
    path.write_text(json.dumps(data))
    return path


def test_squad_reader_checks_answer_starts_naming_the_question(tmp_path, caplog):
    rows = qa_data.read_squad_rows(_squad(tmp_path))
    kept, report = qa_data.check_answers(rows, "fail", "train")
    assert len(kept) == 6 and kept[0]["question"] == "Which river?"  # leading spaces stripped
    bad = qa_data.read_squad_rows(_squad(tmp_path, answers_start=3))
    with pytest.raises(StageError, match=r"answer_start does not point at the answer text.*q0"):
        qa_data.check_answers(bad, "fail", "train")
    with caplog.at_level("WARNING", logger="bertpress.data"):
        kept, report = qa_data.check_answers(bad, "drop", "train")
    assert kept == [] and report["bad_answers"] == 6 and "q0" in caplog.text


def test_jsonl_rows_in_both_answer_shapes(tmp_path):
    records = [{"question": "Which river?", "context": "The Nile.", "answers": {"text": ["Nile"], "answer_start": [4]}},
               {"question": "Which?", "context": "The Nile.", "answers": [{"text": "Nile", "answer_start": 4}]}]
    rows = qa_data.read_qa_records(records, "rows.jsonl")
    assert [r["answers"] for r in rows] == [{"text": ["Nile"], "answer_start": [4]}] * 2
    with pytest.raises(StageError, match="row 1 has no context"):
        qa_data.read_qa_records([{"question": "q", "answers": []}], "rows.jsonl")


def test_not_squad_json_is_a_clear_error(tmp_path):
    path = tmp_path / "x.json"
    path.write_text('{"rows": []}')
    with pytest.raises(StageError, match="not SQuAD-format JSON"):
        qa_data.read_squad_rows(path)


def test_split_keeps_articles_whole():
    rows = [{"id": f"{a}-{q}", "title": f"art{a}", "question": "q", "context": f"c{a}", "answers": {}}
            for a in range(9) for q in range(3)]
    parts = qa_data.split_by_article(rows, 3, 0.2, seed=1)
    titles = {p: {r["title"] for r in rs} for p, rs in parts.items()}
    assert titles["test"] == {"art2", "art5", "art8"}  # index % 3 == 2: SQuAD dev's 16 of 48 test articles
    assert len(titles["validation"]) == 1 and not (titles["validation"] & titles["train"])
    assert sum(len(r) for r in parts.values()) == len(rows)
    with pytest.raises(StageError, match="too few to split whole articles"):
        qa_data.split_by_article(rows[:3], 3, 0.2, seed=1)


# -- config ------------------------------------------------------------------------------------
@pytest.mark.parametrize("overrides,message", [
    (["data.source=builtin"], "question-answering has no built-in data"),
    (["task.doc_stride=40"], r"task.doc_stride \(40\) must be below half of data.max_length"),
    (["search.enabled=true"], "student search covers classification"),
    (["data.file_format=sts"], "question answering reads data.file_format: squad"),
])
def test_config_names_what_question_answering_needs(overrides, message):
    from pipeline.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=message):
        load_config("configs/tiny-qa.yaml", overrides)
