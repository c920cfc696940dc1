"""What the runtime does with a model's outputs, one module per task (torch-free).

A bundle records its task (`bundle.json` "task"); `head_for` returns the head that turns the
ONNX outputs into predictions for it. The training side's task modules (`stages.tasks`) write
that record and reuse these heads to score bundles the way production runs them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bertpress.errors import BundleError

if TYPE_CHECKING:
    from bertpress.runtime import Model

TASKS = ("sequence-classification", "token-classification", "sentence-embedding", "question-answering",
         "cross-encoder")
# Bundles written before the task seam said "text-classification".
ALIASES = {"text-classification": "sequence-classification"}


def task_name(metadata: dict) -> str:
    task = metadata.get("task", "sequence-classification")
    task = ALIASES.get(task, task)
    if task not in TASKS:
        raise BundleError(f"the bundle's task {task!r} is unknown to this bertpress (it knows "
                          f"{', '.join(TASKS)}): upgrade bertpress")
    return task


def head_for(model: Model):
    """The head object for a loaded model (imported lazily: one task's code per process)."""
    task = task_name(model.metadata)
    if task == "sentence-embedding":
        from bertpress.tasks.sentence_embedding import SentenceEmbeddingHead

        return SentenceEmbeddingHead(model)
    if task == "cross-encoder":
        from bertpress.tasks.cross_encoder import CrossEncoderHead

        return CrossEncoderHead(model)
    if task == "question-answering":
        from bertpress.tasks.question_answering import QuestionAnsweringHead

        return QuestionAnsweringHead(model)
    if task == "token-classification":
        from bertpress.tasks.token_classification import TokenClassificationHead

        return TokenClassificationHead(model)
    from bertpress.tasks.sequence_classification import SequenceClassificationHead

    return SequenceClassificationHead(model)
