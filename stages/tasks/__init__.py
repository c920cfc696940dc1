"""The training side of each task (one module per head); stages ask `get_task(cfg)`.

Each stage's code version includes only the configured task's module (pipeline.registry), so the
imports below stay lazy: editing one task never invalidates another task's cached outputs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pipeline.config import PipelineConfig
    from stages.tasks.base import Task


def get_task(cfg: PipelineConfig) -> Task:
    if cfg.task.type == "sentence-embedding":
        from stages.tasks.sentence_embedding import SentenceEmbedding

        return SentenceEmbedding(cfg)
    if cfg.task.type == "cross-encoder":
        from stages.tasks.cross_encoder import CrossEncoder

        return CrossEncoder(cfg)
    if cfg.task.type == "question-answering":
        from stages.tasks.question_answering import QuestionAnswering

        return QuestionAnswering(cfg)
    if cfg.task.type == "token-classification":
        from stages.tasks.token_classification import TokenClassification

        return TokenClassification(cfg)
    from stages.tasks.sequence_classification import SequenceClassification

    return SequenceClassification(cfg)
