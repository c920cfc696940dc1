"""bertpress.tasks.entities: NER decoding with HF's aggregation strategies, on real offsets.

Texts go through a real WordPiece tokenizer (tokenizers library, no special tokens), so offsets
and word ids are what the runtime will see; the "model" is a hand-written probability row per
token. Expected entities are worked out by hand from HF's TokenClassificationPipeline rules.
"""

from __future__ import annotations

import numpy as np
import pytest
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

from bertpress.tasks.entities import AGGREGATIONS, group_entities

LABELS = ["O", "B-person", "I-person", "B-place", "I-place", "B-misc", "I-misc"]
VOCAB = ["[UNK]", "zoe", "sal", "##dana", "met", "wash", "##ing", "##ton", "paris", "and",
         "new", "york", "visited", "東", "京", "today", ".", ","]
GROUPED = ("simple", "first", "average", "max")


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    tok = Tokenizer(models.WordPiece({w: i for i, w in enumerate(VOCAB)}, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)  # lowercases and strips accents
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    return tok


def _row(spec: str | dict[str, float], labels: list[str]) -> list[float]:
    """A tag name means 0.9 on it (the rest spread evenly); a dict gives the row outright."""
    spec = {spec: 0.9} if isinstance(spec, str) else spec
    rest = (1.0 - sum(spec.values())) / (len(labels) - len(spec))
    return [spec.get(label, rest) for label in labels]


def decode(tok, text, predicted, strategy, labels=LABELS, dtype=np.float64):
    enc = tok.encode(text)
    assert len(predicted) == len(enc.tokens), enc.tokens
    probs = np.array([_row(p, labels) for p in predicted], dtype=dtype).reshape(-1, len(labels))
    return group_entities(text, enc.offsets, enc.word_ids, probs, labels, strategy)


def spans(entities: list[dict]) -> list[tuple[str, str, int, int]]:
    return [(e["type"], e["text"], e["start"], e["end"]) for e in entities]


# "Zoë met Washington." -> zoe | met | wash ##ing ##ton | .  (the pieces of Washington disagree)
WASHINGTON = ["B-person", "O", {"O": 0.35, "B-person": 0.40, "B-place": 0.25},
              {"O": 0.30, "B-place": 0.70}, {"O": 0.65, "B-person": 0.35}, "O"]


@pytest.mark.parametrize(("strategy", "expected"), [
    # every token on its own: the pieces keep their own (disagreeing) tags
    ("none", [("person", "Zoë", 0, 3, 0.9), ("person", "Wash", 8, 12, 0.40),
              ("place", "ing", 12, 15, 0.70)]),
    # simple ignores word boundaries: B-person then B-place inside one word
    ("simple", [("person", "Zoë", 0, 3, 0.9), ("person", "Wash", 8, 12, 0.40),
                ("place", "ing", 12, 15, 0.70)]),
    # first piece "wash" decides
    ("first", [("person", "Zoë", 0, 3, 0.9), ("person", "Washington", 8, 18, 0.40)]),
    # mean row: O 1.30/3 > B-place 0.95/3 > B-person 0.75/3, so Washington is dropped
    ("average", [("person", "Zoë", 0, 3, 0.9)]),
    # the most confident piece is "##ing" (0.70)
    ("max", [("person", "Zoë", 0, 3, 0.9), ("place", "Washington", 8, 18, 0.70)]),
])
def test_split_word_with_disagreeing_pieces(tok, strategy, expected):
    got = decode(tok, "Zoë met Washington.", WASHINGTON, strategy)
    assert spans(got) == [x[:4] for x in expected]
    assert [e["score"] for e in got] == pytest.approx([x[4] for x in expected])


@pytest.mark.parametrize(("strategy", "expected"), [
    ("simple", [("person", "Zoë", 0.9), ("person", "Saldaña", 0.65)]),  # B B I by token
    ("first", [("person", "Zoë", 0.9), ("person", "Saldaña", 0.6)]),    # "sal" says B-person
    ("average", [("person", "Zoë Saldaña", (0.9 + 0.5) / 2)]),           # mean row: I-person 0.5
    ("max", [("person", "Zoë Saldaña", (0.9 + 0.7) / 2)]),               # "##dana" I-person 0.7
])
def test_word_scores_follow_the_strategy(tok, strategy, expected):
    predicted = ["B-person", {"B-person": 0.6, "I-person": 0.3, "O": 0.1},
                 {"B-person": 0.1, "I-person": 0.7, "O": 0.2}]
    got = decode(tok, "Zoë Saldaña", predicted, strategy)
    assert [(e["type"], e["text"], e["score"]) for e in got] == \
        [(t, x, pytest.approx(s)) for t, x, s in expected]


@pytest.mark.parametrize("strategy", GROUPED)
def test_entities_at_start_and_end_of_text(tok, strategy):
    text = "Zoë visited New York"
    got = decode(tok, text, ["B-person", "O", "B-place", "I-place"], strategy)
    assert spans(got) == [("person", "Zoë", 0, 3), ("place", "New York", 12, len(text))]
    assert got[1]["score"] == pytest.approx(0.9)


@pytest.mark.parametrize("strategy", GROUPED)
def test_adjacent_b_tags_of_one_type_are_two_entities(tok, strategy):
    got = decode(tok, "Zoë Saldaña", ["B-person", "B-person", "I-person"], strategy)
    assert spans(got) == [("person", "Zoë", 0, 3), ("person", "Saldaña", 4, 11)]
    got = decode(tok, "Zoë Saldaña", ["B-person", "I-person", "I-person"], strategy)
    assert spans(got) == [("person", "Zoë Saldaña", 0, 11)]


def test_b_inside_a_word_splits_it_only_for_simple(tok):
    tags = ["B-person", "B-person", "B-person"]
    assert spans(decode(tok, "Zoë Saldaña", tags, "simple")) == [
        ("person", "Zoë", 0, 3), ("person", "Sal", 4, 7), ("person", "daña", 7, 11)]
    assert spans(decode(tok, "Zoë Saldaña", tags, "first")) == [
        ("person", "Zoë", 0, 3), ("person", "Saldaña", 4, 11)]


@pytest.mark.parametrize("strategy", GROUPED)
def test_i_after_o_starts_an_entity_and_a_type_change_splits(tok, strategy):
    text = "Zoë visited New York"
    got = decode(tok, text, ["O", "O", "I-place", "I-place"], strategy)
    assert spans(got) == [("place", "New York", 12, 20)]
    got = decode(tok, text, ["I-person", "O", "B-person", "I-place"], strategy)
    assert spans(got) == [("person", "Zoë", 0, 3), ("person", "New", 12, 15),
                          ("place", "York", 16, 20)]


def test_tags_without_prefix_continue_like_hf_get_tag(tok):
    labels = ["O", "PER", "LOC"]
    got = decode(tok, "Zoë Saldaña visited New York", ["PER", "PER", "PER", "O", "LOC", "LOC"],
                 "first", labels=labels)
    assert spans(got) == [("PER", "Zoë Saldaña", 0, 11), ("LOC", "New York", 20, 28)]


@pytest.mark.parametrize("strategy", GROUPED)
def test_unicode_offsets_are_str_indices(tok, strategy):
    text = "Zoë Saldaña visited 東京 😀 today"  # 東 and 京 are words of their own; 😀 is [UNK]
    predicted = ["B-person", "I-person", "I-person", "O", "B-place", "I-place", "B-misc", "B-misc"]
    got = decode(tok, text, predicted, strategy)
    assert spans(got) == [
        ("person", "Zoë Saldaña", 0, 11),
        ("place", "東京", text.index("東"), text.index("京") + 1),
        ("misc", "😀", text.index("😀"), text.index("😀") + 1),
        ("misc", "today", text.index("today"), len(text)),
    ]
    assert all(text[e["start"]:e["end"]] == e["text"] for e in got)


@pytest.mark.parametrize("strategy", GROUPED)
def test_repeated_words_point_at_their_own_occurrence(tok, strategy):
    text = "Paris and Paris"
    assert spans(decode(tok, text, ["B-place", "O", "B-place"], strategy)) == [
        ("place", "Paris", 0, 5), ("place", "Paris", 10, 15)]
    assert spans(decode(tok, text, ["O", "O", "B-place"], strategy)) == [("place", "Paris", 10, 15)]


@pytest.mark.parametrize("strategy", AGGREGATIONS)
def test_extra_whitespace_keeps_offsets_on_the_original_text(tok, strategy):
    text = "  \tZoë \n\n met   Paris  \t"
    got = decode(tok, text, ["B-person", "O", "B-place"], strategy)
    assert spans(got) == [("person", "Zoë", 3, 6), ("place", "Paris", 16, 21)]
    # a multi-word entity keeps the text's own spacing between its words
    text = "  visited New\n\t York  "
    got = decode(tok, text, ["O", "B-place", "I-place"], strategy)
    expected = [("place", "New\n\t York", 10, 20)] if strategy != "none" else \
        [("place", "New", 10, 13), ("place", "York", 16, 20)]
    assert spans(got) == expected


def test_none_returns_each_non_o_token_with_tag_and_index(tok):
    got = decode(tok, "Zoë met Saldaña", ["B-person", "O", "I-person", "I-person"], "none")
    assert [(e["tag"], e["index"], e["text"], e["start"], e["end"]) for e in got] == [
        ("B-person", 0, "Zoë", 0, 3),
        ("I-person", 2, "Sal", 8, 11),
        ("I-person", 3, "daña", 11, 15),
    ]
    assert all(e["type"] == "person" and e["score"] == pytest.approx(0.9) for e in got)


@pytest.mark.parametrize("strategy", AGGREGATIONS)
def test_fields_and_python_float_scores(tok, strategy):
    got = decode(tok, "Zoë met Washington.", WASHINGTON, strategy, dtype=np.float32)
    extra = {"tag", "index"} if strategy == "none" else set()
    for entity in got:
        assert set(entity) == {"type", "text", "start", "end", "score"} | extra
        assert type(entity["score"]) is float
        assert type(entity["start"]) is int and type(entity["end"]) is int


@pytest.mark.parametrize("strategy", AGGREGATIONS)
def test_no_tokens_no_entities(tok, strategy):
    assert decode(tok, "   ", [], strategy) == []
    assert group_entities("", [], [], np.zeros((0, 0)), LABELS, strategy) == []


def test_unknown_strategy_names_the_allowed_ones():
    with pytest.raises(ValueError, match="'mean'.*none, simple, first, average, max"):
        group_entities("a", [(0, 1)], [0], np.ones((1, 1)), ["O"], strategy="mean")
    with pytest.raises(ValueError, match="none, simple, first, average, max"):
        group_entities("a", [(0, 1)], [0], np.ones((1, 1)), ["O"], strategy="FIRST")


@pytest.mark.parametrize(("offsets", "word_ids", "shape", "labels"), [
    ([(0, 1), (2, 3)], [0, 1], (1, 2), ["O", "B-x"]),   # fewer rows than tokens
    ([(0, 1), (2, 3)], [0], (2, 2), ["O", "B-x"]),      # fewer word ids than tokens
    ([(0, 1), (2, 3)], [0, 1], (2, 3), ["O", "B-x"]),   # more columns than labels
    ([(0, 1), (2, 3)], [0, 1], (2,), ["O", "B-x"]),      # not a matrix
    ([(0, 1), (2, 9)], [0, 1], (2, 2), ["O", "B-x"]),   # offset past the end of the text
])
def test_mismatched_inputs_raise(offsets, word_ids, shape, labels):
    with pytest.raises(ValueError):
        group_entities("a b", offsets, word_ids, np.full(shape, 0.5), labels, strategy="first")
