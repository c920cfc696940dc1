"""Pair supervision beside embedding distillation: where the training data has scored sentence
pairs (STS), each training step also embeds a batch of them with the student and adds
sentence-transformers' CoSENT loss (the cosine of a more similar pair should be higher).

The embedding MSE makes the student copy its teacher; the pairs let it learn the task's own
notion of similarity where the teacher is not fine-tuned on it. The pair batches come from a
seeded permutation per pass, indexed by the step, so a run resumed from a checkpoint sees the
same pairs at the same steps as one that was not interrupted.
"""

from __future__ import annotations

import numpy as np
import torch


class PairSupervision:
    """Scored pairs (a, b, score) and the CoSENT loss of a model's embeddings of them."""

    def __init__(self, pairs: list[tuple[str, str, float]], tokenizer, batch_size: int, max_length: int,
                 seed: int, scale: float = 20.0):
        try:  # sentence-transformers >= 5.6; the old path still works, with a deprecation warning
            from sentence_transformers.sentence_transformer.losses import CoSENTLoss
        except ImportError:
            from sentence_transformers.losses import CoSENTLoss

        if len(pairs) < 2:
            raise ValueError("pair supervision needs at least 2 scored pairs")
        self.pairs = pairs
        self.tokenizer = tokenizer
        self.batch_size = min(batch_size, len(pairs))
        self.max_length = max_length
        self.seed = seed
        # The library's loss on embeddings computed here (its model argument is only used by forward()).
        self.cosent = CoSENTLoss(model=None, scale=scale)

    def batch(self, index: int) -> list[tuple[str, str, float]]:
        """The index-th batch of an endless sequence of seeded passes over the pairs."""
        per_pass = len(self.pairs) // self.batch_size
        epoch, slot = divmod(index, per_pass)
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.pairs))
        return [self.pairs[i] for i in order[slot * self.batch_size:(slot + 1) * self.batch_size]]

    def loss(self, model: torch.nn.Module, index: int) -> torch.Tensor:
        rows = self.batch(index)
        device = next(model.parameters()).device
        embeddings = []
        for side in (0, 1):
            encoded = self.tokenizer([row[side] for row in rows], padding=True, truncation=True,
                                     max_length=self.max_length, return_tensors="pt").to(device)
            embeddings.append(model(**encoded).logits)
        scores = torch.tensor([row[2] for row in rows], dtype=embeddings[0].dtype, device=device)
        return self.cosent.compute_loss_from_embeddings(embeddings, scores)
