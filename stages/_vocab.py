"""Vocabulary trimming: keep only the embedding rows of tokens the domain uses.

BERT's 30k-token embedding matrix is most of a small student's size (all-MiniLM-L6: 11.7M of 22.7M
parameters). A domain uses a fraction of it. We keep the tokens that the tokenizer produces on the
domain texts, the special tokens and (optionally) every single-character piece so unseen words still
tokenize rather than become [UNK]; then rewrite the tokenizer's vocabulary with the new ids and slice
the embedding matrix to match.

WordPiece is greedy longest-match-first, so a reduced vocabulary that still contains every token
the full one produced for a text yields exactly the same pieces for that text: predictions on the
domain texts are unchanged, which `verify_trim` proves on real data.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
from tokenizers import Tokenizer
from transformers import PreTrainedModel, PreTrainedTokenizerFast

from pipeline.stage import StageError


@dataclass
class TrimResult:
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerFast
    kept_ids: list[int]  # old id of each new id
    original_size: int


def used_token_ids(tokenizer: PreTrainedTokenizerFast, texts: Iterable[str], batch: int = 1000) -> set[int]:
    used: set[int] = set(tokenizer.all_special_ids)
    buffer: list[str] = []
    for text in texts:
        buffer.append(text)
        if len(buffer) == batch:
            for ids in tokenizer(buffer, add_special_tokens=False)["input_ids"]:
                used.update(ids)
            buffer = []
    if buffer:
        for ids in tokenizer(buffer, add_special_tokens=False)["input_ids"]:
            used.update(ids)
    return used


def _remap_post_processor(proc: dict | None, new_id: dict[str, int]) -> None:
    if proc is None:
        return
    kind = proc.get("type")
    if kind == "TemplateProcessing":
        for spec in proc["special_tokens"].values():
            spec["ids"] = [new_id[t] for t in spec["tokens"]]
    elif kind in ("BertProcessing", "RobertaProcessing"):
        for key in ("sep", "cls"):
            proc[key] = [proc[key][0], new_id[proc[key][0]]]
    elif kind == "Sequence":
        for inner in proc["processors"]:
            _remap_post_processor(inner, new_id)
    elif kind not in ("ByteLevel",):
        raise StageError(f"vocabulary trimming cannot remap a {kind} post-processor")


def trim_tokenizer(tokenizer: PreTrainedTokenizerFast, kept_ids: list[int]) -> PreTrainedTokenizerFast:
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    if spec["model"].get("type") != "WordPiece":
        raise StageError(
            f"vocabulary trimming supports WordPiece (BERT-family) tokenizers; this one is "
            f"{spec['model'].get('type')}. Set distill.trim_vocab.enabled=false."
        )
    old = {i: t for t, i in spec["model"]["vocab"].items()}
    new_id = {old[i]: n for n, i in enumerate(kept_ids)}
    spec["model"]["vocab"] = new_id
    for added in spec.get("added_tokens", []):
        added["id"] = new_id[added["content"]]
    _remap_post_processor(spec.get("post_processor"), new_id)
    if spec.get("padding"):
        spec["padding"]["pad_id"] = new_id[spec["padding"]["pad_token"]]
    backend = Tokenizer.from_str(json.dumps(spec))
    kwargs = {k: v for k, v in tokenizer.init_kwargs.items()
              if k.endswith("_token") or k in ("do_lower_case", "model_max_length", "clean_up_tokenization_spaces")}
    return type(tokenizer)(tokenizer_object=backend, **kwargs)


def trim_vocabulary(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast, texts: Iterable[str], keep_characters: bool = True
) -> TrimResult:
    vocab = tokenizer.get_vocab()
    kept = used_token_ids(tokenizer, texts)
    if keep_characters:
        kept |= {i for t, i in vocab.items() if len(t) == 1 or (t.startswith("##") and len(t) == 3)}
    kept_ids = sorted(kept)
    new_tokenizer = trim_tokenizer(tokenizer, kept_ids)

    old_embeddings = model.get_input_embeddings()
    pad = new_tokenizer.pad_token_id
    embeddings = torch.nn.Embedding(len(kept_ids), old_embeddings.embedding_dim, padding_idx=pad)
    embeddings.weight.data = old_embeddings.weight.data[torch.tensor(kept_ids)].clone()
    model.set_input_embeddings(embeddings)
    model.config.vocab_size = len(kept_ids)
    model.config.pad_token_id = pad
    return TrimResult(model, new_tokenizer, kept_ids, original_size=len(vocab))


@torch.no_grad()
def verify_trim(
    original: PreTrainedModel, original_tok, trimmed: TrimResult, texts: list[str], max_length: int,
    batch: int = 64,
) -> dict[str, float]:
    """Same pieces (after id remapping) and the same predictions on `texts`."""
    old_to_new = {old: new for new, old in enumerate(trimmed.kept_ids)}
    max_diff, flips, id_mismatches = 0.0, 0, 0
    original.eval()
    trimmed.model.eval()
    for start in range(0, len(texts), batch):
        chunk = texts[start : start + batch]
        a = original_tok(chunk, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        b = trimmed.tokenizer(chunk, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        remapped = a["input_ids"].clone().apply_(lambda i: old_to_new.get(i, -1))
        id_mismatches += int((remapped != b["input_ids"]).any(dim=1).sum())
        la, lb = original(**a).logits.numpy(), trimmed.model(**b).logits.numpy()
        max_diff = max(max_diff, float(np.abs(la - lb).max()))
        flips += int((la.argmax(-1) != lb.argmax(-1)).sum())
    return {"examples": len(texts), "sequences_with_different_ids": id_mismatches,
            "max_abs_logit_diff": max_diff, "argmax_changes": flips}
