"""Token classification's alignment of word tags to word pieces, its windows over long sentences,
the owner-window rule, the word-level metric, and the word-level distillation loss."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bertpress.tasks.windows import owners
from pipeline.config import build_config
from stages._hf import train_wordpiece_tokenizer
from stages._losses import IGNORE_LABEL, soft_target_kl, token_distillation_loss
from stages.tasks.token_classification import (
    WORD_START,
    TokenClassification,
    WordTargetsCollator,
    _to_dataset,
    tag_names,
)

SENTENCES = [
    (["Zoë", "visited", "Washington", "today"], ["B-person", "O", "B-location", "O"]),
    (["Acme", "hired", "Bob", "Stone"], ["B-org", "O", "B-person", "I-person"]),
]


def task(max_length: int = 64, stride: int = 4, label_all_tokens: bool = False) -> TokenClassification:
    cfg = build_config({"task": {"type": "token-classification", "stride": stride,
                                 "label_all_tokens": label_all_tokens},
                        "data": {"source": "files", "files": {"train": "x.conll"}, "max_length": max_length}})
    return TokenClassification(cfg)


@pytest.fixture(scope="module")
def tokenizer():
    # Whole words for the short ones only: "washington" and "zoe" split into pieces.
    return train_wordpiece_tokenizer(["visited today acme hired bob stone it was zw gn"] * 3, 120)


def dataset(sentences):
    names = tag_names(sentences)
    return _to_dataset(sentences, names), names


def test_first_piece_carries_the_tag_later_pieces_and_specials_are_ignored(tokenizer):
    ds, names = dataset(SENTENCES)
    features = task().features(ds, tokenizer)
    assert len(features) == 2  # short sentences: one window each
    row = features[0]
    pieces = tokenizer.convert_ids_to_tokens(row["input_ids"])
    assert pieces[0] == "[CLS]" and pieces[-1] == "[SEP]"
    assert row["labels"][0] == row["labels"][-1] == IGNORE_LABEL
    starts = [i for i, s in enumerate(row[WORD_START]) if s]
    assert [pieces[i] for i in starts] == ["z", "visited", "was", "today"]  # "was" + "##h" + ...
    assert [names[row["labels"][i]] for i in starts] == ["B-person", "O", "B-location", "O"]
    later = [i for i, w in enumerate(row["word_ids"]) if w >= 0 and i not in starts]
    assert later and all(row["labels"][i] == IGNORE_LABEL for i in later)  # "##a", "##s", ...


def test_label_all_tokens_tags_later_pieces_inside(tokenizer):
    ds, names = dataset(SENTENCES)
    row = task(label_all_tokens=True).features(ds, tokenizer)[0]
    word_of = row["word_ids"]
    washington = [i for i, w in enumerate(word_of) if w == 2]
    assert [names[row["labels"][i]] for i in washington] == ["B-location"] + ["I-location"] * (len(washington) - 1)
    assert row["labels"][0] == IGNORE_LABEL


def test_long_sentences_become_overlapping_windows_and_lose_no_word(tokenizer):
    words = ["bob", "visited", "washington", "today"] * 12
    tags = ["B-person", "O", "B-location", "O"] * 12
    ds, _ = dataset([(words, tags)])
    features = task(max_length=16, stride=4).features(ds, tokenizer)
    assert len(features) > 4
    assert all(len(ids) <= 16 for ids in features["input_ids"])
    first_pieces = [w for ids, starts in zip(features["word_ids"], features[WORD_START], strict=True)
                    for w, s in zip(ids, starts, strict=True) if s]
    assert set(first_pieces) == set(range(len(words)))  # every word's tag is learned and scored
    # Consecutive windows share `stride` tokens.
    a, b = features[0]["input_ids"][1:-1], features[1]["input_ids"][1:-1]
    assert a[-4:] == b[:4]


def test_a_word_is_scored_from_the_window_where_it_has_most_context(tokenizer):
    words = ["bob", "visited", "today"] * 10
    tags = ["B-person", "O", "O"] * 10
    ds, names = dataset([(words, tags)])
    features = task(max_length=12, stride=4).features(ds, tokenizer)
    # Each window "predicts" its own index as the label id (mod the labels), so the chosen window
    # of each word can be read back from the prediction.
    rows = [np.tile(np.eye(len(names))[i % len(names)], (len(ids), 1)) for i, ids in enumerate(features["input_ids"])]
    chosen = task(max_length=12, stride=4).word_predictions(rows, features)[0]
    for word in range(len(words)):
        holders = [(i, ids.index(word)) for i, ids in enumerate(features["word_ids"]) if word in ids]
        margin = {i: min(p - 1, len(features[i]["word_ids"]) - 2 - p) for i, p in holders}
        best = max(margin.values())
        expected = min(i for i, m in margin.items() if m == best)  # ties: the earlier window
        assert int(chosen[word].argmax()) == expected % len(names), word


def test_owners_prefers_context_then_the_earlier_window():
    windows = [["a", "b", "c", "d"], ["c", "d", "e", "f"]]
    got = owners(windows)
    assert got["a"] == (0, 0) and got["f"] == (1, 3)
    assert got["c"] == (0, 2)  # margin 1 in window 0, 0 in window 1
    assert got["d"] == (1, 1)  # margin 0 in window 0, 1 in window 1
    assert owners([["x", "y"], ["x", "y"]])["x"] == (0, 0)


def test_word_level_metric_on_perfect_and_empty_predictions(tokenizer):
    ds, names = dataset(SENTENCES)
    t = task()
    features = t.features(ds, tokenizer)
    perfect = []
    for labels, starts in zip(features["labels"], features[WORD_START], strict=True):
        perfect.append(np.stack([np.eye(len(names))[lab if s else 0] for lab, s in zip(labels, starts, strict=True)]))
    scores = t.metrics(perfect, features)
    assert scores["entity_f1"] == 1.0 and scores["token_accuracy"] == 1.0
    assert scores["f1_person"] == 1.0
    nothing = [np.tile(np.eye(len(names))[0], (len(r), 1)) for r in perfect]
    assert t.metrics(nothing, features)["entity_f1"] == 0.0


def test_token_distillation_loss_closed_forms():
    torch.manual_seed(0)
    student = torch.randn(2, 5, 3)
    starts = torch.tensor([[0, 1, 0, 1, 0], [0, 1, 1, 0, 0]])
    labels = torch.tensor([[-100, 2, -100, 0, -100], [-100, 1, 1, -100, -100]])
    same = student[starts.bool()]
    # Identical soft targets and alpha 0: nothing to learn.
    assert token_distillation_loss(student, same, labels, starts, 2.0, 0.0).item() == pytest.approx(0.0, abs=1e-6)
    # alpha 1: plain cross-entropy over the labelled positions only.
    ce = F.cross_entropy(student[labels != -100], labels[labels != -100])
    assert token_distillation_loss(student, same + 1.0, labels, starts, 2.0, 1.0).item() == pytest.approx(ce.item())
    # T = 1, alpha 0, one word, two classes: KL(p || q) by hand.
    s = torch.tensor([[[0.0, 0.0]]])
    t = torch.tensor([[2.0, 0.0]])
    p = torch.softmax(t, -1)[0]
    expected = float((p * torch.log(p / torch.tensor([0.5, 0.5]))).sum())
    got = token_distillation_loss(s, t, torch.tensor([[-100]]), torch.tensor([[1]]), 1.0, 0.0)
    assert got.item() == pytest.approx(expected, rel=1e-5)
    # T^2 scaling as for sequence classification.
    assert token_distillation_loss(student, same * 0, labels, starts, 3.0, 0.0).item() == pytest.approx(
        soft_target_kl(same, same * 0, 3.0).item(), rel=1e-5)
    with pytest.raises(ValueError, match="not aligned"):
        token_distillation_loss(student, same[:1], labels, starts, 2.0, 0.5)


def test_word_targets_collator_pads_starts_and_flattens_teacher_rows(tokenizer):
    ds, _ = dataset(SENTENCES)
    features = task().features(ds, tokenizer)
    rows = []
    for i in range(len(features)):
        item = {k: features[i][k] for k in ("input_ids", "attention_mask", "token_type_ids", "labels", WORD_START)}
        n = sum(item[WORD_START])
        item["teacher_logits"] = [[float(i), float(j), 0.0] for j in range(n)]
        rows.append(item)
    batch = WordTargetsCollator(tokenizer)(rows)
    assert batch[WORD_START].shape == batch["input_ids"].shape
    assert batch["teacher_logits"].shape == (int(batch[WORD_START].sum()), 3)
    assert batch["teacher_logits"][0, 0] == 0.0 and batch["teacher_logits"][-1, 0] == 1.0


def test_teacher_targets_follow_words_when_the_student_splits_them_differently(tokenizer):
    """A budget student reads other pieces: each of its windows gets one teacher row per word
    start, and the row is the teacher's own logits at that word's first piece."""
    from transformers import BertConfig, BertForTokenClassification

    from stages._vocab import budget_token_ids, trim_tokenizer

    sentences = [(["bob", "visited", "washington", "today"] * 6, ["B-person", "O", "B-location", "O"] * 6),
                 *SENTENCES]
    ds, names = dataset(sentences)
    t = task(max_length=16, stride=4)
    kept = budget_token_ids(tokenizer, ["bob visited today"], 45)
    student_tok = trim_tokenizer(tokenizer, kept)
    torch.manual_seed(0)
    teacher = BertForTokenClassification(BertConfig(vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=1,
                                                    num_attention_heads=2, intermediate_size=32,
                                                    num_labels=len(names))).eval()
    out, _ = t.distillation_data(None, {"train": ds}, teacher, tokenizer, student_tok, targets_for=frozenset({"train"}))
    student = out["train"].sort("sentence")  # (the train split is shuffled)
    teacher_side = t.features(ds, tokenizer)
    assert student["input_ids"] != teacher_side["input_ids"]  # other pieces
    for row in student:
        assert len(row["teacher_logits"]) == sum(row[WORD_START])
    # A sentence the teacher reads in one window (the student needs several): each student word's
    # target is the teacher's logits at that word's first piece.
    [ref] = [r for r in teacher_side if r["sentence"] == 1]
    with torch.no_grad():
        logits = teacher(input_ids=torch.tensor([ref["input_ids"]])).logits[0].numpy()
    expected = {w: logits[j] for j, (w, s) in enumerate(zip(ref["word_ids"], ref[WORD_START], strict=True)) if s}
    windows = [r for r in student if r["sentence"] == 1]
    assert len(windows) > 1
    seen = set()
    for row in windows:
        words = [w for w, s in zip(row["word_ids"], row[WORD_START], strict=True) if s]
        for w, target in zip(words, row["teacher_logits"], strict=True):
            np.testing.assert_allclose(target, expected[w], atol=1e-5)
            seen.add(w)
    assert seen == set(expected)  # every word of the sentence got its target


def test_hub_rows_with_a_classlabel_sequence_get_their_tag_names(monkeypatch):
    """A hub dataset's tags are ids of a ClassLabel sequence (conll2003's ner_tags): the names come
    from the feature, in the declared scheme, before normalisation (here IOB1)."""
    from datasets import ClassLabel, Dataset, Features, Value
    from datasets import Sequence as SequenceFeature

    import stages.tasks.token_classification as module

    names = ["O", "I-PER", "B-PER", "I-LOC"]
    features = Features({"tokens": SequenceFeature(Value("string")),
                         "ner_tags": SequenceFeature(ClassLabel(names=names))})
    rows = {"tokens": [["Ann", "Bo", "in", "Oslo"], ["Cy", "met", "Di"], ["Ed", "Fay", "saw", "Rome"],
                       ["Gus", "left"], ["Hal", "and", "Ida"], ["Jo", "in", "Lima"]],
            "ner_tags": [[1, 2, 0, 3], [1, 0, 1], [1, 1, 0, 3], [1, 0], [1, 0, 1], [1, 0, 3]]}
    monkeypatch.setattr(module, "load_hub", lambda data: {"train": Dataset.from_dict(rows, features=features)})
    cfg = build_config({"task": {"type": "token-classification"},
                        "data": {"source": "hub", "hub_name": "conll-like", "tags_column": "ner_tags",
                                 "tag_scheme": "iob1", "validation_size": 0.2, "test_size": 0.2}})
    splits, labels = TokenClassification(cfg).load({})
    assert labels == ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]
    everything = {tuple(s["tokens"]): [labels[t] for t in s["tags"]] for split in splits.values() for s in split}
    assert everything[("Ann", "Bo", "in", "Oslo")] == ["B-PER", "B-PER", "O", "B-LOC"]  # IOB1 -> IOB2
    assert everything[("Ed", "Fay", "saw", "Rome")] == ["B-PER", "I-PER", "O", "B-LOC"]
    with pytest.raises(Exception, match="has no column 'ner_tags'"):
        monkeypatch.setattr(module, "load_hub", lambda data: {"train": Dataset.from_dict({"tokens": [["a"]]})})
        TokenClassification(cfg).load({})
