"""Shared Hugging Face helpers: resolve model sources, build tokenizers and students, load data."""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from datasets import DatasetDict, load_from_disk
from transformers import (
    AutoConfig,
    AutoTokenizer,
    BertConfig,
    BertTokenizerFast,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from pipeline.config import RandomBertConfig, TeacherConfig
from pipeline.stage import StageError
from stages._sources import BUILTIN_TEACHERS, builtin_teacher_dir

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def save_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str))


def resolve_model_source(name: str) -> str:
    """A local path for built-ins and directories; hub ids pass through unchanged."""
    if name in BUILTIN_TEACHERS:
        return str(builtin_teacher_dir(name))
    if name.startswith("builtin:"):
        raise StageError(f"unknown built-in model {name!r}; known: {sorted(BUILTIN_TEACHERS)}")
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise StageError(f"{path} has no config.json: it is not a Hugging Face model directory")
        return str(path)
    return name


def _hub_error(name: str, exc: Exception) -> StageError:
    offline = os.environ.get("HF_HUB_OFFLINE") == "1"
    return StageError(
        f"could not load {name!r}: {exc.__class__.__name__}: {str(exc)[:300]}. "
        f"If this is a hub id, the hub must be reachable{' (HF_HUB_OFFLINE=1 is set)' if offline else ''}; "
        "otherwise pass a local model directory, or use teacher.model: builtin:minilm-l6."
    )


def train_wordpiece_tokenizer(texts: Iterable[str], vocab_size: int) -> BertTokenizerFast:
    """A BERT-style WordPiece tokenizer built from the data (for random-weight test models).

    Built by hand rather than with tokenizers' WordPieceTrainer, whose tie-breaking varies from
    run to run (a different vocabulary, hence a different model, from the same data and seed):
    every character (word-initial and ##continuation, so nothing is [UNK]) plus the most frequent
    whole words, ties broken alphabetically.
    """
    from collections import Counter

    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    normalizer = normalizers.BertNormalizer(lowercase=True)
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(word for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text)))
    chars = sorted({c for word in counts for c in word})
    vocab = [*SPECIAL_TOKENS, *chars, *(f"##{c}" for c in chars)]
    words = sorted((w for w in counts if len(w) > 1), key=lambda w: (-counts[w], w))
    vocab += words[: max(0, vocab_size - len(vocab))]
    # Then word endings as ##pieces, as a trained WordPiece vocabulary has: they cover unseen
    # inflections ("boring" -> "bor" "##ing") where whole words do not.
    pieces: Counter[str] = Counter()
    for word, n in counts.items():
        pieces.update({f"##{word[i:]}": n for i in range(1, len(word) - 1)})
    known = set(vocab)
    extra = sorted((p for p in pieces if p not in known), key=lambda p: (-pieces[p], p))
    vocab += extra[: max(0, vocab_size - len(vocab))]
    tok = Tokenizer(models.WordPiece({token: i for i, token in enumerate(vocab)}, unk_token="[UNK]"))
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre_tokenizer
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    tok.decoder = decoders.WordPiece()
    return BertTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]",
    )


def build_tokenizer(teacher: TeacherConfig, train_texts: Iterable[str]) -> PreTrainedTokenizerBase:
    if teacher.model == "random":
        assert teacher.random is not None
        return train_wordpiece_tokenizer(train_texts, teacher.random.vocab_size)
    source = resolve_model_source(teacher.model)
    try:
        return AutoTokenizer.from_pretrained(source)
    except Exception as exc:
        raise _hub_error(teacher.model, exc) from None


def random_bert_config(shape: RandomBertConfig, vocab_size: int, max_length: int) -> BertConfig:
    return BertConfig(
        vocab_size=vocab_size,
        hidden_size=shape.hidden_size,
        num_hidden_layers=shape.num_hidden_layers,
        num_attention_heads=shape.num_attention_heads,
        intermediate_size=shape.intermediate_size,
        max_position_embeddings=max(512, max_length),
    )


def label_maps(labels_json: Path) -> tuple[dict[int, str], dict[str, int]]:
    raw = json.loads(Path(labels_json).read_text())
    id2label = {int(k): v for k, v in raw["id2label"].items()}
    return id2label, {v: k for k, v in id2label.items()}


def load_teacher(teacher: TeacherConfig, tokenizer: PreTrainedTokenizerBase, id2label: dict[int, str],
                 max_length: int, auto_model) -> PreTrainedModel:
    """The task's model (`auto_model`, a transformers Auto class) with a fresh head sized to the
    data's labels."""
    label2id = {v: k for k, v in id2label.items()}
    if teacher.model == "random":
        assert teacher.random is not None
        config = random_bert_config(teacher.random, len(tokenizer), max_length)
        config.update({"num_labels": len(id2label), "id2label": id2label, "label2id": label2id})
        return auto_model.from_config(config)
    source = resolve_model_source(teacher.model)
    try:
        return auto_model.from_pretrained(
            source, num_labels=len(id2label), id2label=id2label, label2id=label2id,
            ignore_mismatched_sizes=True,
        )
    except Exception as exc:
        raise _hub_error(teacher.model, exc) from None


def load_model(path: Path, auto_model) -> PreTrainedModel:
    return auto_model.from_pretrained(path)


def _encoder_layers(model: PreTrainedModel):
    encoder = getattr(model.base_model, "encoder", None)
    layers = getattr(encoder, "layer", None)
    if layers is None:
        raise StageError(
            f"{type(model).__name__} has no base_model.encoder.layer list, so layers cannot be "
            "dropped; set distill.student.model to a smaller model instead of keep_layers"
        )
    return encoder, layers


def shrink_by_layers(teacher: PreTrainedModel, keep: list[int]) -> PreTrainedModel:
    """A student that is the teacher with only the `keep` encoder layers (DistilBERT-style init)."""
    depth = teacher.config.num_hidden_layers
    bad = [i for i in keep if not 0 <= i < depth]
    if bad:
        raise StageError(
            f"distill.student.keep_layers {bad} do not exist: the teacher has {depth} layers "
            f"(indices 0..{depth - 1})"
        )
    student = copy.deepcopy(teacher)
    encoder, layers = _encoder_layers(student)
    encoder.layer = type(layers)([layers[i] for i in keep])
    student.config.num_hidden_layers = len(keep)
    return student


def load_student_from(name: str, id2label: dict[int, str], tokenizer: PreTrainedTokenizerBase,
                      auto_model) -> PreTrainedModel:
    """A separately given (smaller) model; it must share the teacher's tokenizer vocabulary."""
    label2id = {v: k for k, v in id2label.items()}
    source = resolve_model_source(name)
    try:
        config = AutoConfig.from_pretrained(source)
        model = auto_model.from_pretrained(
            source, num_labels=len(id2label), id2label=id2label, label2id=label2id,
            ignore_mismatched_sizes=True,
        )
    except Exception as exc:
        raise _hub_error(name, exc) from None
    if config.vocab_size != len(tokenizer):
        raise StageError(
            f"student {name!r} has vocab_size {config.vocab_size} but the teacher's tokenizer has "
            f"{len(tokenizer)} tokens; distillation needs a shared vocabulary"
        )
    return model


def load_splits_dir(path: Path) -> DatasetDict:
    """The data stage's saved splits."""
    return load_from_disk(str(path))


def count_parameters(model: PreTrainedModel) -> int:
    return sum(p.numel() for p in model.parameters())


def dir_size_mb(path: Path) -> float:
    path = Path(path)
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files) / 1e6


def save_model(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, out: Path) -> dict[str, float]:
    """Weights (safetensors), config and tokenizer where the next stage loads them from."""
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return {"model/params_m": count_parameters(model) / 1e6, "model/size_mb": dir_size_mb(out / "model.safetensors")}
