"""Embedding kinds and the numpy pooling shared by the ONNX runtime and the PyTorch path."""

from __future__ import annotations

import numpy as np

# What an exported model can return besides logits, in output order.
EMBEDDING_OUTPUTS = ("pooled", "sequence", "hidden_states")
# What a user can ask for, and the model output each is computed from.
EMBEDDING_KINDS = {"pooled": "pooled", "mean": "sequence", "sequence": "sequence",
                   "hidden_states": "hidden_states"}


def mean_pool(sequence: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
    """Sentence vectors: the mean of the token vectors that the attention mask keeps (padding excluded).

    sequence [batch, seq, hidden], attention_mask [batch, seq] -> [batch, hidden].
    """
    mask = attention_mask.astype(sequence.dtype)[..., None]
    return (sequence * mask).sum(axis=1) / np.clip(mask.sum(axis=1), 1e-9, None)


def l2_normalize(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.clip(np.linalg.norm(vectors, axis=-1, keepdims=True), 1e-12, None)
