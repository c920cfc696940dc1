"""data stage: load the task's labelled data, check and clean it, split it (seeded), and save it
with the teacher's tokenizer and the label map. What "labelled data" is belongs to the task
(stages.tasks): texts with labels, or sentences with per-word tags.

Writes: dataset/ (a datasets.DatasetDict), tokenizer/, labels.json, data_report.json.
"""

from __future__ import annotations

from pipeline.stage import StageContext, StageResult
from stages._hf import build_tokenizer, save_json
from stages._sources import source_fingerprint
from stages._tables import SPLITS
from stages.tasks import get_task


def run(ctx: StageContext) -> StageResult:
    cfg = ctx.cfg
    task = get_task(cfg)
    cleaning: dict[str, dict[str, int]] = {}
    splits, names = task.load(cleaning)
    tokenizer = build_tokenizer(cfg.teacher, task.texts(splits["train"]))
    tokenizer.save_pretrained(ctx.out / "tokenizer")
    saved, report, metrics = task.prepare(splits, tokenizer, names, ctx.log)
    for split, counts in report.pop("cleaning", {}).items():
        cleaning.setdefault(split, {}).update(counts)
    dropped = {s: {k: v for k, v in c.items() if v} for s, c in cleaning.items()}
    if any(dropped.values()):
        ctx.log.warning("rows dropped (data.bad_rows=drop): %s", {s: c for s, c in dropped.items() if c})
    saved.save_to_disk(str(ctx.out / "dataset"))

    id2label = dict(enumerate(names))
    save_json(ctx.out / "labels.json", {"id2label": id2label, "label2id": {v: k for k, v in id2label.items()}})
    report = {
        "task": task.name,
        "source": cfg.data.source,
        "source_fingerprint": source_fingerprint(cfg.data),
        "dataset_fingerprint": {s: saved[s]._fingerprint for s in SPLITS},
        "num_labels": len(names),
        "id2label": id2label,
        "cleaning": cleaning,
    } | report
    save_json(ctx.out / "data_report.json", report)
    ctx.tracker.log_artifact(ctx.out / "data_report.json")
    ctx.log.info("%s: splits %s; labels: %s", task.name, {s: len(saved[s]) for s in SPLITS}, names)
    metrics = {f"data/{s}_examples": float(len(saved[s])) for s in SPLITS} | metrics | {
        "data/dropped_rows": float(sum(v for c in cleaning.values() for k, v in c.items()
                                       if k != "dropped_duplicates")),
    }
    return StageResult(
        metrics=metrics,
        outputs={"dataset": "dataset", "teacher_tokenizer": "tokenizer", "labels": "labels.json",
                 "data_report": "data_report.json"},
        info={"id2label": id2label, "cleaning": cleaning},
    )
