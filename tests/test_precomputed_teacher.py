"""Distillation with the teacher's logits computed once (a budget-trimmed student reads other
pieces than its teacher): the loss equals the on-the-fly one, and the column survives the Trainer."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch
from datasets import Dataset
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    DataCollatorWithPadding,
    TrainingArguments,
)

from pipeline.config import build_config
from stages._hf import train_wordpiece_tokenizer
from stages._train import training_arguments
from stages.distill import DistillationTrainer
from stages.tasks.base import TEACHER_LOGITS
from stages.tasks.sequence_classification import SequenceClassification, teacher_logits

DATA = Path(__file__).parent / "data" / "tiny_reviews.csv"


def _tiny(vocab: int, seed: int) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    return BertForSequenceClassification(BertConfig(
        vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        num_labels=3)).eval()


def test_precomputed_teacher_logits_give_the_same_loss(tmp_path):
    with DATA.open() as fh:
        rows = list(csv.DictReader(fh))[:40]
    tokenizer = train_wordpiece_tokenizer([r["review"] for r in rows], 300)
    enc = tokenizer([r["review"] for r in rows], truncation=True, max_length=32)
    ds = Dataset.from_dict({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
                            "token_type_ids": enc["token_type_ids"], "labels": [i % 3 for i in range(len(rows))]})
    teacher, student = _tiny(len(tokenizer), 0), _tiny(len(tokenizer), 1)
    logits = teacher_logits(teacher, tokenizer, ds, "test")
    # batched by length, padded: the same numbers as each text alone
    alone = teacher(**{k: torch.tensor([enc[k][7]]) for k in ("input_ids", "attention_mask", "token_type_ids")})
    np.testing.assert_allclose(logits[7], alone.logits[0].detach().numpy(), atol=1e-5)

    with_column = ds.add_column(TEACHER_LOGITS, logits.tolist())
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[], per_device_eval_batch_size=8)
    trainer = DistillationTrainer(model=student, task=SequenceClassification(build_config({})), teacher=teacher,
                                  temperature=2.0, alpha=0.3, args=args,
                                  data_collator=DataCollatorWithPadding(tokenizer), processing_class=tokenizer)
    on_the_fly = trainer.evaluate(ds)["eval_loss"]
    precomputed = trainer.evaluate(with_column)["eval_loss"]  # the column is not dropped as unused
    assert abs(on_the_fly - precomputed) < 1e-5
    # and it is really used: wrong soft targets give another loss
    shifted = ds.add_column(TEACHER_LOGITS, (logits + np.array([5.0, 0.0, -5.0], dtype=np.float32)).tolist())
    assert abs(trainer.evaluate(shifted)["eval_loss"] - on_the_fly) > 1e-3


def test_evaluation_rows_without_targets_score_the_labels_and_never_run_the_teacher(tmp_path):
    """Only the train rows carry precomputed targets (the teacher's pass over validation and test
    is saved): an evaluation batch without them gives alpha x CE on the labels, and the teacher,
    which reads other pieces, is not run on the student's inputs."""
    with DATA.open() as fh:
        rows = list(csv.DictReader(fh))[:24]
    tokenizer = train_wordpiece_tokenizer([r["review"] for r in rows], 300)
    enc = tokenizer([r["review"] for r in rows], truncation=True, max_length=32)
    labels = [i % 3 for i in range(len(rows))]
    ds = Dataset.from_dict({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
                            "token_type_ids": enc["token_type_ids"], "labels": labels})
    teacher, student = _tiny(len(tokenizer), 0), _tiny(len(tokenizer), 1)
    train = ds.add_column(TEACHER_LOGITS, teacher_logits(teacher, tokenizer, ds, "train").tolist())

    def refuse(*args, **kwargs):
        raise AssertionError("the teacher ran live on the student's pieces")

    teacher.forward = refuse
    alpha = 0.3
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[], per_device_eval_batch_size=len(rows))
    trainer = DistillationTrainer(model=student, task=SequenceClassification(build_config({})), teacher=teacher,
                                  temperature=2.0, alpha=alpha, args=args, train_dataset=train,
                                  data_collator=DataCollatorWithPadding(tokenizer), processing_class=tokenizer)
    assert trainer.precomputed
    loss = trainer.evaluate(ds)["eval_loss"]
    with torch.no_grad():
        logits = student(**tokenizer.pad(dict(enc), return_tensors="pt")).logits
    expected = alpha * torch.nn.functional.cross_entropy(logits, torch.tensor(labels)).item()
    assert abs(loss - expected) < 1e-5


def test_grouping_by_length_cuts_the_padding_of_training_batches(tmp_path):
    """distill.group_by_length reaches the distillation trainer's sampler: batches of texts of
    similar length, so far fewer padded positions than random batches of the same rows; evaluation
    stays in the split's order."""
    with DATA.open() as fh:
        words = " ".join(r["review"] for r in csv.DictReader(fh)).split()
    # 320 texts of 1 to 24 words: transformers groups within megabatches of up to 50 batches
    texts = [" ".join(words[i: i + 1 + i % 24]) for i in range(320)]
    tokenizer = train_wordpiece_tokenizer(texts, 300)
    enc = tokenizer(texts, truncation=True, max_length=64)
    ds = Dataset.from_dict({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
                            "labels": [i % 3 for i in range(len(texts))]})
    teacher = _tiny(len(tokenizer), 0)

    def padded_positions(group: bool) -> int:
        cfg = build_config({"distill": {"group_by_length": group, "batch_size": 8}})
        args = training_arguments(cfg.distill, cfg.runtime, tmp_path, 0, SequenceClassification(cfg))
        assert args.group_by_length is group
        trainer = DistillationTrainer(model=_tiny(len(tokenizer), 1), task=SequenceClassification(cfg),
                                      teacher=teacher, temperature=2.0, alpha=0.3, args=args, train_dataset=ds, eval_dataset=ds,
                                      data_collator=DataCollatorWithPadding(tokenizer), processing_class=tokenizer)
        batches = list(trainer.get_train_dataloader())
        assert sum(len(b["input_ids"]) for b in batches) == len(texts)  # every row once
        # evaluation keeps the split's order (the task metrics read its rows): transformers would
        # length-sort it too
        predicted = trainer.predict(ds.select(range(40))).predictions
        with torch.no_grad():
            alone = trainer.model(**{k: torch.tensor([enc[k][37]]) for k in ("input_ids", "attention_mask")}).logits
        np.testing.assert_allclose(predicted[37], alone[0].numpy(), atol=1e-5)
        return sum(b["input_ids"].numel() for b in batches)

    grouped, shuffled = padded_positions(True), padded_positions(False)
    assert grouped < 0.7 * shuffled, (grouped, shuffled)
