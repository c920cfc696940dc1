"""NER building blocks on hand-worked inputs: CoNLL/JSON readers, tag schemes, entity F1, split."""

from __future__ import annotations

import pytest

from pipeline.stage import StageError
from stages.tasks.ner_data import (
    entity_scores,
    read_conll,
    read_token_rows,
    split_sentences,
    to_iob2,
)

# --- read_conll --------------------------------------------------------------------------------


def _conll(tmp_path, text: str):
    path = tmp_path / "data.conll"
    path.write_text(text, encoding="utf-8")
    return read_conll(path)


def test_conll_tabs_and_spaces(tmp_path):
    text = "EU\tB-ORG\nrejects\tO\n\nPeter  B-PER\nBlackburn   I-PER\n"
    assert _conll(tmp_path, text) == [
        (["EU", "rejects"], ["B-ORG", "O"]),
        (["Peter", "Blackburn"], ["B-PER", "I-PER"]),
    ]


def test_conll_four_columns_and_docstart(tmp_path):
    text = ("-DOCSTART- -X- -X- O\n\n"
            "EU NNP B-NP B-ORG\nrejects VBZ B-VP O\n\n"
            "-DOCSTART- -X- -X- O\n\nJapan NNP B-NP B-LOC\n\n")
    assert _conll(tmp_path, text) == [
        (["EU", "rejects"], ["B-ORG", "O"]),
        (["Japan"], ["B-LOC"]),
    ]


def test_conll_tab_only_and_double_separators_no_trailing_separator(tmp_path):
    # WNUT separates sentences with a line holding a single TAB; CRLF endings tolerated too.
    text = "@paul\tO\nLondon\tB-location\n\t\n\t\n  \r\nnew\tB-creative-work\nyork\tI-creative-work"
    assert _conll(tmp_path, text) == [
        (["@paul", "London"], ["O", "B-location"]),
        (["new", "york"], ["B-creative-work", "I-creative-work"]),
    ]


def test_conll_odd_unicode_inside_a_token_stays_one_token(tmp_path):
    assert _conll(tmp_path, "a\u2028b\tO\n\xa0\tO\n") == [(["a\u2028b", "\xa0"], ["O", "O"])]


def test_conll_single_field_line_names_file_and_line(tmp_path):
    with pytest.raises(StageError, match=r"data\.conll:3: .*one field.*'oops'"):
        _conll(tmp_path, "EU\tB-ORG\n\noops\n")


def test_conll_non_utf8(tmp_path):
    path = tmp_path / "latin1.conll"
    path.write_bytes("EU\tB-ORG\n\nM\u00fcnchen\tB-LOC\n".encode("latin-1"))
    with pytest.raises(StageError, match=r"latin1\.conll:3: not valid UTF-8.*re-save the file as UTF-8"):
        read_conll(path)


@pytest.mark.parametrize("text", ["", "\n\t\n\n", "-DOCSTART- O\n\n"])
def test_conll_empty(tmp_path, text):
    with pytest.raises(StageError, match="no sentences"):
        _conll(tmp_path, text)


def test_conll_missing_file(tmp_path):
    with pytest.raises(StageError, match="file not found"):
        read_conll(tmp_path / "nope.conll")


# --- read_token_rows ---------------------------------------------------------------------------


def test_token_rows_int_tags_become_str_and_empty_rows_are_kept():
    rows = [{"tokens": ["EU", "rejects"], "ner_tags": [3, 0]}, {"tokens": [], "ner_tags": []}]
    assert read_token_rows(rows, "tokens", "ner_tags", "train.jsonl") == [
        (["EU", "rejects"], ["3", "0"]),
        ([], []),
    ]


def test_token_rows_missing_column():
    rows = [{"words": ["EU"], "ner_tags": ["B-ORG"]}]
    with pytest.raises(StageError) as err:
        read_token_rows(rows, "tokens", "ner_tags", "train.jsonl")
    message = str(err.value)
    for part in ("'tokens'", "train.jsonl", "'ner_tags'", "'words'", "data.tokens_column"):
        assert part in message
    with pytest.raises(StageError, match="data.tags_column"):
        read_token_rows(rows, "words", "tags", "train.jsonl")


def test_token_rows_length_mismatch_names_row():
    rows = [{"t": ["a"], "y": ["O"]}, {"t": ["a", "b"], "y": ["O"]}]
    with pytest.raises(StageError, match=r"train\.jsonl: row 1 \(0-based\) has 2 tokens but 1 tags"):
        read_token_rows(rows, "t", "y", "train.jsonl")


def test_token_rows_text_instead_of_list():
    with pytest.raises(StageError, match="holds a str, not a list"):
        read_token_rows([{"t": "EU rejects", "y": ["B-ORG", "O"]}], "t", "y", "x.json")


# --- to_iob2 -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("scheme", "tags", "expected"), [
    ("iob2", "B-PER I-PER O B-LOC B-LOC", "B-PER I-PER O B-LOC B-LOC"),
    ("iob2", "B-creative-work I-creative-work", "B-creative-work I-creative-work"),
    ("iob1", "I-PER I-PER B-PER", "B-PER I-PER B-PER"),
    ("iob1", "I-LOC I-PER B-PER I-PER O I-LOC", "B-LOC B-PER B-PER I-PER O B-LOC"),
    ("bioes", "S-LOC B-PER E-PER", "B-LOC B-PER I-PER"),
    ("bioes", "B-PER I-PER E-PER S-PER O", "B-PER I-PER I-PER B-PER O"),
    ("bioes", "", ""),
])
def test_to_iob2_valid(scheme, tags, expected):
    assert to_iob2(tags.split(), scheme, 0, "train") == expected.split()


@pytest.mark.parametrize(("scheme", "tags", "bad"), [
    ("iob2", "O I-PER", "tag 1 'I-PER' after 'O'"),
    ("iob2", "I-PER", "tag 0 'I-PER' after '<sentence start>'"),
    ("iob2", "B-LOC I-PER", "tag 1 'I-PER' after 'B-LOC'"),
    ("iob2", "S-PER", "tag 0 'S-PER'"),
    ("iob1", "O B-PER", "tag 1 'B-PER' after 'O'"),
    ("iob1", "I-LOC B-PER", "tag 1 'B-PER' after 'I-LOC'"),
    ("bioes", "B-PER O", "tag 1 'O' after 'B-PER'"),
    ("bioes", "E-PER", "tag 0 'E-PER' after '<sentence start>'"),
    ("bioes", "O B-PER", "tag 2 '<sentence end>' after 'B-PER'"),
    ("bioes", "B-PER S-PER", "tag 1 'S-PER' after 'B-PER'"),
    ("bioes", "B-PER E-LOC", "tag 1 'E-LOC' after 'B-PER'"),
    ("bioes", "S-PER I-PER", "tag 1 'I-PER' after 'S-PER'"),
    ("bioes", "X-PER", "tag 0 'X-PER'"),
    ("iob2", "O PER", "tag 1 'PER' after 'O'"),
    ("iob2", "B-", "tag 0 'B-'"),
])
def test_to_iob2_invalid(scheme, tags, bad):
    with pytest.raises(StageError) as err:
        to_iob2(tags.split(), scheme, 7, "train.conll")
    message = str(err.value)
    assert f"train.conll: sentence 7 (0-based) is not valid {scheme.upper()}" in message
    assert bad in message
    assert "set data.tag_scheme" in message


def test_to_iob2_error_shows_nearby_tags():
    tags = ["O"] * 6 + ["I-PER"] + ["O"] * 5
    with pytest.raises(StageError, match=r"tags: \.\.\. O O O I-PER O O O \.\.\."):
        to_iob2(tags, "iob2", 0, "train")


def test_to_iob2_unknown_scheme():
    with pytest.raises(StageError, match="unknown tag scheme 'bilou'"):
        to_iob2(["O"], "bilou", 0, "train")


# --- entity_scores -----------------------------------------------------------------------------


def _scores(gold: list[str], pred: list[str]) -> dict:
    return entity_scores([s.split() for s in gold], [s.split() for s in pred])


def test_entity_at_sentence_end():
    assert _scores(["O B-PER I-PER"], ["O B-PER I-PER"])["entity_f1"] == 1.0
    cut = _scores(["O B-PER I-PER"], ["O B-PER O"])  # boundary at the sentence end differs
    assert cut["entity_f1"] == 0.0
    assert cut["token_accuracy"] == pytest.approx(2 / 3)


def test_adjacent_entities_of_one_type():
    assert _scores(["B-PER B-PER"], ["B-PER B-PER"])["entity_f1"] == 1.0
    assert _scores(["B-PER B-PER"], ["B-PER I-PER"])["entity_f1"] == 0.0  # one merged entity
    half = _scores(["B-PER B-PER"], ["B-PER O"])
    assert (half["entity_precision"], half["entity_recall"]) == (1.0, 0.5)
    assert half["entity_f1"] == pytest.approx(2 / 3)
    assert half["per_type"]["PER"]["support"] == 2


def test_type_mismatch():
    s = _scores(["B-LOC O"], ["B-ORG O"])
    assert (s["entity_precision"], s["entity_recall"], s["entity_f1"]) == (0.0, 0.0, 0.0)
    assert s["token_accuracy"] == 0.5
    assert s["per_type"] == {
        "LOC": {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1},
        "ORG": {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0},
    }


def test_boundary_mismatch():
    s = _scores(["B-ORG I-ORG I-ORG O"], ["B-ORG I-ORG O O"])
    assert s["entity_f1"] == 0.0
    assert s["token_accuracy"] == 0.75


def test_micro_average_across_sentences():
    # Gold: PER, LOC | LOC, PER. Pred: PER (right), LOC missed | LOC (right), ORG for PER.
    s = _scores(["B-PER I-PER O B-LOC", "B-LOC O B-PER"],
                ["B-PER I-PER O O", "B-LOC O B-ORG"])
    # 2 correct of 3 predicted, of 4 gold: micro F1 = 4/7 (the mean of per-sentence F1s is 7/12).
    assert s["entity_precision"] == pytest.approx(2 / 3)
    assert s["entity_recall"] == pytest.approx(0.5)
    assert s["entity_f1"] == pytest.approx(4 / 7)
    assert s["token_accuracy"] == pytest.approx(5 / 7)
    assert s["per_type"]["PER"] == pytest.approx(
        {"precision": 1.0, "recall": 0.5, "f1": 2 / 3, "support": 2})
    assert s["per_type"]["LOC"] == pytest.approx(
        {"precision": 1.0, "recall": 0.5, "f1": 2 / 3, "support": 2})
    assert s["per_type"]["ORG"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}


def test_default_mode_counts_i_after_o_as_an_entity_start():
    assert _scores(["O B-PER I-PER"], ["O I-PER I-PER"])["entity_f1"] == 1.0


def test_all_o_gives_zero_f1_without_crashing():
    s = _scores(["O O", "O"], ["O O", "O"])
    assert s == {"entity_f1": 0.0, "entity_precision": 0.0, "entity_recall": 0.0,
                 "token_accuracy": 1.0, "per_type": {}}
    assert all(type(s[k]) is float for k in ("entity_f1", "entity_precision", "token_accuracy"))


def test_scores_reject_different_lengths():
    with pytest.raises(ValueError, match="sentence 1: 2 gold tags but 1 predicted"):
        _scores(["O", "O O"], ["O", "O"])
    with pytest.raises(ValueError, match="2 gold sentences but 1 predicted"):
        _scores(["O", "O"], ["O"])


# --- split_sentences ---------------------------------------------------------------------------


@pytest.mark.parametrize(("n", "sizes"), [(3, (1, 1, 1)), (10, (8, 1, 1)), (25, (19, 3, 3)),
                                          (1000, (800, 100, 100))])
def test_split_sizes_disjoint_and_complete(n, sizes):
    split = split_sentences(n, 0.1, 0.1, seed=0)
    assert tuple(len(split[k]) for k in ("train", "validation", "test")) == sizes
    everything = split["train"] + split["validation"] + split["test"]
    assert sorted(everything) == list(range(n))  # disjoint and covering
    assert all(type(i) is int for i in everything)


def test_split_is_deterministic_per_seed():
    assert split_sentences(100, 0.2, 0.1, seed=3) == split_sentences(100, 0.2, 0.1, seed=3)
    assert split_sentences(100, 0.2, 0.1, seed=3) != split_sentences(100, 0.2, 0.1, seed=4)


def test_split_keeps_one_training_sentence():
    split = split_sentences(3, 0.45, 0.45, seed=0)
    assert [len(split[k]) for k in ("train", "validation", "test")] == [1, 1, 1]


@pytest.mark.parametrize("n", [0, 1, 2])
def test_split_too_few_sentences(n):
    with pytest.raises(StageError, match="at least 3"):
        split_sentences(n, 0.1, 0.1, seed=0)
