"""release stage: the self-contained bundle production runs, and its registration.

Writes bundle/ (model.onnx, tokenizer.json, bundle.json with labels and inference settings, a model
card README.md, SHA256SUMS; see bertpress.bundle), re-scores the bundle on the test split through
the torch-free runtime (what production will run, tokenizers instead of transformers), logs the
bundle to the stage's MLflow run and registers the model (ONNX flavour, signature, input example)
under release.model_name with alias `candidate`. Promotion to `champion` is `bertpress promote`.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from bertpress import bundle as bundle_format
from bertpress.evaluate import accuracy
from bertpress.runtime import BUNDLE_ARTIFACT_PATH, BUNDLE_URI_TAG, Model
from pipeline import __version__
from pipeline.stage import StageContext, StageError, StageResult
from stages._hf import label_maps, load_tokenized, save_json

CANDIDATE_ALIAS = "candidate"


def model_source(ctx: StageContext) -> tuple[Path, Path]:
    """(ONNX file, directory with its tokenizer) of the configured variant."""
    if ctx.cfg.release.variant == "student-int8":
        quantize = ctx.input("quantize")
        return quantize.output("student_int8"), quantize.output("student_int8_dir")
    export = ctx.input("export")
    return export.output("student_best"), export.output("student_dir")


def write_bundle(ctx: StageContext, onnx_path: Path, tokenizer_dir: Path, target: Path) -> dict[str, Any]:
    cfg = ctx.cfg
    target.mkdir(parents=True)
    shutil.copy2(onnx_path, target / bundle_format.MODEL_FILE)
    tokenizer_json = tokenizer_dir / "tokenizer.json"
    if not tokenizer_json.is_file():
        raise StageError(f"{tokenizer_dir} has no tokenizer.json (a fast tokenizer is needed for "
                         "the torch-free runtime); rerun `make export --force`")
    shutil.copy2(tokenizer_json, target / bundle_format.TOKENIZER_FILE)
    id2label, _ = label_maps(ctx.input("data"))
    model_config = json.loads((ctx.input("distill").output("model") / "config.json").read_text())
    bench = ctx.input("benchmark").metrics
    variant = cfg.release.variant
    metadata = {
        "format": bundle_format.FORMAT,
        "name": cfg.registered_model_name,
        "task": "text-classification",
        "labels": [id2label[i] for i in range(len(id2label))],
        "max_length": cfg.data.max_length,
        "truncation": "longest_first",
        "padding": "longest",
        "pad_token": "[PAD]",
        "inputs": ["input_ids", "attention_mask", "token_type_ids"],
        "outputs": ctx.input("export").manifest["info"].get("student_outputs", ["logits"]),
        "variant": variant,
        "architecture": {k: model_config.get(k) for k in (
            "num_hidden_layers", "hidden_size", "num_attention_heads", "intermediate_size", "vocab_size")},
        "metrics": {
            "test_accuracy": bench.get(f"bench/{variant}/test_accuracy"),
            "latency_p50_ms": bench.get(f"bench/{variant}/latency_p50_ms"),
            "latency_p99_ms": bench.get(f"bench/{variant}/latency_p99_ms"),
            "size_mb": bench.get(f"bench/{variant}/size_mb"),
        },
        "provenance": {
            "bertpress_version": __version__,
            "project": cfg.project.name,
            "stage_keys": {name: art.key for name, art in ctx.inputs.items()},
            "created_unix": int(time.time()),
        },
    }
    save_json(target / bundle_format.METADATA_FILE, metadata)
    (target / bundle_format.CARD_FILE).write_text(model_card(ctx, metadata))
    bundle_format.write_checksums(target)  # last: seals the bundle
    return metadata


def model_card(ctx: StageContext, meta: dict[str, Any]) -> str:
    cfg = ctx.cfg
    arch, metrics = meta["architecture"], meta["metrics"]
    bench = ctx.input("benchmark").metrics
    data_info = ctx.input("data").manifest.get("info", {})
    quant = ctx.input("quantize").manifest.get("info", {})
    counts = data_info.get("class_counts", {})
    data_source = (f"built-in {cfg.data.builtin}" if cfg.data.source == "builtin"
                   else cfg.data.hub_name if cfg.data.source == "hub" else str(cfg.data.files))

    def row(variant: str) -> str:
        def fmt(metric: str, spec: str) -> str:
            value = bench.get(f"bench/{variant}/{metric}")
            return format(value, spec) if value is not None else "-"
        return (f"| {variant} | {fmt('test_accuracy', '.4f')} | {fmt('latency_p50_ms', '.2f')} | "
                f"{fmt('latency_p99_ms', '.2f')} | {fmt('size_mb', '.1f')} |")

    variants = [v for v in ("teacher-pytorch", "teacher-stock-int8", "student-onnx", "student-int8")
                if f"bench/{v}/test_accuracy" in bench]
    embeds = [o for o in meta["outputs"] if o != "logits"]
    return f"""# {meta['name']}

A compact BERT text classifier made by bertpress {meta['provenance']['bertpress_version']}: a
{arch['num_hidden_layers']}-layer student (hidden {arch['hidden_size']}, {arch['num_attention_heads']}
heads, FFN {arch['intermediate_size']}, vocabulary {arch['vocab_size']}) distilled from a fine-tuned
`{cfg.teacher.model}` teacher, exported to ONNX and shipped as `{meta['variant']}`.

## Task and data
- Labels: {', '.join(meta['labels'])}
- Data: {data_source}; class counts per split: {json.dumps(counts)}
- Inputs are truncated to {meta['max_length']} tokens; longer texts are cut.

## Results (test split, from the benchmark stage)
| variant | test accuracy | p50 ms (batch 1) | p99 ms | size MB |
|---|---|---|---|---|
{chr(10).join(row(v) for v in variants)}

This bundle: accuracy {metrics['test_accuracy']}, scored again through the torch-free runtime at
release. Latency: real test sentences, batch 1, {cfg.runtime.threads or 'all'} threads, on the
machine that ran the pipeline.

## How it was made
- Distillation: temperature {cfg.distill.temperature}, alpha {cfg.distill.alpha}, epochs
  {cfg.distill.epochs}, layers kept {cfg.distill.student.keep_layers}, vocabulary trimming
  {'on' if cfg.distill.trim_vocab.enabled else 'off'}.
- Quantization: candidate `{quant.get('selected', '-')}` selected (fastest within
  {cfg.quantize.max_accuracy_drop} validation accuracy of fp32); integer ops {json.dumps(quant.get('integer_ops', {}))}.
- Stage keys: {json.dumps(meta['provenance']['stage_keys'])}

## Use
```
bertpress predict <this directory> "some text"        # onnxruntime + tokenizers + numpy only
bertpress embed <this directory> "some text" --kind mean
bertpress serve <this directory> --port 8000
```
Outputs: logits{(' + embeddings: ' + ', '.join(embeds)) if embeds else ' only (no embeddings)'}.

## Limitations
- Trained on {data_source} only; expect lower accuracy on other domains.
- {'The vocabulary was trimmed to the words of the training data: unseen words fall back to word pieces and single characters.' if cfg.distill.trim_vocab.enabled else 'Full teacher vocabulary.'}
- INT8 weights and activations: embeddings are close to, not equal to, the fp32 model's.
"""


def check_tokenization(model: Model, tokenizer_dir: Path, texts: list[str], max_length: int) -> None:
    """The runtime's tokenizers must give the ids transformers gave in training and evaluation."""
    from transformers import AutoTokenizer

    reference = AutoTokenizer.from_pretrained(tokenizer_dir)
    expected = reference(texts, truncation=True, max_length=max_length)["input_ids"]
    for text, want in zip(texts, expected, strict=True):
        got = model.tokenizer.encode(text).ids  # a single text: no padding
        if got != want:
            raise StageError(
                f"the bundle's tokenizer.json tokenizes {text[:80]!r} as {got[:20]}..., transformers "
                f"as {want[:20]}...: the runtime would feed the model different ids. Re-export "
                "(`bertpress run export --force`) and report this as a bug"
            )


def example_inputs(model: Model, texts: list[str]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """A real tokenized example and the model's outputs on it: the registry signature."""
    feed = model._encode(texts)
    names = [o.name for o in model.session.get_outputs()]
    return feed, dict(zip(names, model.session.run(names, feed), strict=True))


def run(ctx: StageContext) -> StageResult:
    cfg = ctx.cfg
    onnx_path, tokenizer_dir = model_source(ctx)
    bundle_dir = ctx.out / BUNDLE_ARTIFACT_PATH
    ctx.log.info("writing the release bundle (%s) to %s", cfg.release.variant, bundle_dir)
    metadata = write_bundle(ctx, onnx_path, tokenizer_dir, bundle_dir)

    test = load_tokenized(ctx.input("data"))["test"]
    texts = list(test["text"])
    id2label, _ = label_maps(ctx.input("data"))
    runtime_model = Model(bundle_dir, threads=cfg.runtime.threads)
    check_tokenization(runtime_model, tokenizer_dir, texts, cfg.data.max_length)
    # Batch 1, as a production request: dynamic INT8 scales depend on what shares a batch.
    runtime_acc = accuracy(runtime_model, texts, [id2label[int(i)] for i in test["label"]], batch_size=1)
    bench_acc = metadata["metrics"]["test_accuracy"]
    gap = abs(runtime_acc - bench_acc) if bench_acc is not None else 0.0
    ctx.log.info("bundle test accuracy through the torch-free runtime (batch 1): %.4f (benchmark %.4f)",
                 runtime_acc, bench_acc or float("nan"))
    if gap > cfg.release.max_runtime_accuracy_gap:
        raise StageError(
            f"the bundle scores {runtime_acc:.4f} on the test split through bertpress.runtime at "
            f"batch 1 but {bench_acc:.4f} in the benchmark (gap {gap:.4f} > "
            f"release.max_runtime_accuracy_gap {cfg.release.max_runtime_accuracy_gap}); tokenization "
            "was checked identical, so the model is sensitive to batching (dynamic INT8 scales): "
            "try release.variant: student-onnx or a static quantize candidate"
        )
    metrics = {"release/runtime_test_accuracy": runtime_acc,
               "release/model_size_mb": (bundle_dir / bundle_format.MODEL_FILE).stat().st_size / 1e6}
    info: dict[str, Any] = {"bundle": metadata}

    ctx.tracker.log_artifact(bundle_dir, BUNDLE_ARTIFACT_PATH)
    if cfg.release.register_model:
        name = cfg.registered_model_name
        feed, outputs = example_inputs(runtime_model, texts[:2])
        run_id = ctx.tracker.active_run_id()
        version = ctx.tracker.register_onnx_model(
            bundle_dir / bundle_format.MODEL_FILE, name, feed, outputs,
            tags={BUNDLE_URI_TAG: f"runs:/{run_id}/{BUNDLE_ARTIFACT_PATH}", "stage_key": ctx.key,
                  "test_accuracy": runtime_acc, "latency_p50_ms": metadata["metrics"]["latency_p50_ms"]},
        )
        ctx.tracker.set_alias(name, CANDIDATE_ALIAS, version)
        ctx.log.info("registered %s version %s, alias %r (tracking: %s)", name, version,
                     CANDIDATE_ALIAS, ctx.tracker.tracking_uri)
        info["registered_model"] = {"name": name, "version": version, "alias": CANDIDATE_ALIAS,
                                    "tracking_uri": ctx.tracker.tracking_uri, "run_id": run_id}
        metrics["release/model_version"] = float(version)
    return StageResult(metrics=metrics, outputs={"bundle": BUNDLE_ARTIFACT_PATH}, info=info)
