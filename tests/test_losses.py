"""Distillation losses against closed forms computed by hand with numpy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from stages._losses import distillation_loss, soft_target_kl


def np_softmax(x: np.ndarray, t: float = 1.0) -> np.ndarray:
    z = np.asarray(x, dtype=np.float64) / t
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def np_kl(p: np.ndarray, q: np.ndarray) -> float:
    """Mean over rows of sum_i p_i log(p_i / q_i)."""
    return float(np.mean(np.sum(p * (np.log(p) - np.log(q)), axis=-1)))


STUDENT = [[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]]
TEACHER = [[2.0, 0.0, 1.0], [1.0, 1.0, -2.0]]
LABELS = [1, 2]


def t(x, **kw) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float64, **kw)


def test_identical_logits_kl_is_zero() -> None:
    logits = t(STUDENT)
    for temp in (0.5, 1.0, 4.0):
        assert soft_target_kl(logits, logits.clone(), temp).item() == pytest.approx(0.0, abs=1e-12)
    labels = torch.tensor(LABELS)
    for alpha in (0.0, 0.3, 1.0):
        loss = distillation_loss(logits, logits.clone(), labels, 2.0, alpha)
        assert loss.item() == pytest.approx(alpha * F.cross_entropy(logits, labels).item(), rel=1e-12)


def test_alpha_one_is_cross_entropy() -> None:
    s, te, y = t(STUDENT), t(TEACHER), torch.tensor(LABELS)
    loss = distillation_loss(s, te, y, temperature=3.0, alpha=1.0)
    assert loss.item() == pytest.approx(F.cross_entropy(s, y).item(), rel=1e-12)
    # And the cross-entropy itself, by hand.
    p = np_softmax(STUDENT)
    ce = -np.mean(np.log(p[np.arange(2), LABELS]))
    assert loss.item() == pytest.approx(ce, rel=1e-10)


def test_alpha_zero_t_one_is_kl_teacher_student() -> None:
    s, te, y = t(STUDENT), t(TEACHER), torch.tensor(LABELS)
    loss = distillation_loss(s, te, y, temperature=1.0, alpha=0.0)
    expected = np_kl(np_softmax(TEACHER), np_softmax(STUDENT))
    assert expected > 0.1  # the example is not degenerate
    assert loss.item() == pytest.approx(expected, rel=1e-10)


def test_hand_computed_single_example() -> None:
    # Two classes, worked out on paper: p_t = softmax([0, ln 3]) = [1/4, 3/4], p_s = [1/2, 1/2].
    s = t([[0.0, 0.0]])
    te = t([[0.0, float(np.log(3.0))]])
    expected = 0.25 * np.log(0.25 / 0.5) + 0.75 * np.log(0.75 / 0.5)
    assert soft_target_kl(s, te, 1.0).item() == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("temp", [0.5, 2.0, 4.0, 10.0])
def test_temperature_squared_scaling(temp: float) -> None:
    s, te = t(STUDENT), t(TEACHER)
    raw_kl = np_kl(np_softmax(TEACHER, temp), np_softmax(STUDENT, temp))
    got = soft_target_kl(s, te, temp).item()
    assert got == pytest.approx(temp**2 * raw_kl, rel=1e-10)
    assert got / raw_kl == pytest.approx(temp**2, rel=1e-10)


@pytest.mark.parametrize("temp", [1.0, 2.0])
@pytest.mark.parametrize("alpha", [0.0, 0.25, 0.5, 0.9])
def test_mixture_closed_form(temp: float, alpha: float) -> None:
    s, te, y = t(STUDENT), t(TEACHER), torch.tensor(LABELS)
    p = np_softmax(STUDENT)
    ce = -np.mean(np.log(p[np.arange(2), LABELS]))
    kd = temp**2 * np_kl(np_softmax(TEACHER, temp), np_softmax(STUDENT, temp))
    loss = distillation_loss(s, te, y, temp, alpha)
    assert loss.item() == pytest.approx(alpha * ce + (1 - alpha) * kd, rel=1e-10)


def test_batchmean_is_mean_over_examples() -> None:
    s, te = t(STUDENT), t(TEACHER)
    per_row = [soft_target_kl(s[i : i + 1], te[i : i + 1], 2.0).item() for i in range(2)]
    assert soft_target_kl(s, te, 2.0).item() == pytest.approx(np.mean(per_row), rel=1e-12)


def test_kl_non_negative_and_asymmetric() -> None:
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        a = torch.randn(8, 5, generator=gen, dtype=torch.float64) * 3
        b = torch.randn(8, 5, generator=gen, dtype=torch.float64) * 3
        assert soft_target_kl(a, b, 2.0).item() >= 0.0
    s, te = t(STUDENT), t(TEACHER)
    forward = soft_target_kl(s, te, 1.0).item()
    backward = soft_target_kl(te, s, 1.0).item()
    assert backward == pytest.approx(np_kl(np_softmax(STUDENT), np_softmax(TEACHER)), rel=1e-10)
    assert abs(forward - backward) > 1e-3


def test_float32_batch_shapes() -> None:
    s = torch.randn(16, 3)
    te = torch.randn(16, 3)
    y = torch.randint(0, 3, (16,))
    loss = distillation_loss(s, te, y, 2.0, 0.5)
    assert loss.shape == ()
    assert loss.dtype == torch.float32
    assert torch.isfinite(loss)


def test_gradient_reaches_student() -> None:
    s = t(STUDENT, requires_grad=True)
    with torch.no_grad():  # how DistillationTrainer computes teacher logits
        te = t(TEACHER)
    loss = distillation_loss(s, te, torch.tensor(LABELS), 2.0, 0.5)
    loss.backward()
    assert s.grad is not None
    assert s.grad.abs().sum().item() > 0
    # Softmax-based losses give each row's gradient zero sum.
    assert torch.allclose(s.grad.sum(dim=-1), torch.zeros(2, dtype=torch.float64), atol=1e-12)
    assert te.grad is None


def test_kd_gradient_closed_form() -> None:
    # d/ds of T^2 KL(p_t || softmax(s/T)) averaged over B rows = T (p_s - p_t) / B.
    temp = 2.0
    s = t(STUDENT, requires_grad=True)
    soft_target_kl(s, t(TEACHER), temp).backward()
    expected = temp * (np_softmax(STUDENT, temp) - np_softmax(TEACHER, temp)) / 2
    np.testing.assert_allclose(s.grad.numpy(), expected, rtol=1e-10, atol=1e-12)


def test_gradient_flows_to_student_only() -> None:
    s = t(STUDENT, requires_grad=True)
    te = t(TEACHER, requires_grad=True)
    distillation_loss(s, te, torch.tensor(LABELS), 2.0, 0.5).backward()
    assert s.grad is not None and s.grad.abs().sum().item() > 0
    assert te.grad is None or te.grad.abs().sum().item() == 0.0


# --- intermediate-layer losses (TinyBERT / MiniLM) ------------------------------------------
from stages._losses import attention_kl, hidden_state_mse, uniform_layer_map  # noqa: E402


def test_uniform_layer_map_matches_tinybert():
    assert uniform_layer_map(3, 6) == [(0, 0), (1, 2), (2, 4), (3, 6)]
    assert uniform_layer_map(4, 12) == [(0, 0), (1, 3), (2, 6), (3, 9), (4, 12)]
    with pytest.raises(ValueError):
        uniform_layer_map(4, 2)


def test_hidden_mse_closed_form_and_mask():
    teacher = [torch.zeros(1, 3, 2), torch.zeros(1, 3, 2)]
    student = [torch.zeros(1, 3, 2), torch.tensor([[[1.0, 1.0], [2.0, 2.0], [9.0, 9.0]]])]
    mask = torch.tensor([[1, 1, 0]])  # the third token is padding: its error must not count
    # Pair (1, 1): squared errors 1,1,4,4 over 4 real elements -> 2.5; pair (0, 0) -> 0. Mean 1.25.
    got = hidden_state_mse(student, teacher, [(0, 0), (1, 1)], mask)
    assert got.item() == pytest.approx(1.25)
    assert hidden_state_mse(teacher, teacher, [(1, 1)], mask).item() == 0.0


def test_hidden_mse_projection_bridges_widths():
    torch.manual_seed(0)
    proj = torch.nn.Linear(2, 4, bias=False)
    student = [torch.randn(2, 3, 2)]
    teacher = [proj(student[0]).detach()]  # the teacher is exactly the projected student
    assert hidden_state_mse(student, teacher, [(0, 0)], torch.ones(2, 3), proj).item() == pytest.approx(0, abs=1e-12)
    with pytest.raises(RuntimeError):
        hidden_state_mse(student, teacher, [(0, 0)], torch.ones(2, 3))  # widths differ, no projection


def test_attention_kl_closed_form():
    length = 4
    uniform = torch.full((1, 1, length, length), 1 / length)
    one_hot = torch.zeros(1, 1, length, length)
    one_hot[..., 0] = 1.0
    mask = torch.ones(1, length)
    # KL(one-hot || uniform) = log(L); KL(p || p) = 0; skipped embedding pairs do not count.
    assert attention_kl([uniform], [one_hot], [(0, 0), (1, 1)], mask).item() == pytest.approx(math.log(length), rel=1e-5)
    assert attention_kl([uniform], [uniform], [(1, 1)], mask).item() == pytest.approx(0, abs=1e-6)
    with pytest.raises(ValueError):
        attention_kl([uniform], [uniform], [(0, 0)], mask)


def test_attention_kl_averages_heads_when_counts_differ():
    torch.manual_seed(0)
    teacher = torch.softmax(torch.randn(2, 4, 3, 3), -1)
    student = teacher.mean(1, keepdim=True).expand(2, 2, 3, 3)  # 2 heads that equal the teacher mean
    got = attention_kl([student], [teacher], [(1, 1)], torch.ones(2, 3))
    assert got.item() == pytest.approx(0, abs=1e-6)


def test_intermediate_losses_do_not_train_the_teacher():
    teacher_h = torch.randn(1, 2, 3, requires_grad=True)
    student_h = torch.randn(1, 2, 3, requires_grad=True)
    hidden_state_mse([student_h], [teacher_h], [(0, 0)], torch.ones(1, 2)).backward()
    assert teacher_h.grad is None and student_h.grad is not None
