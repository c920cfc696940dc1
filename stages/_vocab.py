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
import string
from collections import Counter
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


def token_counts(tokenizer: PreTrainedTokenizerFast, texts: Iterable[str], batch: int = 1000) -> Counter[int]:
    counts: Counter[int] = Counter()
    buffer: list[str] = []
    for text in texts:
        buffer.append(text)
        if len(buffer) == batch:
            for ids in tokenizer(buffer, add_special_tokens=False)["input_ids"]:
                counts.update(ids)
            buffer = []
    if buffer:
        for ids in tokenizer(buffer, add_special_tokens=False)["input_ids"]:
            counts.update(ids)
    return counts


def used_token_ids(tokenizer: PreTrainedTokenizerFast, texts: Iterable[str]) -> set[int]:
    return set(token_counts(tokenizer, texts)) | set(tokenizer.all_special_ids)


def character_ids(tokenizer: PreTrainedTokenizerFast, texts: Iterable[str]) -> set[int]:
    """The single-character pieces (word-initial and ##continuation) of ASCII and of every
    character in `texts` after the tokenizer's normalisation: with them any domain word still
    tokenizes, however rare, instead of becoming [UNK]."""
    normalizer = tokenizer.backend_tokenizer.normalizer
    chars = set(string.ascii_lowercase + string.ascii_uppercase + string.digits + string.punctuation)
    for text in texts:
        chars.update(text)
    normalized = {c for ch in chars for c in (normalizer.normalize_str(ch) if normalizer else ch)}
    vocab = tokenizer.get_vocab()
    return {vocab[p] for c in normalized if not c.isspace() for p in (c, "##" + c) if p in vocab}


def budget_token_ids(tokenizer: PreTrainedTokenizerFast, texts: list[str], max_tokens: int,
                     keep_characters: bool = True) -> list[int]:
    """At most `max_tokens` ids: special tokens, characters, then the most frequent domain
    pieces (ties by id, so the choice is deterministic)."""
    must = set(tokenizer.all_special_ids) | (character_ids(tokenizer, texts) if keep_characters else set())
    if len(must) > max_tokens:
        raise StageError(
            f"distill.trim_vocab.max_tokens={max_tokens} is below the {len(must)} special and "
            f"single-character tokens every text needs; raise it to at least {len(must)}"
        )
    counts = token_counts(tokenizer, texts)
    ranked = sorted((i for i in counts if i not in must), key=lambda i: (-counts[i], i))
    return sorted(must | set(ranked[: max_tokens - len(must)]))


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
    trim_embeddings(model, kept_ids, new_tokenizer.pad_token_id)
    return TrimResult(model, new_tokenizer, kept_ids, original_size=len(vocab))


def trim_embeddings(model: PreTrainedModel, kept_ids: list[int], pad_id: int) -> PreTrainedModel:
    """Keep the embedding rows of `kept_ids`, in that order (new id = position)."""
    old_embeddings = model.get_input_embeddings()
    embeddings = torch.nn.Embedding(len(kept_ids), old_embeddings.embedding_dim, padding_idx=pad_id)
    embeddings.weight.data = old_embeddings.weight.data[torch.tensor(kept_ids)].clone()
    model.set_input_embeddings(embeddings)
    model.config.vocab_size = len(kept_ids)
    model.config.pad_token_id = pad_id
    return model


def retokenization(original_tok, trimmed_tok, texts: list[str], max_length: int) -> dict[str, float]:
    """How a budget trim changes the pieces of `texts`: share of texts split differently, tokens
    per text before and after, and [UNK]s the cut introduced."""
    a = original_tok(texts, truncation=True, max_length=max_length)["input_ids"]
    b = trimmed_tok(texts, truncation=True, max_length=max_length)["input_ids"]
    old_vocab = {i: t for t, i in original_tok.get_vocab().items()}
    new_vocab = {i: t for t, i in trimmed_tok.get_vocab().items()}
    changed = sum([old_vocab[i] for i in x] != [new_vocab[i] for i in y] for x, y in zip(a, b, strict=True))
    unk_a = sum(x.count(original_tok.unk_token_id) for x in a)
    unk_b = sum(y.count(trimmed_tok.unk_token_id) for y in b)
    return {"texts": len(texts), "changed_share": changed / max(len(texts), 1),
            "tokens_per_text_before": sum(map(len, a)) / max(len(a), 1),
            "tokens_per_text_after": sum(map(len, b)) / max(len(b), 1),
            "new_unknown_tokens": max(unk_b - unk_a, 0)}


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


# -- shared rows: a budget of embedding rows without re-splitting words -------------------------
SHARED_ROWS_FILE = "shared_rows.npz"  # beside a student's weights: kept ids and each id's row


def shared_row_plan(tokenizer: PreTrainedTokenizerFast, texts: list[str], max_tokens: int,
                    rows: torch.Tensor, keep_characters: bool = True) -> tuple[list[int], np.ndarray]:
    """Which `max_tokens` embedding rows to keep, and for every id of the vocabulary the position
    of its row among them (its own if kept, else its nearest kept row by cosine).

    Kept: the special tokens, the characters, the pieces of `texts` (all of them when they fit,
    else the most frequent: a large general corpus uses more pieces than any row budget), then the
    vocabulary's multi-character pieces in its own (frequent-first, for BERT's WordPiece files)
    order. The tokenizer is left as it is, so words are split as the teacher splits them; rare
    pieces read a similar piece's row instead of being re-split (measured on WNUT-16 NER: 7,000
    rows kept test entity F1 0.4856 of 0.4866 without retraining; re-splitting cost ~10 points)."""
    must = set(budget_token_ids(tokenizer, texts, max_tokens, keep_characters))
    vocab = tokenizer.get_vocab()
    # Not BERT's [unusedN] placeholders (never produced) nor the single characters opening its file.
    words = sorted(i for t, i in vocab.items()
                   if i not in must and not (t.startswith("[") and t.endswith("]")) and len(t.removeprefix("##")) > 1)
    kept = sorted(must | set(words[: max_tokens - len(must)]))
    unit = torch.nn.functional.normalize(rows.float(), dim=1)
    kept_t = torch.tensor(kept)
    nearest = torch.cat([(unit[start:start + 4096] @ unit[kept_t].T).argmax(1) for start in range(0, len(rows), 4096)])
    position = nearest.numpy().astype(np.int64)
    position[kept_t.numpy()] = np.arange(len(kept))  # a kept row is its own nearest (ties aside)
    return kept, position


def share_rows(model: PreTrainedModel, kept: list[int], position: np.ndarray) -> None:
    """Make the PyTorch model read shared rows (the full-size matrix holds copies), so it predicts
    exactly what the compact ONNX graph will."""
    weight = model.get_input_embeddings().weight
    weight.data = weight.data[torch.tensor(kept)][torch.from_numpy(position)].clone()
