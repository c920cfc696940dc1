"""Text augmentation for distillation: new inputs made from the training texts.

The teacher labels them through its soft targets (the KD term); they carry no hard label. TinyBERT
showed augmentation matters most for small students (4-task average 68.4 -> 75.6 with it). These are
word-level edits, seeded and pure so they can be tested and reproduced; `replace` is TinyBERT's
word replacement, with each word's nearest whole words in the teacher's input-embedding space
standing in for its GloVe neighbours (none ship offline; MiniLM's rows give "great" ->
terrific, wonderful, excellent, ...).
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable, Sequence

import numpy as np

METHODS = ("mask", "delete_span", "swap", "replace")
WHOLE_WORD = re.compile(r"[a-z]{2,}")  # vocabulary pieces that are a word of their own
AFFIXED = re.compile(r"(\W*)([A-Za-z]+)(\W*)")


def mask_words(words: list[str], rng: random.Random, mask_token: str, prob: float) -> list[str]:
    out = [mask_token if rng.random() < prob else w for w in words]
    if out == words and words:  # always change something
        out[rng.randrange(len(words))] = mask_token
    return out


def delete_span(words: list[str], rng: random.Random, max_span: int = 3) -> list[str]:
    if len(words) < 2:
        return list(words)
    span = rng.randint(1, min(max_span, len(words) - 1))
    start = rng.randrange(len(words) - span + 1)
    return words[:start] + words[start + span :]


def swap_words(words: list[str], rng: random.Random, swaps: int = 1) -> list[str]:
    out = list(words)
    for _ in range(swaps if len(out) >= 2 else 0):
        i = rng.randrange(len(out) - 1)
        out[i], out[i + 1] = out[i + 1], out[i]
    return out


def split_affixes(word: str) -> tuple[str, str, str]:
    """("(great,") -> ("(", "great", ","): punctuation stuck to a word stays when it is replaced."""
    match = AFFIXED.fullmatch(word)
    return match.groups() if match else ("", "", "")


def replace_words(words: list[str], rng: random.Random, neighbours: dict[str, list[str]],
                  prob: float) -> list[str]:
    """Each word with neighbours (punctuation around it aside) is swapped for a random one of them
    with probability `prob` (at least one word when any can be)."""
    parts = [split_affixes(w) for w in words]
    known = [i for i, (_, core, _) in enumerate(parts) if neighbours.get(core.lower())]
    picked = [i for i in known if rng.random() < prob] or (known and [rng.choice(known)])
    out = list(words)
    for i in picked:
        before, core, after = parts[i]
        new = rng.choice(neighbours[core.lower()])
        out[i] = before + (new.capitalize() if core[:1].isupper() else new) + after
    return out


def text_words(text: str) -> set[str]:
    """The words `replace` may swap in a text (lowercased, without punctuation)."""
    return {core.lower() for core in (split_affixes(w)[1] for w in text.split()) if core}


def word_neighbours(vocab: Sequence[str], embeddings: np.ndarray, words: Iterable[str], k: int,
                    chunk: int = 2048) -> dict[str, list[str]]:
    """The k nearest whole-word vocabulary pieces (cosine of embedding rows) of each of `words`
    that is one; other words get none."""
    whole = [i for i, piece in enumerate(vocab[:len(embeddings)]) if WHOLE_WORD.fullmatch(piece)]
    k = min(k, len(whole) - 1)  # a small vocabulary has fewer candidates than asked for
    if k < 1:
        return {}
    rows = embeddings[whole].astype(np.float32)
    rows /= np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)
    where = {vocab[i]: n for n, i in enumerate(whole)}
    asked = sorted({w.lower() for w in words} & where.keys())
    out: dict[str, list[str]] = {}
    for start in range(0, len(asked), chunk):
        part = asked[start:start + chunk]
        sims = rows[[where[w] for w in part]] @ rows.T
        for w, row in zip(part, sims, strict=True):
            row[where[w]] = -np.inf  # not itself
            top = np.argpartition(-row, k)[:k]
            out[w] = [vocab[whole[j]] for j in top[np.argsort(-row[top], kind="stable")]]
    return out


def augment_text(text: str, method: str, rng: random.Random, mask_token: str, mask_prob: float,
                 neighbours: dict[str, list[str]] | None = None, replace_prob: float = 0.4) -> str:
    words = text.split()
    if method == "replace":
        if neighbours is None:
            raise ValueError("the replace augmentation needs word neighbours")
        return " ".join(replace_words(words, rng, neighbours, replace_prob))
    if method == "mask":
        return " ".join(mask_words(words, rng, mask_token, mask_prob))
    if method == "delete_span":
        return " ".join(delete_span(words, rng))
    if method == "swap":
        return " ".join(swap_words(words, rng))
    raise ValueError(f"unknown augmentation {method!r}; known: {METHODS}")


def augment_corpus(
    texts: Iterable[str], methods: Sequence[str], copies: int, seed: int, mask_token: str,
    mask_prob: float = 0.15, neighbours: dict[str, list[str]] | None = None, replace_prob: float = 0.4,
) -> list[str]:
    """`copies` new texts per input, cycling through `methods`; duplicates of inputs are dropped."""
    rng = random.Random(seed)
    originals = list(texts)
    seen = set(originals)
    out: list[str] = []
    for text in originals:
        for k in range(copies):
            new = augment_text(text, methods[k % len(methods)], rng, mask_token, mask_prob, neighbours,
                               replace_prob)
            if new and new not in seen:
                seen.add(new)
                out.append(new)
    return out
