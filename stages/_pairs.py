"""Pair supervision beside embedding distillation: where the training data has pairs, each
training step also embeds a batch of them with the student and adds a sentence-transformers loss.

Scored pairs (STS): CoSENT (the cosine of a more similar pair should be higher). Question ->
passage pairs (retrieval): MultipleNegativesRankingLoss, each question's passage against the
batch's other passages; a batch never holds two questions of one passage, whose passages would
be the same text on both sides of the softmax.

The embedding loss makes the student copy its teacher; the pairs let it learn the task's own
notion of similarity where the teacher is not fine-tuned on it. The pair batches come from a
seeded permutation per pass, indexed by the step, so a run resumed from a checkpoint sees the
same pairs at the same steps as one that was not interrupted.
"""

from __future__ import annotations

import numpy as np
import torch


class PairSupervision:
    """Pairs (a, b, value) and a loss on a model's embeddings of them: `value` is the pair's score
    (loss "cosent") or the id of b (loss "in-batch": b's id is unique within a batch)."""

    LOSSES = {"cosent": "CoSENTLoss", "in-batch": "MultipleNegativesRankingLoss"}

    def __init__(self, pairs: list[tuple[str, str, float]], tokenizer, batch_size: int, max_length: int,
                 seed: int, scale: float = 20.0, loss: str = "cosent"):
        try:  # sentence-transformers >= 5.6; the old path still works, with a deprecation warning
            from sentence_transformers.sentence_transformer import losses
        except ImportError:
            from sentence_transformers import losses

        if len(pairs) < 2:
            raise ValueError("pair supervision needs at least 2 pairs")
        self.pairs = pairs
        self.tokenizer = tokenizer
        self.batch_size = min(batch_size, len(pairs))
        self.max_length = max_length
        self.seed = seed
        self.kind = loss
        # The library's loss on embeddings computed here (its model argument is only used by forward()).
        self.loss_name = self.LOSSES[loss]
        self.criterion = getattr(losses, self.loss_name)(model=None, scale=scale)
        self._passes: dict[int, list[list[int]]] = {}

    def batch(self, index: int) -> list[tuple[str, str, float]]:
        """The index-th batch of an endless sequence of seeded passes over the pairs."""
        per_pass = len(self.pairs) // self.batch_size
        epoch, slot = divmod(index, per_pass)
        if self.kind == "cosent":
            order = np.random.default_rng([self.seed, epoch]).permutation(len(self.pairs))
            return [self.pairs[i] for i in order[slot * self.batch_size:(slot + 1) * self.batch_size]]
        if epoch not in self._passes:
            self._passes = {epoch: self._distinct_batches(epoch, per_pass)}  # one pass kept at a time
        return [self.pairs[i] for i in self._passes[epoch][slot]]

    def _distinct_batches(self, epoch: int, count: int) -> list[list[int]]:
        """`count` batches of one seeded pass in which no value repeats within a batch: pairs
        are dealt in permuted order to the first batch that has room and lacks their value. A
        pair that fits nowhere sits this pass out; a batch left with fewer than 2 pairs (nothing
        to contrast) is replaced by the pass's first."""
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.pairs))
        batches: list[list[int]] = [[] for _ in range(count)]
        seen: list[set] = [set() for _ in range(count)]
        open_from = 0  # batches before it are full
        for i in order:
            value = self.pairs[i][2]
            for b in range(open_from, count):
                if len(batches[b]) < self.batch_size and value not in seen[b]:
                    batches[b].append(int(i))
                    seen[b].add(value)
                    break
            while open_from < count and len(batches[open_from]) == self.batch_size:
                open_from += 1
        return [b if len(b) >= 2 else batches[0] for b in batches]  # a near-empty batch repeats the first

    def loss(self, model: torch.nn.Module, index: int) -> torch.Tensor:
        rows = self.batch(index)
        device = next(model.parameters()).device
        embeddings = []
        for side in (0, 1):
            encoded = self.tokenizer([row[side] for row in rows], padding=True, truncation=True,
                                     max_length=self.max_length, return_tensors="pt").to(device)
            embeddings.append(model(**encoded).logits)
        values = torch.tensor([row[2] for row in rows], dtype=embeddings[0].dtype, device=device)
        return self.criterion.compute_loss_from_embeddings(embeddings, values)  # in-batch: values unused
