"""Distillation losses as pure functions (unit-tested against closed forms)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def soft_target_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 * KL(softmax(teacher/T) || softmax(student/T)), averaged over the batch.

    The T^2 factor keeps the gradient scale independent of T (Hinton et al., 2015).
    """
    log_p_student = F.log_softmax(student_logits / temperature, dim=-1)
    log_p_teacher = F.log_softmax(teacher_logits.detach() / temperature, dim=-1)  # teacher is fixed
    kl = F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)
    return kl * temperature**2


IGNORE_LABEL = -100  # augmented / unlabelled inputs: the teacher's soft targets only


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    temperature: float,
    alpha: float,
) -> torch.Tensor:
    """alpha * CE(labels) + (1 - alpha) * T^2 * KL(teacher_T || student_T).

    CE averages over labelled rows only (label -100 = no hard label); KL covers every row."""
    labelled = labels != IGNORE_LABEL
    if labelled.all():
        hard = F.cross_entropy(student_logits, labels)
    elif labelled.any():
        hard = F.cross_entropy(student_logits[labelled], labels[labelled])
    else:
        hard = student_logits.sum() * 0.0
    soft = soft_target_kl(student_logits, teacher_logits, temperature)
    return alpha * hard + (1.0 - alpha) * soft


def uniform_layer_map(student_layers: int, teacher_layers: int) -> list[tuple[int, int]]:
    """TinyBERT's uniform mapping over hidden-state indices (0 = embeddings):
    student layer s learns from teacher layer s * teacher_layers / student_layers."""
    if student_layers < 1 or teacher_layers < student_layers:
        raise ValueError(f"cannot map {student_layers} student layers onto {teacher_layers} teacher layers")
    step = teacher_layers / student_layers
    return [(s, round(s * step)) for s in range(student_layers + 1)]


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of `values` (B, L, ...) over positions where mask (B, L) is 1."""
    mask = mask.to(values.dtype)
    while mask.dim() < values.dim():
        mask = mask.unsqueeze(-1)
    weight = mask.expand_as(values)
    return (values * weight).sum() / weight.sum().clamp_min(1.0)


def hidden_state_mse(
    student_hidden: tuple[torch.Tensor, ...] | list[torch.Tensor],
    teacher_hidden: tuple[torch.Tensor, ...] | list[torch.Tensor],
    layer_map: list[tuple[int, int]],
    attention_mask: torch.Tensor,
    projection: torch.nn.Module | None = None,
) -> torch.Tensor:
    """Mean over mapped (student, teacher) pairs of the per-element MSE between the (projected)
    student hidden states and the teacher's, counting only real (unpadded) tokens.

    `projection` maps the student width onto the teacher's when they differ (TinyBERT's W_h)."""
    losses = []
    for s, t in layer_map:
        hs = student_hidden[s]
        if projection is not None:
            hs = projection(hs)
        diff = (hs - teacher_hidden[t].detach()) ** 2
        losses.append(_masked_mean(diff, attention_mask))
    return torch.stack(losses).mean()


def attention_kl(
    student_attentions: tuple[torch.Tensor, ...] | list[torch.Tensor],
    teacher_attentions: tuple[torch.Tensor, ...] | list[torch.Tensor],
    layer_map: list[tuple[int, int]],
    attention_mask: torch.Tensor,
    eps: float = 1e-12,
) -> torch.Tensor:
    """KL(teacher || student) between attention distributions (B, H, L, L) of mapped layers,
    averaged over heads and real query positions (MiniLM's attention transfer). Layer indices here
    are 1-based like hidden states (attention of layer i is attentions[i - 1]); pairs with index 0
    (embeddings) are skipped. When head counts differ, distributions are averaged over heads first."""
    losses = []
    for s, t in layer_map:
        if s == 0 or t == 0:
            continue
        a_s, a_t = student_attentions[s - 1], teacher_attentions[t - 1].detach()
        if a_s.shape[1] != a_t.shape[1]:
            a_s, a_t = a_s.mean(1, keepdim=True), a_t.mean(1, keepdim=True)
        kl = (a_t * (torch.log(a_t + eps) - torch.log(a_s + eps))).sum(-1)  # (B, H, L)
        losses.append(_masked_mean(kl.transpose(1, 2), attention_mask))  # mask over queries
    if not losses:
        raise ValueError("attention_kl needs at least one mapped pair of encoder layers (index >= 1)")
    return torch.stack(losses).mean()


def token_distillation_loss(
    student_logits: torch.Tensor,
    teacher_word_logits: torch.Tensor,
    labels: torch.Tensor,
    word_start: torch.Tensor,
    temperature: float,
    alpha: float,
) -> torch.Tensor:
    """Token classification: alpha * CE(gold tags) + (1 - alpha) * T^2 * KL at word level.

    student_logits [B, L, C]; teacher_word_logits [N, C], one row per word-start position of
    `word_start` [B, L] (row-major order), so teacher and student may split words into different
    pieces; labels [B, L] with -100 where no tag is learned. CE averages over labelled positions,
    KL over words (batchmean)."""
    num_labels = student_logits.shape[-1]
    labelled = labels != IGNORE_LABEL
    if labelled.any():
        hard = F.cross_entropy(student_logits[labelled], labels[labelled])
    else:
        hard = student_logits.sum() * 0.0
    starts = word_start.bool()
    student_words = student_logits[starts]
    if student_words.shape[0] != teacher_word_logits.shape[0]:
        raise ValueError(f"{student_words.shape[0]} word starts but {teacher_word_logits.shape[0]} "
                         "teacher rows: the targets are not aligned with the words")
    if student_words.shape[0]:
        soft = soft_target_kl(student_words.reshape(-1, num_labels), teacher_word_logits, temperature)
    else:
        soft = student_logits.sum() * 0.0
    return alpha * hard + (1.0 - alpha) * soft


PAD_LOGIT = -1e4  # where a span cannot start or end (padding): out of every softmax


def span_logits(logits: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """[B, L, 2] start/end logits -> [B, 2, L] with padded positions pushed out of the softmax."""
    per_position = logits.transpose(1, 2)
    if attention_mask is None:
        return per_position
    return per_position.masked_fill(~attention_mask.bool().unsqueeze(1), PAD_LOGIT)


def span_cross_entropy(logits: torch.Tensor, positions: torch.Tensor,
                       attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Question answering's loss (as BertForQuestionAnswering's): the mean of the cross-entropies
    of the start and of the end position over the sequence; logits [B, L, 2], positions [B, 2]
    (0, the [CLS] token, where the answer is not in the window); padding never wins."""
    per_position = span_logits(logits, attention_mask)
    return F.cross_entropy(per_position.reshape(-1, per_position.shape[-1]), positions.reshape(-1))


def span_distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, positions: torch.Tensor,
                           attention_mask: torch.Tensor | None, temperature: float, alpha: float) -> torch.Tensor:
    """Question answering: alpha * CE(gold start and end) + (1 - alpha) * T^2 * KL of the start
    distribution and of the end distribution over the sequence (teacher || student), each averaged
    over the batch and the two averaged. Logits [B, L, 2] on the same positions (the teacher reads
    the student's pieces); padding is out of both distributions."""
    hard = span_cross_entropy(student_logits, positions, attention_mask)
    student = span_logits(student_logits, attention_mask)
    teacher = span_logits(teacher_logits.to(student.dtype), attention_mask)
    soft = soft_target_kl(student.reshape(-1, student.shape[-1]), teacher.reshape(-1, teacher.shape[-1]),
                          temperature)  # batchmean over B*2 rows: the mean of start and end
    return alpha * hard + (1.0 - alpha) * soft


def relevance_bce(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """A cross-encoder's loss (sentence-transformers' CrossEncoder default): binary cross-entropy
    of one relevance logit per pair against a 0/1 label (or a graded score in [0, 1])."""
    return F.binary_cross_entropy_with_logits(scores.reshape(-1), labels.reshape(-1).to(scores.dtype))


def margin_mse(student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor,
               groups: torch.Tensor) -> torch.Tensor:
    """Margin-MSE (Hofstaetter et al. 2020): for every pair of rows (i, j) of one query (same
    `groups` value) with labels[i] > labels[j], the squared difference between the student's score
    margin s_i - s_j and the teacher's t_i - t_j, averaged over those pairs; 0 (with a gradient
    path) when the batch holds no such pair. Scores [B] or [B, 1]."""
    s, t = student.reshape(-1), teacher.reshape(-1).to(student.dtype).detach()
    y, g = labels.reshape(-1), groups.reshape(-1)
    pairs = (g[:, None] == g[None, :]) & (y[:, None] > y[None, :])
    if not pairs.any():
        return s.sum() * 0.0
    margins_s = s[:, None] - s[None, :]
    margins_t = t[:, None] - t[None, :]
    return ((margins_s - margins_t) ** 2)[pairs].mean()


def score_distillation_loss(student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor,
                            groups: torch.Tensor | None, alpha: float, kind: str = "mse") -> torch.Tensor:
    """Re-ranking: alpha * BCE(labels) + (1 - alpha) * (MSE of the scores, or Margin-MSE over a
    query's relevant / irrelevant rows)."""
    hard = relevance_bce(student, labels)
    if kind == "margin-mse":
        if groups is None:
            raise ValueError("margin-mse needs each row's query group")
        soft = margin_mse(student, teacher, labels, groups)
    else:
        soft = F.mse_loss(student.reshape(-1), teacher.reshape(-1).to(student.dtype).detach())
    return alpha * hard + (1.0 - alpha) * soft
