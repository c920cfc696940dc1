"""Sentence embeddings as one PyTorch module: BERT, pooling, an optional linear projection and L2
normalisation.

sentence-transformers keeps pooling and normalisation in separate modules that run after the
transformer; exported alone, the transformer returns token vectors and the pooling has to be
re-done in Python (the trap users of exported sentence-transformers models hit). Here the three
are one `PreTrainedModel` whose `logits` are the finished embedding, so the Trainer, the
distillation loop, the ONNX export (pooling and normalisation inside the graph) and the benchmark
treat it like any other head. Models are read with sentence-transformers (its modules.json says
the pooling and whether vectors are normalised) and saved so sentence-transformers can read them
back (the same module files beside the weights).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import BertConfig, BertModel, BertPreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput

from pipeline.stage import StageError

POOLINGS = ("mean", "cls")
ST_MODULES = "modules.json"


def pool(last_hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: str, normalize: bool) -> torch.Tensor:
    """[batch, seq, hidden] -> [batch, hidden]: the masked mean (padding excluded) or [CLS],
    optionally scaled to unit length (then a dot product is the cosine)."""
    if pooling == "cls":
        vectors = last_hidden[:, 0]
    else:
        mask = attention_mask.unsqueeze(-1).to(last_hidden.dtype)
        vectors = (last_hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
    return torch.nn.functional.normalize(vectors, p=2, dim=-1) if normalize else vectors


class SentenceEmbeddingModel(BertPreTrainedModel):
    """BERT -> pooling -> (linear projection) -> (L2 normalisation); `logits` is the sentence
    embedding. config.sentence_pooling ("mean" | "cls"), config.sentence_projection (output width,
    or absent: none; sentence-transformers' Dense with no activation) and config.sentence_normalize
    say how. A narrower student keeps its teacher's output space through the projection."""

    def __init__(self, config: BertConfig):
        super().__init__(config)
        self.bert = BertModel(config, add_pooling_layer=False)
        width = getattr(config, "sentence_projection", None)
        self.projection = torch.nn.Linear(config.hidden_size, width) if width else None
        self.post_init()

    def set_projection(self, weight: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        """Pooled vectors -> weight @ v + bias ([out, hidden]); the output width becomes `out`."""
        out, hidden = weight.shape
        if hidden != self.config.hidden_size:
            raise StageError(f"a projection from {hidden} dimensions does not fit a {self.config.hidden_size}-wide model")
        self.config.sentence_projection = out
        self.projection = torch.nn.Linear(hidden, out).to(weight.device)
        with torch.no_grad():
            self.projection.weight.copy_(weight)
            self.projection.bias.copy_(torch.zeros(out) if bias is None else bias)

    def remove_projection(self) -> None:
        """Embed with the pooled vectors themselves (the model's own width)."""
        self.config.sentence_projection = None
        self.projection = None

    @property
    def output_dim(self) -> int:
        return self.projection.out_features if self.projection is not None else self.config.hidden_size

    @property
    def pooling(self) -> str:
        return getattr(self.config, "sentence_pooling", "mean")

    @property
    def normalize(self) -> bool:
        return bool(getattr(self.config, "sentence_normalize", True))

    def embed(self, encoded, attention_mask: torch.Tensor) -> torch.Tensor:
        if self.projection is None:
            return pool(encoded.last_hidden_state, attention_mask, self.pooling, self.normalize)
        vectors = self.projection(pool(encoded.last_hidden_state, attention_mask, self.pooling, normalize=False))
        return torch.nn.functional.normalize(vectors, p=2, dim=-1) if self.normalize else vectors

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, labels=None,
                output_hidden_states=None, output_attentions=None, return_dict=None, **_):
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        encoded = self.bert(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                            output_hidden_states=output_hidden_states, output_attentions=output_attentions,
                            return_dict=True)
        return SequenceClassifierOutput(logits=self.embed(encoded, attention_mask),
                                        hidden_states=encoded.hidden_states, attentions=encoded.attentions)


def sentence_head(model: SentenceEmbeddingModel, encoded, attention_mask) -> torch.Tensor:
    """The export wrapper's head (stages._multi_output): pooling + normalisation in the graph."""
    return model.embed(encoded, attention_mask)


@dataclass(frozen=True)
class STLayout:
    """What a sentence-transformers directory puts after its transformer."""

    pooling: str
    normalize: bool
    dense: tuple[torch.Tensor, torch.Tensor | None] | None = None  # (weight, bias) of a Dense, no activation


def _st_modules():
    try:  # sentence-transformers >= 5.6; the old path still works, with a deprecation warning
        from sentence_transformers.sentence_transformer.modules import Dense, Normalize, Pooling
    except ImportError:
        from sentence_transformers.models import Dense, Normalize, Pooling
    return Dense, Normalize, Pooling


def st_settings(path: Path) -> STLayout | None:
    """Pooling, projection and normalisation of a sentence-transformers directory, read with
    sentence-transformers; None for a plain transformers directory."""
    path = Path(path)
    if not (path / ST_MODULES).is_file():
        return None
    from sentence_transformers import SentenceTransformer

    Dense, Normalize, Pooling = _st_modules()
    st = SentenceTransformer(str(path), device="cpu")
    modules = list(st)[1:]  # after the transformer
    kinds = tuple("pooling" if isinstance(m, Pooling) else "dense" if isinstance(m, Dense)
                  else "normalize" if isinstance(m, Normalize) else type(m).__name__ for m in modules)
    if kinds not in {("pooling",), ("pooling", "normalize"), ("pooling", "dense"), ("pooling", "dense", "normalize")}:
        raise StageError(f"{path}: sentence-transformers modules transformer -> {' -> '.join(kinds)}; bertpress "
                         "reads transformer -> pooling -> (one Dense, no activation) -> (normalize)")
    poolers = [m for m in modules if isinstance(m, Pooling)]
    denses = [m for m in modules if isinstance(m, Dense)]
    mode = poolers[0].pooling_mode
    mode = mode[0] if isinstance(mode, list | tuple) and len(mode) == 1 else mode
    pooling = {"mean": "mean", "cls": "cls"}.get(mode) if isinstance(mode, str) else None
    if pooling is None:
        raise StageError(f"{path}: pooling {mode!r} is not supported; use mean or cls pooling")
    dense = None
    if denses:
        if not isinstance(denses[0].activation_function, torch.nn.Identity):
            raise StageError(f"{path}: its Dense module applies {type(denses[0].activation_function).__name__}; "
                             "bertpress reads a Dense without activation (torch.nn.Identity)")
        linear = denses[0].linear
        dense = (linear.weight.detach().clone(), None if linear.bias is None else linear.bias.detach().clone())
    return STLayout(pooling, any(isinstance(m, Normalize) for m in modules), dense)


def load_sentence_model(path: Path, pooling: str | None = None, normalize: bool | None = None,
                        **kwargs) -> SentenceEmbeddingModel:
    """A sentence-transformers directory (its pooling and normalisation), a directory saved by
    `save_sentence_model`, or a plain BERT (mean pooling, normalised unless told otherwise)."""
    path = Path(path)
    found = st_settings(path)
    model = SentenceEmbeddingModel.from_pretrained(str(path), **kwargs)
    if found is not None and not hasattr(model.config, "sentence_pooling"):  # a foreign ST directory
        model.config.sentence_pooling, model.config.sentence_normalize = found.pooling, found.normalize
        if found.dense is not None:
            model.set_projection(*found.dense)
    model.config.sentence_pooling = pooling or getattr(model.config, "sentence_pooling", "mean")
    if normalize is not None or not hasattr(model.config, "sentence_normalize"):
        model.config.sentence_normalize = True if normalize is None else normalize
    return model


def write_st_modules(model: SentenceEmbeddingModel, out: Path, max_length: int) -> None:
    """The sentence-transformers module files, so `SentenceTransformer(out)` loads the same model."""
    out = Path(out)
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]

    def add(kind: str) -> Path:  # the next module's folder, numbered as sentence-transformers numbers them
        folder = f"{len(modules)}_{kind}"
        modules.append({"idx": len(modules), "name": str(len(modules)), "path": folder,
                        "type": f"sentence_transformers.models.{kind}"})
        (out / folder).mkdir(exist_ok=True)
        return out / folder

    if model.projection is not None:  # written by sentence-transformers' own Dense
        Dense, _, _ = _st_modules()
        linear = model.projection
        Dense(linear.in_features, linear.out_features, activation_function=torch.nn.Identity(),
              init_weight=linear.weight.detach().cpu().clone(),
              init_bias=linear.bias.detach().cpu().clone()).save(str(add("Dense")))
    if model.normalize:
        add("Normalize")
    (out / ST_MODULES).write_text(json.dumps(modules, indent=2))
    (out / "1_Pooling").mkdir(exist_ok=True)
    (out / "1_Pooling" / "config.json").write_text(json.dumps({
        "word_embedding_dimension": model.config.hidden_size,
        "pooling_mode_cls_token": model.pooling == "cls", "pooling_mode_mean_tokens": model.pooling == "mean",
        "pooling_mode_max_tokens": False, "pooling_mode_mean_sqrt_len_tokens": False}, indent=2))
    (out / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": max_length,
                                                               "do_lower_case": False}, indent=2))
