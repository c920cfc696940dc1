"""Turn per-token NER probabilities into entities, without torch or transformers.

The strategies mirror Hugging Face's `TokenClassificationPipeline` (`aggregation_strategy`), so a
bundle served by the torch-free runtime returns what the training-side pipeline would. Two
deliberate differences: word boundaries come from the tokenizer's `word_ids` (HF guesses them from
"##" prefixes and token lengths), and an entity's text is always `text[start:end]` (HF rebuilds it
by joining tokens, which loses case, accents and spacing).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import NamedTuple

import numpy as np

AGGREGATIONS = ("none", "simple", "first", "average", "max")


class _Unit(NamedTuple):
    """A token (none/simple) or a word (first/average/max) with its decided tag."""

    tag: str
    score: float
    start: int
    end: int
    index: int


def group_entities(
    text: str,
    offsets: Sequence[tuple[int, int]],
    word_ids: Sequence[int | None],
    probs: np.ndarray,
    labels: Sequence[str],
    strategy: str = "first",
) -> list[dict]:
    """Entities `{"type", "text", "start", "end", "score"}` found in `text`, in text order.

    `offsets`, `word_ids` and the rows of `probs` describe the same tokens (special tokens
    removed); `labels[j]` names column j of `probs`. With strategy "none" each non-"O" token is
    returned on its own, with its `tag` and `index` added.
    """
    if strategy not in AGGREGATIONS:
        raise ValueError(
            f"unknown aggregation strategy {strategy!r}; expected one of {', '.join(AGGREGATIONS)}"
        )
    probs = _check(text, offsets, word_ids, probs, labels)
    if strategy in ("none", "simple"):
        units = [_decide(probs[i], offsets[i], labels, i) for i in range(len(probs))]
    else:
        units = [_word(text, offsets, probs, labels, idx, strategy) for idx in _words(word_ids)]
    if strategy == "none":
        return [_token_entity(text, u) for u in units if u.tag != "O"]
    entities = (_merge(text, group) for group in _groups(units))
    return [e for e in entities if e["type"] != "O"]


def _check(text, offsets, word_ids, probs, labels) -> np.ndarray:
    """Refuse inputs that disagree, rather than decode misaligned tokens into wrong entities."""
    probs = np.asarray(probs)
    if probs.ndim != 2:
        raise ValueError(f"probs must be [num_tokens, num_labels], got shape {probs.shape}")
    if not len(offsets) == len(word_ids) == probs.shape[0]:
        raise ValueError(
            f"one entry per token expected: {len(offsets)} offsets, {len(word_ids)} word_ids, "
            f"{probs.shape[0]} rows of probs"
        )
    if len(probs) and probs.shape[1] != len(labels):  # no tokens: any width (e.g. (0, 0)) will do
        raise ValueError(f"probs has {probs.shape[1]} columns but there are {len(labels)} labels")
    for start, end in offsets:
        if not 0 <= start <= end <= len(text):
            raise ValueError(f"offset ({start}, {end}) lies outside the text ({len(text)} chars)")
    return probs


def _decide(row: np.ndarray, span: tuple[int, int], labels, index: int) -> _Unit:
    """A token's tag is its argmax (ties go to the first label, as numpy and HF do)."""
    best = int(row.argmax())
    return _Unit(labels[best], float(row[best]), int(span[0]), int(span[1]), index)


def _words(word_ids: Sequence[int | None]) -> Iterator[list[int]]:
    """Token indices of each word: runs of equal word ids (a None id stands alone)."""
    run: list[int] = []
    for i, wid in enumerate(word_ids):
        if run and (wid is None or wid != word_ids[run[-1]]):
            yield run
            run = []
        run.append(i)
    if run:
        yield run


def _word(text, offsets, probs, labels, idx: list[int], strategy: str) -> _Unit:
    """One tag for a whole word, so that its pieces cannot disagree (HF's `aggregate_word`)."""
    rows = probs[idx]
    if strategy == "first":
        row = rows[0]
    elif strategy == "max":
        row = max(rows, key=lambda r: r.max())  # the most confident piece; ties: the first
    else:  # average
        row = np.nanmean(rows, axis=0)
    span = (offsets[idx[0]][0], offsets[idx[-1]][1])
    return _decide(row, span, labels, idx[0])


def _bio(tag: str) -> tuple[str, str]:
    """HF's `get_tag`: ("B"|"I", type); a tag without a B-/I- prefix counts as a continuation."""
    if tag.startswith(("B-", "I-")):
        return tag[0], tag[2:]
    return "I", tag


def _groups(units: list[_Unit]) -> Iterator[list[_Unit]]:
    """Adjacent units of one type, split at every B- (HF's `group_entities`)."""
    group: list[_Unit] = []
    for unit in units:
        bi, kind = _bio(unit.tag)
        if group and (bi == "B" or kind != _bio(group[-1].tag)[1]):
            yield group
            group = []
        group.append(unit)
    if group:
        yield group


def _entity_type(tag: str) -> str:
    """The type HF reports (`group_sub_entities`): whatever follows the first "-"."""
    return tag.split("-", 1)[-1]


def _merge(text: str, group: list[_Unit]) -> dict:
    start, end = group[0].start, group[-1].end
    return {
        "type": _entity_type(group[0].tag),
        "text": text[start:end],
        "start": start,
        "end": end,
        "score": float(np.nanmean([u.score for u in group])),
    }


def _token_entity(text: str, unit: _Unit) -> dict:
    entity = _merge(text, [unit])
    entity.update(tag=unit.tag, index=unit.index)
    return entity
