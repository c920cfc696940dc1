"""Vocabulary trimming on a tiny random BERT: same pieces and logits on the domain texts."""

from __future__ import annotations

import copy
import csv
from pathlib import Path

import pytest
from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

from stages._hf import train_wordpiece_tokenizer
from stages._vocab import trim_vocabulary, verify_trim

DATA = Path(__file__).parent / "data" / "tiny_reviews.csv"


@pytest.fixture(scope="module")
def texts() -> list[str]:
    with DATA.open() as fh:
        return [row["review"] for row in csv.DictReader(fh)]


@pytest.fixture
def model_and_tokenizer(texts):
    tokenizer = train_wordpiece_tokenizer(texts, 300)
    model = BertForSequenceClassification(BertConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, num_labels=3)).eval()
    return model, tokenizer


def test_trim_keeps_only_domain_tokens_and_predictions(model_and_tokenizer, texts):
    model, tokenizer = model_and_tokenizer
    original = copy.deepcopy(model)
    domain = texts[:30]
    result = trim_vocabulary(model, tokenizer, domain, keep_characters=False)
    assert len(result.kept_ids) < len(tokenizer) == result.original_size
    assert result.model.get_input_embeddings().weight.shape[0] == len(result.kept_ids)
    assert result.model.config.vocab_size == len(result.tokenizer) == len(result.kept_ids)
    assert set(tokenizer.all_special_tokens) <= set(result.tokenizer.get_vocab())
    proof = verify_trim(original, tokenizer, result, domain, max_length=32)
    assert proof == {"examples": 30, "sequences_with_different_ids": 0, "max_abs_logit_diff": 0.0,
                     "argmax_changes": 0}
    # Rows are copied, not re-learned: new row n is old row kept_ids[n].
    old = original.get_input_embeddings().weight
    assert (result.model.get_input_embeddings().weight[5] == old[result.kept_ids[5]]).all()


def test_unseen_words_change_pieces_which_the_check_reports(model_and_tokenizer, texts):
    model, tokenizer = model_and_tokenizer
    original = copy.deepcopy(model)
    result = trim_vocabulary(model, tokenizer, texts[:30], keep_characters=False)
    proof = verify_trim(original, tokenizer, result, texts[30:200], max_length=32)
    assert proof["sequences_with_different_ids"] > 0


def test_keep_characters_avoids_unknown_words(model_and_tokenizer, texts):
    model, tokenizer = model_and_tokenizer
    unseen = "tnhe otfilm"  # not words of the data, but made of its characters
    kept = trim_vocabulary(copy.deepcopy(model), tokenizer, texts[:5], keep_characters=True)
    assert kept.tokenizer.unk_token_id not in kept.tokenizer(unseen)["input_ids"]
    bare = trim_vocabulary(model, tokenizer, texts[:5], keep_characters=False)
    assert bare.tokenizer.unk_token_id in bare.tokenizer(unseen)["input_ids"]


def test_trimmed_tokenizer_round_trips(model_and_tokenizer, texts, tmp_path):
    model, tokenizer = model_and_tokenizer
    result = trim_vocabulary(model, tokenizer, texts[:50])
    result.tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    sample = texts[:10]
    assert reloaded(sample)["input_ids"] == result.tokenizer(sample)["input_ids"]
    first = reloaded(sample[0])["input_ids"]
    assert first[0] == reloaded.cls_token_id and first[-1] == reloaded.sep_token_id


# -- a vocabulary budget (cut before training; rarer words split into smaller pieces) -------------


def test_budget_keeps_specials_characters_and_the_most_frequent_pieces(model_and_tokenizer, texts):
    from collections import Counter

    from stages._vocab import budget_token_ids, character_ids

    _, tokenizer = model_and_tokenizer
    counts = Counter(i for ids in tokenizer(texts, add_special_tokens=False)["input_ids"] for i in ids)
    must = set(tokenizer.all_special_ids) | character_ids(tokenizer, texts)
    budget = len(must) + 10
    kept = budget_token_ids(tokenizer, texts, budget)
    assert len(kept) == budget and kept == sorted(kept)
    assert must <= set(kept)
    others = sorted((i for i in counts if i not in must), key=lambda i: (-counts[i], i))
    assert set(kept) - must == set(others[:10])  # exactly the ten most frequent of the rest
    assert budget_token_ids(tokenizer, list(reversed(texts)), budget) == kept  # order-independent


def test_budget_below_the_characters_names_the_minimum(model_and_tokenizer, texts):
    from pipeline.stage import StageError
    from stages._vocab import budget_token_ids

    _, tokenizer = model_and_tokenizer
    with pytest.raises(StageError, match=r"raise it to at least \d+"):
        budget_token_ids(tokenizer, texts, 10)


def test_budget_splits_rare_words_without_unknown_tokens(model_and_tokenizer, texts):
    from stages._vocab import (
        budget_token_ids,
        character_ids,
        retokenization,
        trim_embeddings,
        trim_tokenizer,
    )

    model, tokenizer = model_and_tokenizer
    budget = len(set(tokenizer.all_special_ids) | character_ids(tokenizer, texts)) + 20
    kept = budget_token_ids(tokenizer, texts, budget)
    small = trim_tokenizer(tokenizer, kept)
    report = retokenization(tokenizer, small, texts[:100], max_length=64)
    assert 0 < report["changed_share"] <= 1
    assert report["tokens_per_text_after"] > report["tokens_per_text_before"]  # rare words split
    assert report["new_unknown_tokens"] == 0
    # the pieces of a kept token keep their embedding row
    old = model.get_input_embeddings().weight.detach().clone()
    trim_embeddings(model, kept, small.pad_token_id)
    assert model.get_input_embeddings().weight.shape[0] == len(small) == budget
    token = max(kept)
    assert (model.get_input_embeddings().weight[kept.index(token)] == old[token]).all()
