"""Probe (no training): how much entity F1 a full-vocabulary student keeps when its embedding
matrix is cut to a budget of rows and every other piece *shares* its nearest kept row (cosine of
the student's own embeddings) instead of being split into smaller pieces.

Kept rows: the special tokens, the characters, every piece of the training texts, then the
vocabulary's own order (frequent-first in BERT's WordPiece files) up to the budget. The tokenizer
is unchanged, so words are split exactly as the teacher splits them.

    python scripts/vocab_sharing_probe.py --config configs/ner.yaml --budget 7000 --budget 8000

Reads the run's data and distill outputs (a `make run CONFIG=...` must have finished distill).
Measured results are in the issue-10 note; this is evidence for a `trim_vocab` mode, not one.
"""

from __future__ import annotations

import argparse

import torch
from transformers import AutoModelForTokenClassification, AutoTokenizer

from pipeline.cache import ArtifactStore
from pipeline.config import load_config
from pipeline.runner import plan
from stages._hf import load_splits_dir
from stages._vocab import character_ids, token_counts
from stages.tasks import get_task
from stages.tasks.base import predict_rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/ner.yaml")
    parser.add_argument("--budget", type=int, action="append", default=[])
    args = parser.parse_args()
    cfg = load_config(args.config)
    task = get_task(cfg)
    planned = plan(cfg, ArtifactStore(cfg.runtime.artifacts_dir))
    for stage in ("data", "distill"):
        if planned[stage].artifact is None:
            raise SystemExit(f"no finished {stage} stage for {args.config}: run `make run CONFIG={args.config}` first")
    raw = load_splits_dir(planned["data"].artifact.output("dataset"))
    model_dir = planned["distill"].artifact.output("student_model")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForTokenClassification.from_pretrained(model_dir).eval()
    features = task.features(raw["test"], tokenizer)

    def test_metric() -> float:
        def predict(batch):
            with torch.no_grad():
                return model(**{k: torch.tensor(v) for k, v in batch.items()}).logits.numpy()
        return task.metrics(predict_rows(predict, features, tokenizer), features)[task.primary_metric]

    rows = model.get_input_embeddings().weight.data
    print(f"full vocabulary ({len(rows)} rows): test {task.primary_metric} {test_metric():.4f}")
    texts = task.texts(raw["train"])
    must = set(token_counts(tokenizer, texts)) | character_ids(tokenizer, texts) | set(tokenizer.all_special_ids)
    unit = torch.nn.functional.normalize(rows, dim=1)
    # Word pieces in vocabulary order: not BERT's [unusedN] placeholders (never produced), nor the
    # single characters that open its file (the domain's own are kept already).
    by_id = sorted((i, t) for t, i in tokenizer.get_vocab().items()
                   if not (t.startswith("[") and t.endswith("]")) and len(t.removeprefix("##")) > 1)
    by_id = [(t, i) for i, t in by_id]
    for budget in [len(must), *args.budget]:
        fill = [i for token, i in by_id if i not in must][: max(0, budget - len(must))]
        kept = torch.tensor(sorted(must | set(fill)))
        nearest = kept[(unit @ unit[kept].T).argmax(1)]
        model.get_input_embeddings().weight.data = rows[nearest]  # kept rows map to themselves
        print(f"{len(kept)} rows kept, every other piece on its nearest kept row: "
              f"test {task.primary_metric} {test_metric():.4f}")
        model.get_input_embeddings().weight.data = rows


if __name__ == "__main__":
    main()
