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

from bertpress import __version__
from bertpress import bundle as bundle_format
from bertpress.runtime import BUNDLE_ARTIFACT_PATH, BUNDLE_URI_TAG, Model
from pipeline.config import DistillConfig
from pipeline.stage import StageContext, StageError, StageResult
from stages._hf import label_maps, load_splits_dir, save_json
from stages.tasks import get_task
from stages.tasks.base import Task

CANDIDATE_ALIAS = "candidate"
STATIC_BUNDLE = "bundle-static"
TEACHER_BUNDLE = "bundle-teacher"


def model_source(ctx: StageContext) -> tuple[Path, Path]:
    """(ONNX file, directory with its tokenizer) of the configured variant."""
    if ctx.cfg.release.variant == "student-int8":
        return ctx.path("student_int8"), ctx.path("student_int8_dir")
    return ctx.path("student_best"), ctx.path("student_dir")


def write_bundle(ctx: StageContext, task: Task, onnx_path: Path, tokenizer_dir: Path, target: Path,
                 teacher: bool = False) -> dict[str, Any]:
    """The student's bundle, or with `teacher` the teacher's (a document encoder whose vectors the
    student's queries search)."""
    cfg = ctx.cfg
    target.mkdir(parents=True)
    shutil.copy2(onnx_path, target / bundle_format.MODEL_FILE)
    tokenizer_json = tokenizer_dir / "tokenizer.json"
    if not tokenizer_json.is_file():
        raise StageError(f"{tokenizer_dir} has no tokenizer.json (a fast tokenizer is needed for "
                         "the torch-free runtime); rerun `make export --force`")
    shutil.copy2(tokenizer_json, target / bundle_format.TOKENIZER_FILE)
    id2label, _ = label_maps(ctx.path("labels"))
    model_config = json.loads((ctx.path("teacher_model" if teacher else "student_model") / "config.json").read_text())
    bench = ctx.read_json("benchmark_report")["variants"]
    variant = "teacher-onnx" if teacher else cfg.release.variant
    measured = bench.get(variant, {})
    metadata = {
        "format": bundle_format.FORMAT,
        "name": f"{cfg.registered_model_name}-teacher" if teacher else cfg.registered_model_name,
        "task": task.name,
        "labels": [id2label[i] for i in range(len(id2label))],
        "max_length": cfg.data.max_length,
        "truncation": "longest_first",
        "padding": "longest",
        "pad_token": "[PAD]",
        "inputs": ["input_ids", "attention_mask", "token_type_ids"],
        "outputs": ["logits"] if teacher else ctx.read_json("parity").get("student_outputs", ["logits"]),
        "variant": variant,
        "architecture": {k: model_config.get(k) for k in (
            "num_hidden_layers", "hidden_size", "num_attention_heads", "intermediate_size", "vocab_size")},
        "metrics": {
            "primary": task.primary_metric,
            **{f"test_{m}": measured.get(m) for m in task.metric_labels},
            "latency_p50_ms": measured.get("latency_real", {}).get("p50_ms"),
            "latency_p99_ms": measured.get("latency_real", {}).get("p99_ms"),
            "size_mb": measured.get("size_mb"),
        },
        "provenance": {
            "bertpress_version": __version__,
            "project": cfg.project.name,
            "stage_keys": {name: art.key for name, art in ctx.inputs.items()},
            "created_unix": int(time.time()),
        },
    } | task.bundle_metadata(model_config)
    space = embedding_space(ctx)
    if space is not None:
        metadata["sentence_embedding"]["space"] = space
    save_json(target / bundle_format.METADATA_FILE, metadata)
    card = teacher_card(cfg, metadata) if teacher else model_card(ctx, task, metadata, bench)
    (target / bundle_format.CARD_FILE).write_text(card)
    bundle_format.write_checksums(target)  # last: seals the bundle
    return metadata


def embedding_space(ctx: StageContext) -> str | None:
    """Which vectors this release's embeddings can be compared with: a student that embeds into its
    teacher's space shares the teacher's id (its name and the sha256 of its weights), so an index
    the teacher built answers the student's queries; None for other tasks and a student's own space."""
    cfg = ctx.cfg
    if cfg.task.type != "sentence-embedding" or cfg.task.output_space != "teacher":
        return None
    weights = sorted(ctx.path("teacher_model").glob("*.safetensors")) or [ctx.path("teacher_best")]
    digest = bundle_format.file_sha256(weights[0])
    return f"{cfg.teacher.model}#sha256:{digest[:16]}"


def teacher_card(cfg, meta: dict[str, Any]) -> str:
    metrics, sentence = meta["metrics"], meta["sentence_embedding"]
    primary = metrics["primary"]
    return f"""# {meta['name']}

The teacher (`{cfg.teacher.model}`) of `{cfg.registered_model_name}`, exported to ONNX (fp32, fused), as a
document encoder: {sentence['dim']}-dimensional embeddings in the vector space `{sentence['space']}`, which
the student bundle shares. Embed the corpus once with this bundle; answer queries with the student:

    bertpress index <this directory> --input corpus.jsonl --out idx/
    bertpress search idx/ "a question" --bundle <the student bundle>

Test {primary} (both sides embedded by this model): {metrics.get(f'test_{primary}')}; batch-1 p50
{metrics.get('latency_p50_ms')} ms; {metrics.get('size_mb')} MB.
"""


def model_card(ctx: StageContext, task: Task, meta: dict[str, Any], bench: dict[str, dict]) -> str:
    cfg = ctx.cfg
    arch, metrics = meta["architecture"], meta["metrics"]
    data_report = ctx.read_json("data_report")
    quant = ctx.read_json("quantize_report")
    counts = data_report.get("class_counts") or data_report.get("entity_counts", {})
    data_source = (f"built-in {cfg.data.builtin}" if cfg.data.source == "builtin"
                   else cfg.data.hub_name if cfg.data.source == "hub" else str(cfg.data.files))
    primary, labels = task.primary_metric, task.metric_labels

    def row(variant: str) -> str:
        r = bench[variant]
        return (f"| {variant} | " + " | ".join(f"{r[m]:.4f}" for m in labels) +
                f" | {r['latency_real']['p50_ms']:.2f} | {r['latency_real']['p99_ms']:.2f} | {r['size_mb']:.1f} |")

    variants = [v for v in ("teacher-pytorch", "teacher-stock-int8", "student-onnx", "student-int8") if v in bench]
    embeds = [o for o in meta["outputs"] if o != "logits"]
    use = {"sequence-classification": '"some text"', "token-classification": '"Barack Obama visited Paris"',
           "question-answering": '--question "Where did he go?" --context "Barack Obama visited Paris."',
           "cross-encoder": '"who wrote Hamlet?" --pair "Hamlet is a tragedy by William Shakespeare."'}
    settings = ctx.read_json("student_settings")
    dcfg = DistillConfig.model_validate(settings["distill"])
    searched = settings.get("search")
    search_note = "" if not searched else (
        f"\n- Chosen by the student search (trial {searched['number']}, "
        f"{'within' if searched['feasible'] else 'NOT within'} the quality budget): {json.dumps(searched['chosen'])}.")
    return f"""# {meta['name']}

A compact BERT model for {task.name} made by bertpress {meta['provenance']['bertpress_version']}: a
{arch['num_hidden_layers']}-layer student (hidden {arch['hidden_size']}, {arch['num_attention_heads']}
heads, FFN {arch['intermediate_size']}, vocabulary {arch['vocab_size']}) distilled from a fine-tuned
`{cfg.teacher.model}` teacher, exported to ONNX and shipped as `{meta['variant']}`.

## Task and data
- Task: {task.name}; labels: {', '.join(meta['labels'])}
- Data: {data_source}; counts per split: {json.dumps(counts)}
- Inputs are read up to {meta['max_length']} tokens{' (longer inputs as overlapping windows)' if task.per_token else '; longer texts are cut'}.

## Results (test split, from the benchmark stage)
| variant | {' | '.join(f'test {label}' for label in labels.values())} | p50 ms (batch 1) | p99 ms | size MB |
|---|{'---|' * len(labels)}---|---|---|
{chr(10).join(row(v) for v in variants)}

This bundle: {labels[primary]} {metrics.get(f'test_{primary}')}, scored again through the torch-free
runtime at release. Latency: real test sentences, batch 1, {cfg.runtime.threads or 'all'} threads, on
the machine that ran the pipeline.

## How it was made
- Distillation: temperature {dcfg.temperature}, alpha {dcfg.alpha}, steps
  {dcfg.max_steps if dcfg.max_steps > 0 else f'{dcfg.epochs} epochs'}, layers kept
  {dcfg.student.keep_layers}, vocabulary trimming {'on' if dcfg.trim_vocab.enabled else 'off'}.{search_note}
- Quantization: candidate `{quant.get('selected', '-')}` selected (within {cfg.quantize.max_metric_drop}
  validation {labels[primary]} of fp32; latency only where it beats measured noise); integer ops
  {json.dumps(quant.get('candidates', {}).get(quant.get('selected'), {}).get('integer_ops', {}))}.
- Stage keys: {json.dumps(meta['provenance']['stage_keys'])}

## Use
```
bertpress predict <this directory> {use.get(task.name, '"some text"')}   # onnxruntime + tokenizers + numpy only
bertpress serve <this directory> --port 8000
```
{outputs_note(meta, embeds)}

## Limitations
- Trained on {data_source} only; expect lower quality on other domains.
- {vocabulary_note(dcfg.trim_vocab)}
- INT8 weights and activations: outputs are close to, not equal to, the fp32 model's.
"""


def outputs_note(meta: dict[str, Any], embeds: list[str]) -> str:
    sentence = meta.get("sentence_embedding")
    if sentence:
        return (f"Output: the sentence embedding ({sentence['dim']} dimensions, {sentence['pooling']} pooling"
                f"{', L2-normalised: dot product = cosine' if sentence['normalized'] else ''}), computed inside "
                "the graph; `bertpress index` / `search` build a vector index on it."
                + (f" It embeds into its teacher's space (`{sentence['space']}`), so it also answers queries "
                   "over an index the teacher's bundle built: `bertpress search IDX \"query\" --bundle "
                   "<this directory>`." if sentence.get("space") else ""))
    return f"Outputs: logits{(' + embeddings: ' + ', '.join(embeds)) if embeds else ' only (no embeddings)'}."


def check_tokenization(model: Model, tokenizer_dir: Path, texts: list[str], max_length: int) -> None:
    """The runtime's tokenizers must give the ids transformers gave in training and evaluation."""
    from transformers import AutoTokenizer

    reference = AutoTokenizer.from_pretrained(tokenizer_dir)
    expected = reference(texts, truncation=True, max_length=max_length)["input_ids"]
    for text, want in zip(texts, expected, strict=True):
        got = model.tokenizer.encode(text).ids  # a single text: no padding, first window
        if got != want:
            raise StageError(
                f"the bundle's tokenizer.json tokenizes {text[:80]!r} as {got[:20]}..., transformers "
                f"as {want[:20]}...: the runtime would feed the model different ids. Re-export "
                "(`bertpress run export --force`) and report this as a bug"
            )


def example_inputs(model: Model, text: str) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """A real tokenized example and the model's outputs on it: the registry signature."""
    feed = model.feed([model.tokenizer.encode(text)])
    names = [o.name for o in model.session.get_outputs()]
    return feed, dict(zip(names, model.session.run(names, feed), strict=True))


def run(ctx: StageContext) -> StageResult:
    cfg = ctx.cfg
    task = get_task(cfg)
    primary = task.primary_metric
    onnx_path, tokenizer_dir = model_source(ctx)
    bundle_dir = ctx.out / BUNDLE_ARTIFACT_PATH
    ctx.log.info("writing the release bundle (%s) to %s", cfg.release.variant, bundle_dir)
    metadata = write_bundle(ctx, task, onnx_path, tokenizer_dir, bundle_dir)

    test = load_splits_dir(ctx.path("dataset"))["test"]
    texts = task.texts(test)
    runtime_model = Model(bundle_dir, threads=cfg.runtime.threads)
    check_tokenization(runtime_model, tokenizer_dir, texts, cfg.data.max_length)
    # As production runs it (`score_bundle`: batch 1, or a re-ranker's candidate batches); the
    # benchmark scores dynamic INT8 graphs row by row (their activation scales span the batch).
    runtime_score = task.score_bundle(runtime_model, test)[primary]
    bench_score = metadata["metrics"][f"test_{primary}"]
    gap = abs(runtime_score - bench_score) if bench_score is not None else 0.0
    ctx.log.info("bundle test %s through the torch-free runtime: %.4f (benchmark %.4f)",
                 primary, runtime_score, bench_score or float("nan"))
    if gap > cfg.release.max_runtime_metric_gap:
        raise StageError(
            f"the bundle scores {primary} {runtime_score:.4f} on the test split through bertpress.runtime "
            f"but {bench_score:.4f} in the benchmark (gap {gap:.4f} > "
            f"release.max_runtime_metric_gap {cfg.release.max_runtime_metric_gap}); tokenization "
            "was checked identical, so either the runtime's batches moved a dynamic INT8 graph's scores "
            "(a re-ranker scores candidate batches) or this is a bertpress bug worth reporting; "
            "release.variant: student-onnx ships the fp32 graph, whose scores do not depend on batching"
        )
    metrics = {f"release/runtime_test_{primary}": runtime_score,
               "release/model_size_mb": (bundle_dir / bundle_format.MODEL_FILE).stat().st_size / 1e6}
    info: dict[str, Any] = {"bundle": metadata}

    if ctx.has("static_model"):
        static_dir = ctx.out / STATIC_BUNDLE
        static_meta = write_static_bundle(ctx, task, static_dir)
        static_score = task.score_bundle(Model(static_dir), test)[primary]
        bench_static = static_meta["metrics"][f"test_{primary}"]
        if abs(static_score - bench_static) > cfg.release.max_runtime_metric_gap:
            raise StageError(f"the static bundle scores {primary} {static_score:.4f} through bertpress.runtime "
                             f"but {bench_static:.4f} in the benchmark: report this as a bug")
        metrics[f"release/static_runtime_test_{primary}"] = static_score
        info["static_bundle"] = str(static_dir)
        ctx.tracker.log_artifact(static_dir, STATIC_BUNDLE)
        ctx.log.info("static bundle %s: test %s %.4f through the runtime (numpy only)", static_dir, primary,
                     static_score)

    ctx.tracker.log_artifact(bundle_dir, BUNDLE_ARTIFACT_PATH)
    if cfg.release.register_model:
        name = cfg.registered_model_name
        feed, outputs = example_inputs(runtime_model, texts[0])
        run_id = ctx.tracker.active_run_id()
        version = ctx.tracker.register_onnx_model(
            bundle_dir / bundle_format.MODEL_FILE, name, feed, outputs,
            tags={BUNDLE_URI_TAG: f"runs:/{run_id}/{BUNDLE_ARTIFACT_PATH}", "stage_key": ctx.key,
                  "task": task.name, f"test_{primary}": runtime_score,
                  "latency_p50_ms": metadata["metrics"]["latency_p50_ms"]},
        )
        ctx.tracker.set_alias(name, CANDIDATE_ALIAS, version)
        ctx.log.info("registered %s version %s, alias %r (tracking: %s)", name, version,
                     CANDIDATE_ALIAS, ctx.tracker.tracking_uri)
        info["registered_model"] = {"name": name, "version": version, "alias": CANDIDATE_ALIAS,
                                    "tracking_uri": ctx.tracker.tracking_uri, "run_id": run_id}
        metrics["release/model_version"] = float(version)
    if cfg.release.teacher_bundle:
        teacher_dir = ctx.out / TEACHER_BUNDLE
        write_bundle(ctx, task, ctx.path("teacher_best"), ctx.path("teacher_dir"), teacher_dir, teacher=True)
        Model(teacher_dir, threads=cfg.runtime.threads)  # it opens in the runtime
        info["teacher_bundle"] = str(teacher_dir)
        ctx.tracker.log_artifact(teacher_dir, TEACHER_BUNDLE)
        ctx.log.info("teacher bundle (the document encoder for student queries): %s", teacher_dir)
    outputs = ({"bundle": BUNDLE_ARTIFACT_PATH} | ({"static_bundle": STATIC_BUNDLE} if "static_bundle" in info else {})
               | ({"teacher_bundle": TEACHER_BUNDLE} if "teacher_bundle" in info else {}))
    return StageResult(metrics=metrics, outputs=outputs, info=info)


def write_static_bundle(ctx: StageContext, task: Task, target: Path) -> dict[str, Any]:
    """The Model2Vec tier as a bundle the runtime serves with numpy and tokenizers alone."""
    from bertpress.static import STATIC_FILE

    source = ctx.path("static_model")
    target.mkdir(parents=True)
    shutil.copy2(source / STATIC_FILE, target / STATIC_FILE)
    shutil.copy2(source / "tokenizer.json", target / bundle_format.TOKENIZER_FILE)
    settings = json.loads((source / "static.json").read_text())
    measured = ctx.read_json("benchmark_report")["variants"]["static-model2vec"]
    cfg = ctx.cfg
    metadata = {
        "format": bundle_format.FORMAT, "name": f"{cfg.registered_model_name}-static", "task": task.name,
        "labels": [], "max_length": cfg.data.max_length, "outputs": [], "variant": "static-model2vec",
        "static": settings,
        "sentence_embedding": {"output": None, "dim": settings["dim"], "pooling": "mean of static token vectors",
                               "normalized": settings["normalize"]},
        "metrics": {"primary": task.primary_metric, **{f"test_{m}": measured.get(m) for m in task.metric_labels},
                    "latency_p50_ms": measured["latency_real"]["p50_ms"], "size_mb": measured["size_mb"]},
        "provenance": {"bertpress_version": __version__, "project": cfg.project.name,
                       "stage_keys": {name: art.key for name, art in ctx.inputs.items()},
                       "made_with": "model2vec (static token vectors distilled from the teacher)",
                       "created_unix": int(time.time())},
    }
    save_json(target / bundle_format.METADATA_FILE, metadata)
    labels = task.metric_labels
    (target / bundle_format.CARD_FILE).write_text(f"""# {metadata['name']}

A static sentence encoder (Model2Vec) distilled from `{cfg.teacher.model}` by bertpress: one
{settings['dim']}-dimensional vector per token; a sentence is the mean of its tokens' vectors
(L2-normalised: dot product = cosine). No neural network runs at inference: numpy and tokenizers
only, orders of magnitude faster than the transformer, at a cost in quality.

Test {', '.join(f"{label} {measured[m]:.4f}" for m, label in labels.items())}; batch-1 p50
{measured['latency_real']['p50_ms']:.3f} ms (tokenization included); {measured['size_mb']:.1f} MB.

    bertpress predict <this directory> "some text"      # {{"embedding": [...]}}
    bertpress index <this directory> --input corpus.jsonl --out idx/
""")
    bundle_format.write_checksums(target)
    return metadata


def vocabulary_note(trim) -> str:
    """What the model card says unseen words become under the configured vocabulary cut."""
    if not trim.enabled:
        return "Full teacher vocabulary."
    if trim.share_rows:
        return (f"{trim.max_tokens} embedding rows kept; every other word piece reads its most similar kept "
                "row, so words are split as the teacher splits them.")
    return ("The vocabulary was trimmed to the words of the training data: unseen words fall back to word "
            "pieces and single characters.")
