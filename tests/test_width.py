"""Narrower students sliced from the teacher."""

from __future__ import annotations

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

from pipeline.stage import StageError
from stages._width import shrink_width


@pytest.fixture
def teacher():
    torch.manual_seed(0)
    return BertForSequenceClassification(BertConfig(
        vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, num_labels=3)).eval()


def test_full_width_is_the_identity(teacher):
    same = shrink_width(teacher, 32, 4, 64).eval()
    ids = torch.randint(0, 50, (2, 7))
    with torch.no_grad():
        assert torch.allclose(same(input_ids=ids).logits, teacher(input_ids=ids).logits, atol=1e-6)


def test_narrower_student_is_sliced_from_teacher_weights(teacher):
    student = shrink_width(teacher, 16, 2, 24).eval()
    cfg = student.config
    assert (cfg.hidden_size, cfg.num_attention_heads, cfg.intermediate_size) == (16, 2, 24)
    assert cfg.num_hidden_layers == 2
    # Every embedding column of the student is some column of the teacher's.
    t_emb, s_emb = teacher.bert.embeddings.word_embeddings.weight, student.bert.embeddings.word_embeddings.weight
    assert s_emb.shape == (50, 16)
    for col in range(16):
        assert any(torch.equal(s_emb[:, col], t_emb[:, j]) for j in range(32))
    # Each FFN neuron kept is a teacher neuron restricted to the kept hidden dims.
    s_ffn = student.bert.encoder.layer[0].intermediate.dense.weight
    assert s_ffn.shape == (24, 16)
    with torch.no_grad():
        assert student(input_ids=torch.randint(0, 50, (3, 5))).logits.shape == (3, 3)
    assert sum(p.numel() for p in student.parameters()) < sum(p.numel() for p in teacher.parameters()) / 2


def test_width_errors_name_the_fix(teacher):
    with pytest.raises(StageError, match="head size 8"):
        shrink_width(teacher, 20, 2, 24)  # 20 != 2 x 8
    with pytest.raises(StageError, match="exceed"):
        shrink_width(teacher, 48, 6, 24)
