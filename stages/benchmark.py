"""benchmark stage: every variant (teacher/student, PyTorch/ONNX/INT8, Optimum's stock INT8
teacher) measured by the same code in the same process: the task's test metrics (its primary metric
first), batch-1 latency p50/p90/p99 on real test sentences (unpadded) and padded to each configured
length, throughput at the throughput batch size, and size.

Also: resident memory per variant, CPU ISA flags, the Pareto front, and a sweep over batch size x
sequence length x threads for the configured variants.
Writes: benchmark.json, results.md (the full tables), accuracy_vs_latency.png (with the Pareto
front), latency_vs_length.png.
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import torch
from transformers import AutoTokenizer

from pipeline.stage import StageContext, StageResult
from stages._fp16 import io_bound
from stages._hf import MODEL_INPUTS, dir_size_mb, load_model, load_splits_dir, save_json
from stages._onnx import (
    cpu_features,
    file_mb,
    interleaved_rounds,
    latency_stats,
    make_session,
    providers,
    real_sentence_latency,
    rows_per_batch,
    session_feed,
    time_calls,
)
from stages._stats import paired_bootstrap_gap
from stages.tasks import get_task
from stages.tasks.base import Task, predict_rows

Batch = dict[str, np.ndarray]


@dataclass
class Variant:
    name: str
    runtime: str  # "pytorch" | "onnxruntime"
    path: Path
    size_mb: float
    predict: Callable[[Batch], np.ndarray]
    tokenizer_dir: Path  # each model is fed by its own tokenizer (a trimmed vocabulary differs)


def pytorch_variant(name: str, model_dir: Path, task: Task, threads: int | None = None) -> Variant:
    model = load_model(model_dir, task.auto_model).eval()

    def predict(batch: Batch) -> np.ndarray:
        if threads:
            torch.set_num_threads(threads)
        with torch.inference_mode():
            return model(**{k: torch.from_numpy(v) for k, v in batch.items()}).logits.numpy()

    return Variant(name, "pytorch", model_dir, dir_size_mb(model_dir / "model.safetensors"), predict, model_dir)


def onnx_variant(name: str, path: Path, ctx: StageContext, tokenizer_dir: Path | None = None,
                 threads: int | None = None, io_binding: bool = False,
                 stock_of: tuple[Task, Path] | None = None) -> Variant:
    """An ONNX graph of ours (output "logits"), or with `stock_of` (task, teacher dir) Optimum's
    stock export, whose outputs the task turns into its own."""
    session = make_session(path, ctx.cfg.runtime, threads=threads)

    def run(batch: Batch) -> np.ndarray:
        return session.run(["logits"], session_feed(session, batch))[0]

    predict = io_bound(session) if io_binding else run
    if stock_of is not None:
        predict = stock_of[0].stock_predictor(session, stock_of[1])

    provider = session.get_providers()[0].replace("ExecutionProvider", "")
    return Variant(name, f"onnxruntime-{provider.lower()}", path, file_mb(path), predict,
                   tokenizer_dir or path.parent)


def fixed_length_batch(tokenizer, texts: list, length: int) -> Batch:
    pairs = bool(texts) and isinstance(texts[0], list | tuple)
    first = [t[0] for t in texts] if pairs else texts
    second = [t[1] for t in texts] if pairs else None
    enc = tokenizer(first, second, padding="max_length", truncation=True, max_length=length, return_tensors="np")
    return {k: v.astype(np.int64) for k, v in enc.items() if k in MODEL_INPUTS}


def real_batch(tokenizer, texts: list, max_length: int) -> Batch:
    """Real texts padded to the longest of them (dynamic padding, as a batch job runs)."""
    pairs = bool(texts) and isinstance(texts[0], list | tuple)
    enc = tokenizer([t[0] for t in texts] if pairs else texts, [t[1] for t in texts] if pairs else None,
                    padding=True, truncation=True, max_length=max_length, return_tensors="np")
    return {k: v.astype(np.int64) for k, v in enc.items() if k in MODEL_INPUTS}


def batched_encoder(variant: Variant, tokenizer, max_length: int,
                    batch_size: int = 64) -> Callable[[list[str]], np.ndarray]:
    """texts -> the variant's outputs, tokenized straight into padded batches (what a search
    service pays per query: no dataset is built per call)."""

    def encode(texts: list[str]) -> np.ndarray:
        return np.concatenate([variant.predict(real_batch(tokenizer, texts[start:start + batch_size], max_length))
                               for start in range(0, len(texts), batch_size)])

    return encode


def retrieval_timings(encode: Callable[[list[str]], np.ndarray], documents: list[str], queries: list[str],
                      k: int, iterations: int) -> dict[str, float]:
    """What a search service costs: building an exact FAISS index of the corpus (every document
    encoded, in batches) and answering a query (encode it, search the top k), per query."""
    import time

    import faiss

    start = time.perf_counter()
    vectors = np.ascontiguousarray(encode(documents), dtype=np.float32)
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    build_s = time.perf_counter() - start
    cursor = iter(range(10**9))
    ms = time_calls(lambda: index.search(np.ascontiguousarray(encode([queries[next(cursor) % len(queries)]]),
                                                              dtype=np.float32), k), 2, iterations)
    stats = latency_stats(ms)
    # The approximate option (bertpress index --hnsw): what it finds of the exact top k.
    sample = np.ascontiguousarray(encode(queries[:500]), dtype=np.float32)
    hnsw = faiss.IndexHNSWFlat(vectors.shape[1], 32, faiss.METRIC_INNER_PRODUCT)
    hnsw.hnsw.efSearch = 64
    hnsw.add(vectors)
    depth = min(k, len(documents))
    exact_ids, approx_ids = index.search(sample, depth)[1], hnsw.search(sample, depth)[1]
    recall = float(np.mean([len(set(e) & set(a)) / depth for e, a in zip(exact_ids, approx_ids, strict=True)]))
    return {"documents": float(len(documents)), "index_build_s": build_s, "query_p50_ms": stats["p50_ms"],
            "query_p99_ms": stats["p99_ms"], f"hnsw_recall_at_{k}_vs_exact": recall}


def measure(variant: Variant, test, texts: list, bcfg, task: Task,
            log) -> tuple[dict[str, object], list[np.ndarray], Any, Any]:
    """The variant's test metrics and timings, its outputs on the test rows, its per-example
    scores (None where the task has none) and the test features it read."""
    tokenizer = AutoTokenizer.from_pretrained(variant.tokenizer_dir)
    features = task.features(test, tokenizer)
    # One row at a time through dynamic INT8, whose outputs depend on their batch-mates.
    batch_size = rows_per_batch(variant.path) if variant.runtime.startswith("onnxruntime") else 64
    rows = predict_rows(variant.predict, features, tokenizer, batch_size=batch_size, desc=f"{variant.name} on test")
    result, scores = task.evaluate(rows, features)
    corpus = task.corpus_texts(test)
    if corpus is not None:  # retrieval: what indexing the corpus and answering a query cost
        result["retrieval"] = retrieval_timings(batched_encoder(variant, tokenizer, task.cfg.data.max_length),
                                                corpus[1], corpus[0], task.k, bcfg.iterations)
    result |= {"runtime": variant.runtime, "size_mb": variant.size_mb, "path": str(variant.path)}
    max_length = task.cfg.data.max_length

    result["latency_real"] = real_sentence_latency(
        variant.predict, tokenizer, texts, max_length, bcfg.warmup, bcfg.iterations)
    result["by_length"] = {}
    for length in bcfg.seq_lengths:
        one = fixed_length_batch(tokenizer, texts[: bcfg.latency_batch_size], length)
        many = fixed_length_batch(tokenizer, (texts * bcfg.throughput_batch_size)[: bcfg.throughput_batch_size], length)
        lat = time_calls(lambda one=one: variant.predict(one), bcfg.warmup, bcfg.iterations)
        thr = time_calls(lambda many=many: variant.predict(many), min(bcfg.warmup, 2), bcfg.throughput_iterations)
        result["by_length"][str(length)] = latency_stats(lat) | {
            "throughput_per_s": bcfg.throughput_batch_size / (np.median(thr) / 1000.0)
        }
    result["throughput_real"] = {}
    for size in bcfg.real_batch_sizes:
        batches = [real_batch(tokenizer, (texts * size)[start:start + size], max_length)
                   for start in range(0, max(len(texts), size), size)][:8]
        cursor = iter(range(10**9))
        ms = time_calls(lambda b=batches, c=cursor: variant.predict(b[next(c) % len(b)]),
                        min(bcfg.warmup, 2), bcfg.throughput_iterations)
        result["throughput_real"][str(size)] = size / (np.median(ms) / 1000.0)
    log.info("%-22s %s %.4f  p50 %.2f ms (real)  %.1f MB", variant.name, task.primary_metric,
             result[task.primary_metric], result["latency_real"]["p50_ms"], variant.size_mb)
    return result, rows, scores, features


def measure_static(folder: Path, test, texts: list, bcfg, task: Task, log) -> tuple[dict, list[np.ndarray]]:
    """A static (Model2Vec) model through bertpress.static, as its bundle runs: metrics, batch-1
    latency per real text and throughput on real texts, tokenization included (it is most of the
    work); no padded-length timings (it reads texts, not ids)."""
    import json

    from bertpress.static import STATIC_FILE, StaticVectors

    encoder = StaticVectors(folder, json.loads((folder / "static.json").read_text()), "tokenizer.json")
    row_texts = task.rows_of(test)[0]
    vectors = encoder.encode(row_texts)
    result: dict = task.score_vectors(lambda _: vectors, test)
    cursor = iter(range(10**9))
    ms = time_calls(lambda: encoder.encode([texts[next(cursor) % len(texts)]]), bcfg.warmup, bcfg.iterations)
    result |= {"runtime": "numpy (bertpress.static)", "size_mb": file_mb(folder / STATIC_FILE), "path": str(folder),
               "latency_real": latency_stats(ms), "by_length": {}, "throughput_real": {}}
    for size in bcfg.real_batch_sizes:
        batch = (texts * size)[:size]
        result["throughput_real"][str(size)] = size / (np.median(time_calls(
            lambda b=batch: encoder.encode(b), 1, bcfg.throughput_iterations)) / 1000.0)
    corpus = task.corpus_texts(test)
    if corpus is not None:
        result["retrieval"] = retrieval_timings(encoder.encode, corpus[1], corpus[0], task.k, bcfg.iterations)
    log.info("%-22s %s %.4f  p50 %.3f ms (real, tokenization included)  %.1f MB", "static-model2vec",
             task.primary_metric, result[task.primary_metric], result["latency_real"]["p50_ms"], result["size_mb"])
    return result, list(vectors)


def markdown_table(results: dict[str, dict], bcfg, baseline: str, metric_labels: dict[str, str]) -> str:
    lengths = [str(n) for n in bcfg.seq_lengths]
    head = ["variant", "runtime", *(f"test {label}" for label in metric_labels.values()),
            "p50 ms (real, bs1)", "p99 ms (real, bs1)"]
    head += [f"p50 ms (len {n}, bs{bcfg.latency_batch_size})" for n in lengths]
    head += [f"throughput/s (len {n}, bs{bcfg.throughput_batch_size})" for n in lengths]
    head += [f"texts/s (real, bs{n})" for n in bcfg.real_batch_sizes]
    head += ["size MB", f"speed-up vs {baseline}"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    base_p50 = results[baseline]["latency_real"]["p50_ms"] if baseline in results else None
    for name, r in results.items():
        cells = [name, r["runtime"], *(f"{r[m]:.4f}" for m in metric_labels),
                 f"{r['latency_real']['p50_ms']:.2f}", f"{r['latency_real']['p99_ms']:.2f}"]
        cells += [f"{r['by_length'][n]['p50_ms']:.2f}" if n in r["by_length"] else "n/a" for n in lengths]
        cells += [f"{r['by_length'][n]['throughput_per_s']:.0f}" if n in r["by_length"] else "n/a" for n in lengths]
        cells += [f"{r['throughput_real'][str(n)]:.0f}" for n in bcfg.real_batch_sizes]
        speed = f"{base_p50 / r['latency_real']['p50_ms']:.1f}x" if base_p50 else "n/a"
        cells += [f"{r['size_mb']:.1f}", speed]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows) + "\n"


def plot(results: dict[str, dict], path: Path, front: list[str], metric: str, label: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, r in results.items():
        x, y = r["latency_real"]["p50_ms"], r[metric]
        ax.scatter(x, y, s=30 + 4 * r["size_mb"], alpha=0.7)
        ax.annotate(f"{name} ({r['size_mb']:.0f} MB)", (x, y), textcoords="offset points", xytext=(6, 4), fontsize=8)
    frontier = [(results[n]["latency_real"]["p50_ms"], results[n][metric]) for n in front]
    ax.step(*zip(*frontier, strict=True), where="post", color="grey", linestyle="--", label="Pareto front")
    ax.legend(fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("batch-1 p50 latency on real test sentences (ms, log scale)")
    ax.set_ylabel(f"test {label}")
    ax.set_title(f"{label} vs latency (marker area ~ size)")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def rss_mb() -> float:
    return psutil.Process().memory_info().rss / 1e6


def sweep(make: Callable[[int | None], Variant], scfg, texts: list[str], log) -> dict[str, dict]:
    """p50 latency and throughput for every threads x batch size x length (padded inputs)."""
    out: dict[str, dict] = {}
    for threads in scfg.threads:
        n = threads or os.cpu_count()
        variant = make(n)
        tokenizer = AutoTokenizer.from_pretrained(variant.tokenizer_dir)
        for bs in scfg.batch_sizes:
            for length in scfg.seq_lengths:
                batch = fixed_length_batch(tokenizer, (texts * bs)[:bs], length)
                ms = time_calls(lambda b=batch, f=variant.predict: f(b), scfg.warmup, scfg.iterations)
                p50 = float(np.percentile(ms, 50))
                out[f"t{n}/bs{bs}/len{length}"] = {"threads": n, "batch_size": bs, "seq_length": length,
                                                   "p50_ms": p50, "throughput_per_s": bs / (p50 / 1000)}
        log.info("sweep %-20s threads=%d done", variant.name, n)
        del variant
    return out


def pareto_front(points: dict[str, tuple[float, float]]) -> list[str]:
    """Names of the points no other point beats on both latency (lower) and the primary metric
    (higher)."""
    front, best = [], -1.0
    for name, (_latency, accuracy) in sorted(points.items(), key=lambda kv: (kv[1][0], -kv[1][1])):
        if accuracy > best:
            front.append(name)
            best = accuracy
    return front


def plot_length(sweeps: dict[str, dict], results: dict[str, dict], path: Path, threads: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, r in results.items():
        if name in sweeps:
            pts = sorted((v["seq_length"], v["p50_ms"]) for v in sweeps[name].values()
                         if v["batch_size"] == 1 and v["threads"] == threads)
        else:
            pts = sorted((int(n), v["p50_ms"]) for n, v in r["by_length"].items())
        if pts:
            ax.plot(*zip(*pts, strict=True), marker="o", label=name)
    ax.set_xlabel("sequence length (tokens, padded)")
    ax.set_ylabel("batch-1 p50 latency (ms)")
    ax.set_yscale("log")
    ax.set_title(f"latency vs sequence length ({threads} threads)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def sweep_markdown(sweeps: dict[str, dict]) -> str:
    lines = []
    for name, cells in sweeps.items():
        lengths = sorted({c["seq_length"] for c in cells.values()})
        lines += [f"\n### {name}: p50 ms (throughput/s) by batch size and length\n",
                  "| threads | batch | " + " | ".join(f"len {n}" for n in lengths) + " |",
                  "|---|---|" + "---|" * len(lengths)]
        for threads in sorted({c["threads"] for c in cells.values()}):
            for bs in sorted({c["batch_size"] for c in cells.values()}):
                row = [cells[f"t{threads}/bs{bs}/len{n}"] for n in lengths]
                lines.append(f"| {threads} | {bs} | " + " | ".join(
                    f"{c['p50_ms']:.2f} ({c['throughput_per_s']:.0f})" for c in row) + " |")
    return "\n".join(lines) + "\n"


def run(ctx: StageContext) -> StageResult:
    cfg, bcfg = ctx.cfg, ctx.cfg.benchmark
    task = get_task(cfg)
    metric, labels = task.primary_metric, task.metric_labels
    if cfg.runtime.threads:
        torch.set_num_threads(cfg.runtime.threads)
    test = load_splits_dir(ctx.path("dataset"))["test"]
    if bcfg.max_eval_samples and len(test) > bcfg.max_eval_samples:
        test = test.select(range(bcfg.max_eval_samples))
    texts = task.timing_inputs(test)[: max(bcfg.iterations, bcfg.throughput_batch_size, *bcfg.real_batch_sizes)]

    teacher_dir = ctx.path("teacher_model")
    builders: dict[str, Callable[[int | None], Variant]] = {
        "teacher-pytorch": lambda t: pytorch_variant("teacher-pytorch", teacher_dir, task, t),
        "teacher-onnx": lambda t: onnx_variant("teacher-onnx", ctx.path("teacher_best"), ctx, threads=t),
        "teacher-stock-int8": lambda t: onnx_variant(
            "teacher-stock-int8", ctx.path("stock_int8"), ctx, teacher_dir, t, stock_of=(task, teacher_dir)),
        "student-pytorch": lambda t: pytorch_variant("student-pytorch", ctx.path("student_model"), task, t),
        "student-onnx": lambda t: onnx_variant("student-onnx", ctx.path("student_best"), ctx, threads=t),
        "student-int8": lambda t: onnx_variant("student-int8", ctx.path("student_int8"), ctx, threads=t),
    }
    if ctx.has("student_fp16") and "CUDAExecutionProvider" in providers(cfg.runtime):
        # fp16 pays only on a GPU: measured there, with IO binding; skipped on CPU-only machines.
        builders["student-fp16"] = lambda t: onnx_variant(
            "student-fp16", ctx.path("student_fp16"), ctx, ctx.path("student_fp16_dir"), t, io_binding=True)
    if not bcfg.include_pytorch:
        builders = {n: b for n, b in builders.items() if not n.endswith("pytorch")}

    results: dict[str, dict] = {}
    rows: dict[str, list[np.ndarray]] = {}  # each variant's test outputs, for the agreement with the teacher
    scores: dict[str, Any] = {}  # each variant's per-example scores, for its gap to the teacher
    row_features = None
    for name, make in builders.items():
        before = rss_mb()
        variant = make(None)  # built one at a time so only one model is resident while timing
        results[name], rows[name], example_scores, features = measure(variant, test, texts, bcfg, task, ctx.log)
        if row_features is None:  # roles and labels of the test rows: the same for every variant
            row_features = features
        if example_scores is not None:
            scores[name] = example_scores
        results[name]["memory_mb"] = rss_mb() - before  # resident growth: model + session + buffers
        del variant
    if ctx.has("static_model"):  # the Model2Vec tier: texts in, vectors out, numpy only
        before = rss_mb()
        results["static-model2vec"], rows["static-model2vec"] = measure_static(
            ctx.path("static_model"), test, texts, bcfg, task, ctx.log)
        results["static-model2vec"]["memory_mb"] = rss_mb() - before
    reference = "teacher-pytorch" if "teacher-pytorch" in rows else "teacher-onnx"
    agreement = {name: task.compare_rows(rows[reference], r) for name, r in rows.items()}
    for name, compared in agreement.items():
        if compared:
            results[name]["agreement_with_teacher"] = compared
    gaps = quality_gaps(scores, reference, bcfg.bootstrap_resamples, cfg.project.seed)
    for name, gap in gaps.items():
        results[name]["gap_to_teacher"] = gap
    over_teacher_index = teacher_index_rows(task, test, row_features, rows, scores, reference,
                                            bcfg.bootstrap_resamples, cfg.project.seed)
    sweeps: dict[str, dict] = {}
    if bcfg.sweep.enabled:
        for name in bcfg.sweep.variants:
            sweeps[name] = sweep(builders[name], bcfg.sweep, texts, ctx.log)
    if cfg.runtime.threads:
        torch.set_num_threads(cfg.runtime.threads)
    paired = head_to_head(builders, texts, bcfg, cfg.data.max_length, ctx.log)

    baseline = "teacher-pytorch" if "teacher-pytorch" in results else "teacher-onnx"
    report = {
        "task": task.name, "primary_metric": metric, "metric_labels": labels,
        "cpu": cpu_features(), "threads": cfg.runtime.threads or os.cpu_count(),
        "test_examples": len(test), "baseline": baseline, "variants": results,
        "pareto_front": pareto_front({n: (r["latency_real"]["p50_ms"], r[metric]) for n, r in results.items()}),
        "sweep": sweeps, "settings": bcfg.model_dump(), "head_to_head": paired,
    }
    if over_teacher_index:
        report["over_teacher_index"] = over_teacher_index
    save_json(ctx.out / "benchmark.json", report)
    table = markdown_table(results, bcfg, baseline, labels)
    header = (f"Task: {task.name}. Test set: {len(test)} examples. CPU: {report['cpu']['model']} "
              f"({report['threads']} threads, AVX512-VNNI: {report['cpu']['avx512_vnni']}).\n\n")
    isa = ", ".join(f"{k}: {v}" for k, v in report["cpu"].items() if k not in ("model", "cores"))
    pareto = f"\nPareto front ({labels[metric]} vs batch-1 latency): {', '.join(report['pareto_front'])}.\n"
    references = task.reference_rows(test)
    if references:
        report["references"] = references
        save_json(ctx.out / "benchmark.json", report)
    extra = (head_to_head_markdown(paired) + references_markdown(references, labels)
             + gap_markdown(gaps, reference, labels[metric], bcfg.bootstrap_resamples)
             + agreement_markdown(results, reference) + retrieval_markdown(results)
             + teacher_index_markdown(over_teacher_index, reference, labels))
    extra += f"\n## Sweep\n{sweep_markdown(sweeps)}" if sweeps else ""
    search = ctx.read_json("search_result")
    outputs = {}
    if search.get("enabled"):
        report["search"] = search_summary(search)
        extra += search_markdown(search, labels[metric])
        plot_search(search, ctx.out / "search_pareto.png", labels[metric])
        outputs["search_plot"] = "search_pareto.png"
        ctx.tracker.log_artifact(ctx.out / "search_pareto.png")
        save_json(ctx.out / "benchmark.json", report)
    (ctx.out / "results.md").write_text(header + table + pareto + f"\nCPU features: {isa}.\n" + extra)
    plot(results, ctx.out / "accuracy_vs_latency.png", report["pareto_front"], metric, labels[metric])
    plot_length(sweeps, results, ctx.out / "latency_vs_length.png", report["threads"])
    for name in ("benchmark.json", "results.md", "accuracy_vs_latency.png", "latency_vs_length.png"):
        ctx.tracker.log_artifact(ctx.out / name)

    metrics: dict[str, float] = {}
    for name, r in results.items():
        metrics |= {f"bench/{name}/test_{m}": r[m] for m in labels}
        metrics[f"bench/{name}/size_mb"] = r["size_mb"]
        metrics[f"bench/{name}/latency_p50_ms"] = r["latency_real"]["p50_ms"]
        metrics[f"bench/{name}/latency_p99_ms"] = r["latency_real"]["p99_ms"]
        metrics[f"bench/{name}/memory_mb"] = r["memory_mb"]
        metrics |= {f"bench/{name}/teacher_{k}": v for k, v in r.get("agreement_with_teacher", {}).items()}
        metrics |= {f"bench/{name}/gap_to_teacher_{k}": v for k, v in r.get("gap_to_teacher", {}).items()
                    if k in ("gap", "low", "high")}
        metrics |= {f"bench/{name}/retrieval_{k}": v for k, v in r.get("retrieval", {}).items()}
        for size, per_s in r.get("throughput_real", {}).items():
            metrics[f"bench/{name}/throughput_real_per_s_bs{size}"] = per_s
        for length, stats in r["by_length"].items():
            metrics[f"bench/{name}/latency_p50_ms_len{length}"] = stats["p50_ms"]
            metrics[f"bench/{name}/throughput_per_s_len{length}"] = stats["throughput_per_s"]
    for name, r in references.items():
        metrics |= {f"bench/{name}/test_{m}": r[m] for m in labels if m in r}
    for name, r in over_teacher_index.items():
        metrics |= {f"bench/{name}/over_teacher_index_test_{m}": r[m] for m in labels}
        metrics |= {f"bench/{name}/over_teacher_index_gap_{k}": v for k, v in r.get("gap_to_teacher", {}).items()
                    if k in ("gap", "low", "high")}
    for name, cells in sweeps.items():
        for cell, v in cells.items():
            metrics[f"sweep/{name}/{cell}/p50_ms"] = v["p50_ms"]
    if paired is not None:
        metrics["bench/head_to_head/speedup_vs_stock_int8"] = paired["speedup"]
    return StageResult(
        metrics=metrics,
        outputs={"benchmark_report": "benchmark.json", "results_table": "results.md",
                 "pareto_plot": "accuracy_vs_latency.png", "length_plot": "latency_vs_length.png"} | outputs,
    )


HEAD_TO_HEAD = ("student-int8", "teacher-stock-int8")  # the shipped student and the baseline it must beat


def head_to_head(builders: dict, texts: list, bcfg, max_length: int, log) -> dict | None:
    """The shipped student vs Optimum's stock INT8 teacher, batch 1 on real inputs, taking turns
    round by round (stages._onnx.interleaved_rounds): the speed-up under the same machine load."""
    if bcfg.head_to_head_rounds == 0 or not all(n in builders for n in HEAD_TO_HEAD):
        return None
    variants = {n: builders[n](None) for n in HEAD_TO_HEAD}
    rounds = interleaved_rounds({n: v.predict for n, v in variants.items()},
                                {n: AutoTokenizer.from_pretrained(v.tokenizer_dir) for n, v in variants.items()},
                                texts, max_length, bcfg.head_to_head_rounds, bcfg.iterations, bcfg.warmup)
    p50 = {n: statistics.median(r) for n, r in rounds.items()}
    student, stock = HEAD_TO_HEAD
    result = {"student": student, "reference": stock, "rounds": bcfg.head_to_head_rounds,
              "iterations": bcfg.iterations, "rounds_p50_ms": rounds, "p50_ms": p50,
              "speedup": p50[stock] / p50[student]}
    log.info("head to head, %d interleaved rounds: %s p50 %.2f ms, %s %.2f ms: %.2fx", bcfg.head_to_head_rounds,
             student, p50[student], stock, p50[stock], result["speedup"])
    return result


def head_to_head_markdown(result: dict | None) -> str:
    if result is None:
        return ""
    student, stock = result["student"], result["reference"]
    per_round = ", ".join(f"{a / b:.2f}" for a, b in zip(result["rounds_p50_ms"][stock],
                                                          result["rounds_p50_ms"][student], strict=True))
    return (f"\n## Head to head (batch 1, real inputs, {result['rounds']} interleaved rounds of "
            f"{result['iterations']} calls)\n\n{student} p50 {result['p50_ms'][student]:.2f} ms vs {stock} "
            f"{result['p50_ms'][stock]:.2f} ms: **{result['speedup']:.2f}x** (per round: {per_round}). The rows "
            "above time each variant in a block of its own; this is the ratio under the same machine load.\n")


def references_markdown(references: dict[str, dict[str, float]], labels: dict[str, str]) -> str:
    """Systems beside the variants (no model timed), e.g. the retriever a re-ranker improves on."""
    if not references:
        return ""
    lines = ["\n## Without the model\n", "| system | " + " | ".join(f"test {label}" for label in labels.values()) + " |",
             "|---|" + "---|" * len(labels)]
    lines += [f"| {name} | " + " | ".join(f"{r[m]:.4f}" if m in r else "n/a" for m in labels) + " |"
              for name, r in references.items()]
    return "\n".join(lines) + "\n"


def retrieval_markdown(results: dict[str, dict]) -> str:
    rows = {n: r["retrieval"] for n, r in results.items() if "retrieval" in r}
    if not rows:
        return ""
    documents = int(next(iter(rows.values()))["documents"])
    recall = next(key for key in next(iter(rows.values())) if key.startswith("hnsw_recall"))
    lines = [f"\n## Retrieval service: exact FAISS index of the {documents} test documents\n",
             "| variant | index build s (encode all + add) | query p50 ms (encode + top-k) | query p99 ms | "
             f"HNSW {recall.removeprefix('hnsw_').replace('_at_', '@').replace('_vs_exact', '')} vs exact |",
             "|---|---|---|---|---|"]
    lines += [f"| {n} | {v['index_build_s']:.2f} | {v['query_p50_ms']:.2f} | {v['query_p99_ms']:.2f} | {v[recall]:.4f} |"
              for n, v in rows.items()]
    return "\n".join(lines) + "\n"


def teacher_index_rows(task: Task, test, features, rows: dict[str, list[np.ndarray]],
                       scores: dict[str, Any], reference: str, resamples: int, seed: int) -> dict[str, dict]:
    """Each variant answering the test queries over the reference teacher's document vectors: a
    dual encoder deployed asymmetrically, the corpus embedded once by the large model and only the
    queries by the small one, per request (Campos et al. 2023, "Quick dense retrievers consume
    KALE"). Metrics and the gap to the teacher, from outputs already computed (no inference);
    {} where the task has no such split or a variant's vectors live in another space."""
    if reference not in rows or task.corpus_texts(test) is None:  # no queries and documents
        return {}
    found: dict[str, dict] = {}
    for name, own in rows.items():
        mixed = None if name == reference else task.cross_encoded_rows(own, rows[reference], features)
        if mixed is None:
            continue
        metrics, per_query = task.evaluate(mixed, features)
        found[name] = dict(metrics)
        if per_query is not None and resamples and reference in scores:
            found[name]["gap_to_teacher"] = paired_bootstrap_gap(scores[reference], per_query, resamples, seed)
    return found


def teacher_index_markdown(found: dict[str, dict], reference: str, labels: dict[str, str]) -> str:
    if not found:
        return ""
    lines = [f"\n## Queries over the teacher's index\nThe documents embedded once by {reference}; each "
             "variant embeds only the queries (its query latency above is unchanged: the same encode, the "
             "same search).\n",
             "| variant | " + " | ".join(labels.values()) + " | gap to the teacher, 95% interval |",
             "|---|" + "---|" * (len(labels) + 1)]
    for name, r in found.items():
        gap = r.get("gap_to_teacher")
        cell = f"{100 * gap['gap']:+.2f} [{100 * gap['low']:+.2f}, {100 * gap['high']:+.2f}]" if gap else "n/a"
        lines.append(f"| {name} | " + " | ".join(f"{r[m]:.4f}" for m in labels) + f" | {cell} |")
    return "\n".join(lines) + "\n"


def quality_gaps(scores: dict[str, Any], reference: str, resamples: int, seed: int) -> dict[str, dict]:
    """Each variant's primary-metric gap to the reference teacher, with its paired bootstrap
    interval; {} when the task has no per-example scores or the bootstrap is off."""
    if not resamples or reference not in scores:
        return {}
    return {name: paired_bootstrap_gap(scores[reference], s, resamples, seed)
            for name, s in scores.items() if name != reference}


def gap_markdown(gaps: dict[str, dict], reference: str, label: str, resamples: int) -> str:
    """The gaps in points, and what the interval's width means for a quality target."""
    if not gaps:
        return ""
    lines = [f"\n## Gap to {reference} ({label}, points; paired bootstrap, {resamples} resamples)\n",
             "| variant | gap | 95% interval | examples scored differently |", "|---|---|---|---|"]
    lines += [f"| {n} | {100 * g['gap']:+.2f} | [{100 * g['low']:+.2f}, {100 * g['high']:+.2f}] | "
              f"{g['differ']:.1%} |" for n, g in gaps.items()]
    half = max(50 * (g["high"] - g["low"]) for g in gaps.values())
    lines.append(f"\nPositive: below the teacher. On these {int(next(iter(gaps.values()))['examples'])} test "
                 f"examples a gap is known to within about +-{half:.2f} points: a target tighter than that "
                 "cannot be confirmed (or refuted) by one benchmark run.")
    return "\n".join(lines) + "\n"


def agreement_markdown(results: dict[str, dict], reference: str) -> str:
    """Each variant's outputs against the teacher's on the same test inputs (tasks that compare)."""
    rows = {n: r["agreement_with_teacher"] for n, r in results.items() if "agreement_with_teacher" in r}
    if not rows:
        return ""
    keys = list(dict.fromkeys(k for v in rows.values() for k in v))
    lines = [f"\n## Agreement with {reference} (same test texts)\n", "| variant | " + " | ".join(keys) + " |",
             "|---|" + "---|" * len(keys)]
    lines += [f"| {n} | " + " | ".join(f"{v[k]:.4f}" if k in v else "n/a" for k in keys) + " |"
              for n, v in rows.items()]
    return "\n".join(lines) + "\n"


# -- the search's trials (validation, measured by the search stage) -------------------------------
def search_summary(search: dict) -> dict:
    keys = ("feasible", "message", "chosen", "teacher_metric", "floor", "objective", "pareto_front", "wall_s",
            "cpu_budget_s", "trials")
    return {k: search.get(k) for k in keys}


def search_markdown(search: dict, label: str) -> str:
    """Every trial the search tried, the Pareto front marked, the choice and the verdict."""
    front = {tuple(p) for p in search["pareto_front"]}
    chosen = (search["chosen"] or {}).get("number")
    lines = [f"\n## Search: {'within budget' if search['feasible'] else 'NO STUDENT WITHIN BUDGET'}\n",
             search["message"] + ".", "",
             f"Teacher validation {label} {search['teacher_metric']:.4f}, floor {search['floor']:.4f}; "
             f"objective: {search['objective']}; wall {search['wall_s']:.0f} s (CPU budget "
             f"{search['cpu_budget_s']:.0f} s). Proxy = short run, fp32; final = full length, INT8. "
             "Costs: the INT8 graph, batch 1, timed against the stock INT8 teacher in the same rounds.", "",
             f"| trial | phase | layers | FFN | hidden | vocab | recipe | steps | val {label} | p50 ms | "
             "speed-up vs stock INT8 | MB | front |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for t in search["trials"]:
        p = t["params"]
        vocab = "full" if p["max_tokens"] is None else f"{p['max_tokens']}{' shared' if p.get('share_rows') else ''}"
        recipe = p.get("recipe", p.get("recipe_budget", "logits")) + (" +aug" if p.get("augment") else "")
        metric = "-" if t["metric"] is None else f"{t['metric']:.4f}"
        speed = f"{t['speedup']:.2f}x" if t.get("speedup") else "-"
        mark = ("**chosen** " if t["phase"] == "final" and t["number"] == chosen else "") + \
            ("yes" if (t["phase"], t["number"]) in front else "")
        lines.append(f"| {t['number']} | {t['phase']} | {p['layers']} ({p['layer_choice']}) | "
                     f"{p['intermediate_size']} | {p['hidden_size'] or 'teacher'} | {vocab} | {recipe} | "
                     f"{t['extra'].get('steps', '-')} | {metric} | {t['latency_ms']:.3f} | {speed} | "
                     f"{t['size_mb']:.2f} | {mark} |")
    return "\n".join(lines) + "\n"


def plot_search(search: dict, path: Path, label: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    styles = {"proxy": ("o", "none"), "final": ("s", None), "over-limit": ("x", None)}
    for phase, (marker, face) in styles.items():
        pts = [(t["latency_ms"], t["metric"] if t["metric"] is not None else search["floor"])
               for t in search["trials"] if t["phase"] == phase]
        if pts:
            ax.scatter(*zip(*pts, strict=True), marker=marker, label=phase,
                       **({"facecolors": face, "edgecolors": "C0"} if face else {}))
    by_id = {(t["phase"], t["number"]): t for t in search["trials"]}
    front = sorted((by_id[tuple(p)]["latency_ms"], by_id[tuple(p)]["metric"]) for p in search["pareto_front"])
    if front:
        ax.step(*zip(*front, strict=True), where="post", color="grey", linestyle="--", label="Pareto front")
    ax.axhline(search["floor"], color="red", linewidth=0.8, label="budget floor")
    chosen = search.get("chosen")
    if chosen:
        t = by_id[("final", chosen["number"])]
        ax.scatter([t["latency_ms"]], [t["metric"]], marker="*", s=200, color="gold", edgecolors="k", label="chosen")
    ax.set_xlabel("INT8 batch-1 p50 latency (ms)")
    ax.set_ylabel(f"validation {label}")
    ax.set_title("students the search tried")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
