"""Runtime head for token classification (named-entity recognition).

Input: a raw text, or a list of words (pre-split, as in CoNLL files). Long inputs are read as
overlapping windows (bertpress.tasks.windows), so nothing is cut off. Output per input: the entities
`{type, text, start, end, score}` with character offsets into the text (`text[start:end]` is the
entity; for a word list, into the words joined by single spaces), grouped by one of Hugging
Face's aggregation strategies (bertpress.tasks.entities).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from bertpress.errors import InputError
from bertpress.tasks.entities import AGGREGATIONS, group_entities
from bertpress.tasks.windows import owners, run_windows

if TYPE_CHECKING:
    from bertpress.runtime import Model


class TokenClassificationHead:
    task = "token-classification"

    def __init__(self, model: Model):
        self.model = model
        self.aggregation = model.metadata.get("aggregation", "first")
        stride = int(model.metadata.get("stride", 0))
        model.tokenizer.no_padding()  # windows are padded per batch below
        model.tokenizer.enable_truncation(model.max_length, stride=stride)

    # -- tokens of whole inputs, merged from their windows ----------------------------------------
    def _read(self, item: Any) -> tuple[str, Any]:
        """(text, windows): a raw text, or words joined by single spaces."""
        if isinstance(item, str):
            return item, self.model.tokenizer.encode(item)
        if isinstance(item, list | tuple) and all(isinstance(w, str) for w in item):
            words = list(item)
            if any(not w or w.isspace() or any(c.isspace() for c in w) for w in words):
                raise InputError("pre-split words must be non-empty and hold no whitespace")
            return " ".join(words), self.model.tokenizer.encode(words, is_pretokenized=True)
        raise InputError(f"an input is {type(item).__name__}: give a text or a list of words")

    def token_probs(self, items: Sequence[Any], batch_size: int = 32) -> list[dict[str, Any]]:
        """Per input: its text, and per real token (in order) the character span, word index and
        label probabilities, each token read from the window that owns it."""
        from bertpress.runtime import softmax

        if isinstance(items, str):
            raise InputError("pass a list of inputs, not a single string (wrap it: [text])")
        read = [self._read(item) for item in items]
        windows = [(i, w) for i, (_, first) in enumerate(read) for w in [first, *first.overflowing]]
        probs = [softmax(row) for row in run_windows(self.model, [w for _, w in windows], batch_size)]
        per_input: list[list[tuple[Any, np.ndarray]]] = [[] for _ in read]
        for (i, window), p in zip(windows, probs, strict=True):
            per_input[i].append((window, p))
        return [self._merge(text, per_input[i], None if isinstance(items[i], str) else _word_starts(items[i]))
                for i, (text, _) in enumerate(read)]

    @staticmethod
    def _merge(text: str, windows: list[tuple[Any, np.ndarray]], word_starts: list[int] | None):
        keyed = []
        for enc, _ in windows:
            keyed.append([(word, *span) for word, span in zip(enc.word_ids, enc.offsets, strict=True)
                          if word is not None])
        positions = [[j for j, word in enumerate(enc.word_ids) if word is not None] for enc, _ in windows]
        owner = owners(keyed)
        keys = sorted(owner)
        offsets, words, rows = [], [], []
        for key in keys:
            w, position = owner[key]
            word, start, end = key
            shift = word_starts[word] if word_starts is not None else 0  # pre-split: per-word spans
            offsets.append((start + shift, end + shift))
            words.append(word)
            rows.append(windows[w][1][positions[w][position]])
        empty = np.zeros((0, 0), dtype=np.float32)
        return {"text": text, "offsets": offsets, "word_ids": words,
                "probs": np.stack(rows) if rows else empty}

    # -- predictions -------------------------------------------------------------------------------
    def predict(self, items: Sequence[Any], batch_size: int = 32,
                aggregation: str | None = None) -> list[dict[str, Any]]:
        strategy = aggregation or self.aggregation
        if strategy not in AGGREGATIONS:
            raise InputError(f"unknown aggregation {strategy!r}; choose one of {', '.join(AGGREGATIONS)}")
        out = []
        for tokens in self.token_probs(items, batch_size):
            entities = (group_entities(tokens["text"], tokens["offsets"], tokens["word_ids"],
                                       tokens["probs"], self.model.labels, strategy)
                        if tokens["offsets"] else [])
            out.append({"entities": entities})
        return out

    def word_tags(self, sentences: Sequence[Sequence[str]], batch_size: int = 32) -> list[list[str]]:
        """The tag of each word (its first piece's argmax), for scoring against gold tags."""
        tags = []
        for words, tokens in zip(sentences, self.token_probs([list(s) for s in sentences], batch_size),
                                 strict=True):
            first: dict[int, np.ndarray] = {}
            for word, row in zip(tokens["word_ids"], tokens["probs"], strict=True):
                first.setdefault(word, row)
            # A word with no pieces at all (cannot happen with [UNK]) reads as "O".
            tags.append([self.model.labels[int(first[w].argmax())] if w in first else "O"
                         for w in range(len(words))])
        return tags


def _word_starts(words: Sequence[str]) -> list[int]:
    """Character start of each word in " ".join(words)."""
    starts, position = [], 0
    for word in words:
        starts.append(position)
        position += len(word) + 1
    return starts
