"""Named-entity recognition data: readers, tag-scheme checks, the entity metric and a split.

Pure Python (numpy and seqeval only, no torch) so the NER stages and their tests can share one
definition of what a sentence is, which tag sequences are valid, and how F1 is counted.
Everything downstream works in IOB2: readers return tags as written, ``to_iob2`` validates them in
the declared scheme and converts, and ``entity_scores`` scores IOB2 sequences the way conlleval does.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import NoReturn

import numpy as np

from pipeline.stage import StageError

Sentence = tuple[list[str], list[str]]  # (words, tags)
SCHEMES = ("iob1", "iob2", "bioes")

_PREFIXES = {"iob1": "BI", "iob2": "BI", "bioes": "BIES"}
_FIELD_SEP = re.compile(r"[ \t]+")
_SCHEME_FIX = "set data.tag_scheme to the scheme your data uses (iob1, iob2 or bioes) or fix the tags"


# --- readers -----------------------------------------------------------------------------------


def read_conll(path: Path) -> list[Sentence]:
    """Read a CoNLL-style file: ``token<TAB or spaces>...tag`` per line, sentences separated by
    whitespace-only lines. The token is the first field and the tag the last, so 2-column (WNUT)
    and 4-column (CoNLL-2003) files both work; ``-DOCSTART-`` lines are skipped."""
    path = Path(path)
    sentences: list[Sentence] = []
    words: list[str] = []
    tags: list[str] = []
    # Split on '\n' only: str.splitlines() would also break on U+2028, U+0085, ... inside tokens.
    for lineno, line in enumerate(_read_utf8(path).split("\n"), start=1):
        fields = _FIELD_SEP.split(line.strip(" \t\r\n")) if line.strip() else []
        if not fields or fields[0] == "-DOCSTART-":
            if words:
                sentences.append((words, tags))
            words, tags = [], []
            continue
        if len(fields) < 2:
            raise StageError(
                f"{path}:{lineno}: expected 'token<TAB>tag' but the line has one field "
                f"({line.strip()!r}); add the tag, or leave the line empty to end a sentence")
        words.append(fields[0])
        tags.append(fields[-1])
    if words:
        sentences.append((words, tags))
    if not sentences:
        raise StageError(f"{path}: no sentences found (the file is empty or holds only "
                         "separators); point the data config at a CoNLL file with token/tag lines")
    return sentences


def _read_utf8(path: Path) -> str:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise StageError(f"{path}: file not found; check the path in the data config") from None
    try:
        return raw.decode("utf-8-sig")  # tolerate a byte-order mark
    except UnicodeDecodeError as err:
        lineno = raw.count(b"\n", 0, err.start) + 1
        raise StageError(f"{path}:{lineno}: not valid UTF-8 ({err.reason} at byte {err.start}); "
                         "re-save the file as UTF-8") from None


def read_token_rows(records: list[dict], tokens_column: str, tags_column: str,
                    where: str) -> list[Sentence]:
    """Sentences from parsed JSON/JSONL rows holding a token list and a tag list.

    Integer tags are returned as strings (map ClassLabel ids to names before calling when names
    are known). Rows with no tokens are returned as they are; dropping them is the caller's job.
    """
    sentences: list[Sentence] = []
    for row_no, row in enumerate(records):
        for column, what in ((tokens_column, "tokens"), (tags_column, "tags")):
            if column not in row:
                raise StageError(
                    f"{where}: row {row_no} (0-based) has no column {column!r} (columns: "
                    f"{sorted(row)}); set data.{what}_column to the column that holds the {what}")
        tokens, tags = row[tokens_column], row[tags_column]
        for column, value in ((tokens_column, tokens), (tags_column, tags)):
            if not isinstance(value, list):
                raise StageError(
                    f"{where}: row {row_no} (0-based): column {column!r} holds a "
                    f"{type(value).__name__}, not a list; NER rows need one list of tokens and "
                    "one list of tags of the same length")
        if len(tokens) != len(tags):
            raise StageError(
                f"{where}: row {row_no} (0-based) has {len(tokens)} tokens but {len(tags)} tags; "
                "every token needs exactly one tag")
        sentences.append(([str(t) for t in tokens], [str(t) for t in tags]))
    return sentences


# --- tag schemes -------------------------------------------------------------------------------


def to_iob2(tags: list[str], scheme: str, sentence: int, where: str) -> list[str]:
    """Validate ``tags`` in ``scheme`` (iob1, iob2 or bioes) and return them in IOB2.

    iob2: I-X continues B-X/I-X. iob1: I-X may start a chunk; B-X only separates two adjacent
    chunks of type X. bioes: B-X and I-X are followed by I-X/E-X, I-X and E-X follow B-X/I-X,
    S-X is a single-token chunk (S -> B, E -> I).
    """
    if scheme not in SCHEMES:
        raise StageError(f"{where}: unknown tag scheme {scheme!r}; set data.tag_scheme to one of "
                         f"{', '.join(SCHEMES)}")
    parsed = [_parse_tag(tag, scheme, i, tags, sentence, where) for i, tag in enumerate(tags)]
    out: list[str] = []
    for i, (prefix, kind) in enumerate(parsed):
        prev_prefix, prev_kind = parsed[i - 1] if i else ("O", "")
        continues = prev_kind == kind and prev_prefix in "BI"  # inside an open chunk of this type
        problem = _transition_problem(scheme, prefix, kind, continues, prev_prefix, prev_kind)
        if problem:
            _invalid(tags, i, scheme, sentence, where, problem)
        out.append(_as_iob2(scheme, prefix, kind, continues))
    if scheme == "bioes" and parsed and parsed[-1][0] in "BI":
        _invalid(tags, len(tags), scheme, sentence, where,
                 f"the sentence ends inside a chunk; BIOES chunks end with E-{parsed[-1][1]}")
    return out


def _parse_tag(tag: str, scheme: str, i: int, tags: list[str], sentence: int,
               where: str) -> tuple[str, str]:
    if tag == "O":
        return "O", ""
    prefix, dash, kind = tag.partition("-")  # split on the first '-': types may hold one
    if not dash or not kind or len(prefix) != 1 or prefix not in _PREFIXES[scheme]:
        allowed = ", ".join(f"{p}-TYPE" for p in _PREFIXES[scheme])
        _invalid(tags, i, scheme, sentence, where, f"tags must be O or {allowed}")
    return prefix, kind


def _transition_problem(scheme: str, prefix: str, kind: str, continues: bool,
                        prev_prefix: str, prev_kind: str) -> str | None:
    """Why (prev, this) is not allowed in ``scheme``, or None when it is."""
    if scheme == "iob2" and prefix == "I" and not continues:
        return f"I-{kind} must follow B-{kind} or I-{kind}"
    if scheme == "iob1" and prefix == "B" and prev_kind != kind:
        return f"in IOB1, B-{kind} only separates two adjacent {kind} chunks"
    if scheme == "bioes":
        if prev_prefix in "BI" and prev_kind and not (continues and prefix in "IE"):
            return f"{prev_prefix}-{prev_kind} must be followed by I-{prev_kind} or E-{prev_kind}"
        if prefix in "IE" and not continues:
            return f"{prefix}-{kind} must follow B-{kind} or I-{kind}"
    return None


def _as_iob2(scheme: str, prefix: str, kind: str, continues: bool) -> str:
    if prefix == "O":
        return "O"
    if scheme == "iob1":
        return f"I-{kind}" if prefix == "I" and continues else f"B-{kind}"
    return f"{'B' if prefix in 'BS' else 'I'}-{kind}"


def _invalid(tags: list[str], i: int, scheme: str, sentence: int, where: str,
             why: str) -> NoReturn:
    prev = tags[i - 1] if i else "<sentence start>"
    tag = tags[i] if i < len(tags) else "<sentence end>"
    lo, hi = max(0, i - 3), i + 4
    context = ("... " if lo else "") + " ".join(tags[lo:hi]) + (" ..." if hi < len(tags) else "")
    raise StageError(
        f"{where}: sentence {sentence} (0-based) is not valid {scheme.upper()}: tag {i} '{tag}' "
        f"after '{prev}' ({why}; tags: {context}); {_SCHEME_FIX}")


# --- metric ------------------------------------------------------------------------------------


def entity_scores(gold: list[list[str]], pred: list[list[str]]) -> dict:
    """Entity-level micro precision/recall/F1, per-type scores and token accuracy (IOB2 input).

    Uses seqeval in its default mode (conlleval-compatible, not ``mode="strict"``): an entity is
    a maximal chunk, and an I-X after O (or after another type) in a prediction still starts an
    entity, as conlleval counts it. An entity counts as correct only with the same type, start and
    end as a gold entity. Zero divisions (no entities at all) give 0.0.
    """
    from seqeval.metrics.sequence_labeling import (
        accuracy_score,
        get_entities,
        precision_recall_fscore_support,
    )

    _check_same_shape(gold, pred)
    p, r, f, _ = precision_recall_fscore_support(gold, pred, average="micro", zero_division=0)
    types = sorted({e[0] for e in get_entities(gold)} | {e[0] for e in get_entities(pred)})
    ps, rs, fs, supports = precision_recall_fscore_support(gold, pred, average=None,
                                                           zero_division=0)
    per_type = {kind: {"precision": float(ps[k]), "recall": float(rs[k]), "f1": float(fs[k]),
                       "support": int(supports[k])} for k, kind in enumerate(types)}
    has_tokens = any(gold)
    return {
        "entity_f1": float(f),
        "entity_precision": float(p),
        "entity_recall": float(r),
        "token_accuracy": float(accuracy_score(gold, pred)) if has_tokens else 0.0,
        "per_type": per_type,
    }


def _check_same_shape(gold: list[list[str]], pred: list[list[str]]) -> None:
    if len(gold) != len(pred):
        raise ValueError(f"{len(gold)} gold sentences but {len(pred)} predicted")
    for k, (g, q) in enumerate(zip(gold, pred, strict=True)):
        if len(g) != len(q):
            raise ValueError(f"sentence {k}: {len(g)} gold tags but {len(q)} predicted")


# --- split -------------------------------------------------------------------------------------


def split_sentences(n: int, validation_size: float, test_size: float,
                    seed: int) -> dict[str, list[int]]:
    """Seeded random split of ``range(n)`` into train/validation/test index lists (each sorted).

    Sizes are ``n * fraction`` rounded half up, at least 1 each; train keeps at least 1.
    """
    if n < 3:
        raise StageError(f"only {n} sentence(s): need at least 3 to make train, validation and "
                         "test splits; add data or provide the splits as files")
    if not (0 < validation_size < 1 and 0 < test_size < 1 and validation_size + test_size < 1):
        raise StageError(f"validation_size={validation_size} and test_size={test_size} must each "
                         "be in (0, 1) and sum to less than 1; fix data.validation_size/test_size")
    n_val = max(1, math.floor(n * validation_size + 0.5))
    n_test = max(1, math.floor(n * test_size + 0.5))
    while n_val + n_test > n - 1:  # keep at least one training sentence
        if n_val >= n_test:
            n_val -= 1
        else:
            n_test -= 1
    order = np.random.default_rng(seed).permutation(n)
    return {
        "train": sorted(int(i) for i in order[n_val + n_test:]),
        "validation": sorted(int(i) for i in order[:n_val]),
        "test": sorted(int(i) for i in order[n_val:n_val + n_test]),
    }


def entity_counts(gold: list[list[str]], pred: list[list[str]]) -> np.ndarray:
    """Per sentence: (true positive, false positive, false negative) entities, as `entity_scores`
    counts them (seqeval's default chunking); their sums give its micro precision, recall and F1."""
    from seqeval.metrics.sequence_labeling import get_entities

    _check_same_shape(gold, pred)
    counts = np.zeros((len(gold), 3))
    for n, (g, p) in enumerate(zip(gold, pred, strict=True)):
        g_set, p_set = set(get_entities(g)), set(get_entities(p))
        counts[n] = len(g_set & p_set), len(p_set - g_set), len(g_set - p_set)
    return counts


def f1_of_counts(counts: np.ndarray) -> float:
    """Micro F1 from (tp, fp, fn) rows: 2 tp / (2 tp + fp + fn); 0 with no entities at all."""
    tp, fp, fn = np.asarray(counts).sum(axis=0)
    return float(2 * tp / (2 * tp + fp + fn)) if tp + fp + fn else 0.0
