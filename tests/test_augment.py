"""Augmentation for distillation: pure, seeded word-level edits; soft-target-only loss rows."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from stages._augment import (
    augment_corpus,
    augment_text,
    delete_span,
    mask_words,
    replace_words,
    swap_words,
    text_words,
    word_neighbours,
)
from stages._losses import IGNORE_LABEL, distillation_loss, soft_target_kl

WORDS = ["the", "film", "is", "a", "wonderful", "and", "moving", "piece"]


def test_mask_replaces_some_words_and_never_nothing():
    out = mask_words(WORDS, random.Random(0), "[MASK]", prob=1e-9)  # tiny prob: still one mask
    assert out.count("[MASK]") == 1 and len(out) == len(WORDS)
    out = mask_words(WORDS, random.Random(0), "[MASK]", prob=0.999999)
    assert out == ["[MASK]"] * len(WORDS)


def test_delete_span_removes_one_contiguous_span_of_at_most_three():
    for seed in range(20):
        out = delete_span(WORDS, random.Random(seed))
        removed = len(WORDS) - len(out)
        assert 1 <= removed <= 3
        # What is left is WORDS with one contiguous run cut out.
        assert any(out == WORDS[:i] + WORDS[i + removed:] for i in range(len(WORDS) - removed + 1))
    assert delete_span(["one"], random.Random(0)) == ["one"]


def test_swap_exchanges_two_adjacent_words():
    out = swap_words(WORDS, random.Random(3))
    diff = [i for i, (a, b) in enumerate(zip(WORDS, out, strict=True)) if a != b]
    assert len(diff) == 2 and diff[1] == diff[0] + 1
    assert sorted(out) == sorted(WORDS)


# Rows in 2-D: good/great/fine point one way, bad/awful the other, "##s" and "a" are not whole words.
VOCAB = ["[PAD]", "good", "great", "bad", "awful", "##s", "a", "fine"]
ROWS = np.array([[0, 0], [1, 0.1], [1, 0.2], [-1, 0.1], [-1, 0.3], [1, 0.12], [1, 0.11], [1, 0.5]])


def test_neighbours_are_the_nearest_whole_words_by_cosine():
    got = word_neighbours(VOCAB, ROWS, ["Good", "bad", "film", "##s"], k=2)
    assert got == {"good": ["great", "fine"], "bad": ["awful", "fine"]}  # no self, no "##s" / "a"
    assert word_neighbours(VOCAB, ROWS, ["bad"], k=1, chunk=1) == {"bad": ["awful"]}
    assert word_neighbours(VOCAB, ROWS, ["bad"], k=50)["bad"] == ["awful", "fine", "great", "good"]  # all there are
    assert word_neighbours(["[PAD]", "good"], ROWS[:2], ["good"], k=15) == {}  # nothing to swap with


def test_replace_swaps_known_words_for_their_neighbours_and_always_one():
    nb = {"good": ["great", "fine"], "bad": ["awful"]}
    words = ["a", "good", "film", "and", "a", "bad", "end"]
    out = replace_words(words, random.Random(0), nb, prob=0.999999)
    assert out[1] in nb["good"] and out[5] == "awful" and [out[i] for i in (0, 2, 3, 4, 6)] == ["a", "film", "and", "a", "end"]
    for seed in range(10):  # a tiny probability still replaces exactly one word
        out = replace_words(words, random.Random(seed), nb, prob=1e-9)
        assert sum(a != b for a, b in zip(words, out, strict=True)) == 1
    assert replace_words(["no", "known", "word"], random.Random(0), nb, prob=0.9) == ["no", "known", "word"]
    # Punctuation around a word stays, a capital too; "good-ish" is not one word.
    assert replace_words(["(Bad,", "good-ish"], random.Random(0), nb, prob=0.999999) == ["(Awful,", "good-ish"]
    assert text_words("A (good) film, good-ish.") == {"a", "good", "film"}
    with pytest.raises(ValueError, match="needs word neighbours"):
        augment_text("a good film", "replace", random.Random(0), "[MASK]", 0.1)


def test_corpus_is_seeded_and_drops_copies_of_originals():
    texts = ["a good film", "a bad film", "fine"]
    one = augment_corpus(texts, ["mask", "delete_span", "swap"], copies=3, seed=1, mask_token="[MASK]")
    assert one == augment_corpus(texts, ["mask", "delete_span", "swap"], 3, 1, "[MASK]")
    assert one != augment_corpus(texts, ["mask", "delete_span", "swap"], 3, 2, "[MASK]")
    assert not set(one) & set(texts) and len(one) == len(set(one))
    with pytest.raises(ValueError):
        augment_text("x y", "shuffle", random.Random(0), "[MASK]", 0.1)
    nb = {"good": ["great"], "bad": ["awful"]}
    replaced = augment_corpus(texts, ["replace"], copies=2, seed=1, mask_token="[MASK]", neighbours=nb)
    assert replaced == ["a great film", "a awful film"]  # copies equal to one already made are dropped


def test_unlabelled_rows_get_the_soft_loss_only():
    torch.manual_seed(0)
    student, teacher = torch.randn(4, 3), torch.randn(4, 3)
    labels = torch.tensor([0, IGNORE_LABEL, 2, IGNORE_LABEL])
    got = distillation_loss(student, teacher, labels, temperature=2.0, alpha=0.5)
    hard = F.cross_entropy(student[[0, 2]], labels[[0, 2]])
    expected = 0.5 * hard + 0.5 * soft_target_kl(student, teacher, 2.0)
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)
    none = torch.full((4,), IGNORE_LABEL)
    assert distillation_loss(student, teacher, none, 2.0, 0.5).item() == pytest.approx(
        0.5 * soft_target_kl(student, teacher, 2.0).item(), rel=1e-6)
