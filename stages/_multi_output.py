"""Embeddings and multi-output ONNX export from a PyTorch BERT with a task head (training side).

The same four embeddings as `bertpress.runtime`, computed in PyTorch, so the two can be checked
against each other: the pooled output ([CLS] through the pooler), attention-masked mean pooling of
the sequence output, the per-token sequence output, and every encoder layer's output.

Why a hand-written wrapper instead of optimum: optimum exports one task head per model (logits for
text-classification, last_hidden_state for feature-extraction) and has no head that returns the
head's logits together with the pooled output and all hidden states. The wrapper is the model's
own forward pass (encoder, then the task's head) with those tensors returned, exported by torch.onnx.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from bertpress.embeddings import EMBEDDING_OUTPUTS, mean_pool

ONNX_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def classifier_head(model: nn.Module, encoded, attention_mask=None) -> torch.Tensor:
    """A *ForSequenceClassification's head: [CLS] through the pooler, dropout, dense."""
    return model.classifier(model.dropout(encoded.pooler_output))


class ModelWithEmbeddings(nn.Module):
    """A BERT with a task head whose forward returns logits plus the requested embeddings.

    `head(model, encoded, attention_mask)` computes the logits from the encoder output (the task's
    head; pooling heads need the mask).
    Output order: logits, then `outputs` in EMBEDDING_OUTPUTS order. `hidden_states` is stacked
    layer-first, [num_layers + 1, batch, seq, hidden] (index 0 = the embedding layer, as in
    transformers' tuple), so hidden_states[-1] is the sequence output.
    """

    def __init__(self, model: nn.Module, outputs: Sequence[str],
                 head: Callable[..., torch.Tensor] = classifier_head):
        super().__init__()
        unknown = set(outputs) - set(EMBEDDING_OUTPUTS)
        if unknown:
            raise ValueError(f"unknown embedding outputs {sorted(unknown)}; allowed: {EMBEDDING_OUTPUTS}")
        self.model = model
        self.head = head
        self.outputs = [name for name in EMBEDDING_OUTPUTS if name in outputs]

    def forward(self, input_ids, attention_mask, token_type_ids):
        encoded = self.model.bert(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
            output_hidden_states="hidden_states" in self.outputs, return_dict=True,
        )
        logits = self.head(self.model, encoded, attention_mask)
        tensors = {"pooled": encoded.pooler_output, "sequence": encoded.last_hidden_state}
        if "hidden_states" in self.outputs:
            tensors["hidden_states"] = torch.stack(encoded.hidden_states)
        return (logits, *(tensors[name] for name in self.outputs))


def export_with_embeddings(model: nn.Module, path: Path, outputs: Sequence[str], opset: int,
                           head: Callable[..., torch.Tensor] = classifier_head,
                           per_token_logits: bool = False) -> Path:
    """Export the model with logits + embedding outputs, batch and sequence axes dynamic."""
    wrapper = ModelWithEmbeddings(model.eval(), outputs, head).eval()
    example = {
        "input_ids": torch.ones(2, 8, dtype=torch.long),
        "attention_mask": torch.ones(2, 8, dtype=torch.long),
        "token_type_ids": torch.zeros(2, 8, dtype=torch.long),
    }
    names = ["logits", *wrapper.outputs]
    axes = {name: {0: "batch_size", 1: "sequence_length"} for name in ONNX_INPUTS}
    axes["logits"] = {0: "batch_size", 1: "sequence_length"} if per_token_logits else {0: "batch_size"}
    axes["pooled"] = {0: "batch_size"}
    axes["sequence"] = {0: "batch_size", 1: "sequence_length"}
    axes["hidden_states"] = {1: "batch_size", 2: "sequence_length"}
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        # The TorchScript exporter: its graphs are the ones onnxruntime's BERT fusions and INT8
        # quantizer are known to handle (optimum uses it too).
        torch.onnx.export(
            wrapper, (example["input_ids"], example["attention_mask"], example["token_type_ids"]),
            str(path), input_names=list(ONNX_INPUTS), output_names=names,
            dynamic_axes={name: axes[name] for name in (*ONNX_INPUTS, *names)},
            opset_version=opset, do_constant_folding=True, dynamo=False,
        )
    return path


@torch.no_grad()
def embed(
    model: nn.Module,
    tokenizer,
    texts: Sequence[str],
    *,
    max_length: int,
    batch_size: int = 32,
) -> dict[str, list[np.ndarray] | np.ndarray]:
    """Every embedding for `texts` from a PyTorch BERT (a *ForSequenceClassification or BertModel).

    Returns {"pooled": [n, H], "mean": [n, H], "sequence": n x [len_i, H],
    "hidden_states": n x [layers + 1, len_i, H]}; per-token outputs are cut to each text's tokens.
    """
    bert = getattr(model, "bert", model).eval()
    result: dict[str, list] = {"pooled": [], "mean": [], "sequence": [], "hidden_states": []}
    for start in range(0, len(texts), batch_size):
        batch = tokenizer(list(texts[start:start + batch_size]), truncation=True, max_length=max_length,
                          padding=True, return_tensors="pt")
        out = bert(**batch, output_hidden_states=True, return_dict=True)
        mask = batch["attention_mask"].numpy()
        sequence = out.last_hidden_state.numpy()
        layers = torch.stack(out.hidden_states).numpy()
        result["pooled"].extend(out.pooler_output.numpy())
        result["mean"].extend(mean_pool(sequence, mask))
        for i, length in enumerate(mask.sum(axis=1)):
            result["sequence"].append(sequence[i, :length])
            result["hidden_states"].append(layers[:, i, :length])
    return {
        "pooled": np.stack(result["pooled"]),
        "mean": np.stack(result["mean"]),
        "sequence": result["sequence"],
        "hidden_states": result["hidden_states"],
    }
