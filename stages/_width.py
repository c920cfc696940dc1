"""Narrower students: slice a BERT's width (hidden size, heads, FFN neurons) keeping the most
important parts of the teacher, so distillation starts from teacher weights rather than noise.

Importance, per the structured-pruning literature (Michel et al. 2019 for heads; FastFormers):
- residual dimensions: the summed |gain| of every LayerNorm, one choice shared by all layers so the
  residual stream stays aligned;
- heads, per layer: the norm of the head's query/key/value rows and output-projection columns;
- FFN neurons, per layer: |input row| * |output column|.
LayerNorm then normalises over fewer dimensions, which distillation repairs.
"""

from __future__ import annotations

import copy

import torch
from transformers import PreTrainedModel

from pipeline.stage import StageError
from stages._sentence import SentenceEmbeddingModel


def _top(scores: torch.Tensor, k: int) -> torch.Tensor:
    return scores.topk(k).indices.sort().values


def shrink_width(model: PreTrainedModel, hidden: int, heads: int, intermediate: int) -> PreTrainedModel:
    cfg = model.config
    if cfg.model_type != "bert":
        raise StageError(f"width reduction supports BERT models; the teacher is {cfg.model_type!r}")
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    if hidden != heads * head_dim:
        raise StageError(
            f"distill.student: hidden_size {hidden} must equal num_attention_heads {heads} x the "
            f"teacher's head size {head_dim} (e.g. hidden_size {heads * head_dim})"
        )
    if hidden > cfg.hidden_size or heads > cfg.num_attention_heads or intermediate > cfg.intermediate_size:
        raise StageError("distill.student width must not exceed the teacher's")
    bert = model.base_model
    layers = bert.encoder.layer
    norms = [bert.embeddings.LayerNorm] + [m for layer in layers
                                           for m in (layer.attention.output.LayerNorm, layer.output.LayerNorm)]
    keep_h = _top(sum(n.weight.detach().abs() for n in norms), hidden)

    new_cfg = copy.deepcopy(cfg)
    new_cfg.hidden_size, new_cfg.num_attention_heads, new_cfg.intermediate_size = hidden, heads, intermediate
    # A sentence embedding keeps its teacher's output space (indexes, cosine to the teacher): a
    # projection maps the kept dimensions back, starting as the selection that dropped the others.
    sentence = isinstance(model, SentenceEmbeddingModel)
    if sentence and model.projection is None and hidden != cfg.hidden_size:
        new_cfg.sentence_projection = cfg.hidden_size
    student = type(model)(new_cfg)
    sd = model.state_dict()
    new: dict[str, torch.Tensor] = {}

    def put(name: str, tensor: torch.Tensor) -> None:
        new[name] = tensor.clone()

    prefix = model.base_model_prefix + "."
    for name in ("word_embeddings", "position_embeddings", "token_type_embeddings"):
        key = f"{prefix}embeddings.{name}.weight"
        put(key, sd[key][:, keep_h])
    for part in ("weight", "bias"):
        key = f"{prefix}embeddings.LayerNorm.{part}"
        put(key, sd[key][keep_h])
    for i, layer in enumerate(layers):
        p = f"{prefix}encoder.layer.{i}."
        q, k, v = (sd[f"{p}attention.self.{n}.weight"] for n in ("query", "key", "value"))
        o = sd[f"{p}attention.output.dense.weight"]
        per_head = torch.stack([
            torch.cat([q[h * head_dim:(h + 1) * head_dim].flatten(), k[h * head_dim:(h + 1) * head_dim].flatten(),
                       v[h * head_dim:(h + 1) * head_dim].flatten(), o[:, h * head_dim:(h + 1) * head_dim].flatten()]).norm()
            for h in range(cfg.num_attention_heads)])
        keep_a = torch.cat([torch.arange(h * head_dim, (h + 1) * head_dim) for h in _top(per_head, heads)])
        for n in ("query", "key", "value"):
            put(f"{p}attention.self.{n}.weight", sd[f"{p}attention.self.{n}.weight"][keep_a][:, keep_h])
            put(f"{p}attention.self.{n}.bias", sd[f"{p}attention.self.{n}.bias"][keep_a])
        put(f"{p}attention.output.dense.weight", o[keep_h][:, keep_a])
        put(f"{p}attention.output.dense.bias", sd[f"{p}attention.output.dense.bias"][keep_h])
        w_in, w_out = sd[f"{p}intermediate.dense.weight"], sd[f"{p}output.dense.weight"]
        keep_i = _top(w_in.norm(dim=1) * w_out.norm(dim=0), intermediate)
        put(f"{p}intermediate.dense.weight", w_in[keep_i][:, keep_h])
        put(f"{p}intermediate.dense.bias", sd[f"{p}intermediate.dense.bias"][keep_i])
        put(f"{p}output.dense.weight", w_out[keep_h][:, keep_i])
        put(f"{p}output.dense.bias", sd[f"{p}output.dense.bias"][keep_h])
        for ln in ("attention.output.LayerNorm", "output.LayerNorm"):
            for part in ("weight", "bias"):
                put(f"{p}{ln}.{part}", sd[f"{p}{ln}.{part}"][keep_h])
        del layer
    if f"{prefix}pooler.dense.weight" in sd:
        put(f"{prefix}pooler.dense.weight", sd[f"{prefix}pooler.dense.weight"][keep_h][:, keep_h])
        put(f"{prefix}pooler.dense.bias", sd[f"{prefix}pooler.dense.bias"][keep_h])
    for head in ("classifier", "qa_outputs"):  # a linear head on the (narrowed) hidden states
        if f"{head}.weight" in sd:
            put(f"{head}.weight", sd[f"{head}.weight"][:, keep_h])
            put(f"{head}.bias", sd[f"{head}.bias"])
    if sentence and student.projection is not None:
        weight = sd.get("projection.weight", torch.eye(cfg.hidden_size))
        put("projection.weight", weight[:, keep_h])
        put("projection.bias", sd.get("projection.bias", torch.zeros(weight.shape[0])))
    missing, unexpected = student.load_state_dict(new, strict=False)
    leftover = [m for m in missing if not m.endswith("position_ids")]
    if leftover or unexpected:
        raise StageError(f"width reduction left weights unset {leftover} or unused {unexpected}")
    return student
