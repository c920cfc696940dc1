"""The static tier: a Model2Vec model (one vector per token, distilled from the teacher) served with
numpy and tokenizers alone, no onnxruntime session.

A sentence is the mean of its tokens' vectors (special and unknown tokens left out, optional
per-token weights), L2-normalised when the model says so: what `model2vec.StaticModel.encode`
computes, re-done here so a bundle needs neither model2vec nor torch (the release stage checks the
two agree). Files in a static bundle: static.npz (embeddings, and weights / token_mapping when the
model has them), tokenizer.json, bundle.json with a "static" section.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from bertpress.embeddings import l2_normalize

STATIC_FILE = "static.npz"


class StaticVectors:
    def __init__(self, bundle: Path, settings: dict, tokenizer_file: str):
        arrays = np.load(Path(bundle) / STATIC_FILE)
        self.embeddings = arrays["embeddings"].astype(np.float32)
        self.weights = arrays["weights"].astype(np.float32) if "weights" in arrays else None
        self.mapping = arrays.get("token_mapping")
        self.normalize = bool(settings.get("normalize", True))
        self.max_tokens = int(settings.get("max_tokens", 512))
        self.median_token_length = settings.get("median_token_length")
        self.skip = set(settings.get("skip_ids", []))
        # The tokenizer as model2vec saved it: its truncation (the teacher's max length) is part of
        # the encoding rule, so it is kept; padding is not needed one text at a time.
        self.tokenizer = Tokenizer.from_file(str(Path(bundle) / tokenizer_file))
        self.tokenizer.no_padding()

    @property
    def dim(self) -> int:
        return self.embeddings.shape[1]

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        if self.median_token_length:  # model2vec cuts long texts by characters before tokenizing
            limit = int(self.max_tokens * self.median_token_length)
            texts = [t[:limit] for t in texts]
        encodings = self.tokenizer.encode_batch(list(texts), add_special_tokens=False)
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, encoding in enumerate(encodings):
            ids = [i for i in encoding.ids if i not in self.skip][: self.max_tokens]
            if not ids:
                continue
            rows = self.embeddings[self.mapping[ids] if self.mapping is not None else ids]
            if self.weights is not None:
                rows = rows * self.weights[ids][:, None]
            out[row] = rows.mean(axis=0)
        return l2_normalize(out) if self.normalize else out
