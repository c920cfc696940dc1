"""benchmark stage: every variant (teacher/student, PyTorch/ONNX/INT8) measured by the same code
in the same process: test accuracy and macro-F1, batch-1 latency p50/p90/p99 on real test sentences
(unpadded) and padded to each configured length, throughput at the throughput batch size, and size.

Writes: benchmark.json, results.md (the table `make run` prints), accuracy_vs_latency.png.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from transformers import AutoTokenizer

from pipeline.stage import StageContext, StageResult
from stages._hf import (
    classification_metrics,
    dir_size_mb,
    load_classifier,
    load_tokenized,
    save_json,
)
from stages._onnx import cpu_features, file_mb, make_session, padded_batches, session_feed

Batch = dict[str, np.ndarray]


@dataclass
class Variant:
    name: str
    runtime: str  # "pytorch" | "onnxruntime"
    path: Path
    size_mb: float
    predict: Callable[[Batch], np.ndarray]
    tokenizer_dir: Path  # each model is fed by its own tokenizer (a trimmed vocabulary differs)


def pytorch_variant(name: str, model_dir: Path) -> Variant:
    model = load_classifier(model_dir).eval()

    def predict(batch: Batch) -> np.ndarray:
        with torch.inference_mode():
            return model(**{k: torch.from_numpy(v) for k, v in batch.items()}).logits.numpy()

    return Variant(name, "pytorch", model_dir, dir_size_mb(model_dir / "model.safetensors"), predict, model_dir)


def onnx_variant(name: str, path: Path, ctx: StageContext, tokenizer_dir: Path | None = None) -> Variant:
    session = make_session(path, ctx.cfg.runtime)

    def predict(batch: Batch) -> np.ndarray:
        return session.run(["logits"], session_feed(session, batch))[0]

    provider = session.get_providers()[0].replace("ExecutionProvider", "")
    return Variant(name, f"onnxruntime-{provider.lower()}", path, file_mb(path), predict,
                   tokenizer_dir or path.parent)


def time_calls(fn: Callable[[], object], warmup: int, iterations: int) -> np.ndarray:
    for _ in range(warmup):
        fn()
    times = np.empty(iterations)
    for i in range(iterations):
        start = time.perf_counter()
        fn()
        times[i] = time.perf_counter() - start
    return times * 1000.0  # ms


def fixed_length_batch(tokenizer, texts: list[str], length: int) -> Batch:
    enc = tokenizer(texts, padding="max_length", truncation=True, max_length=length, return_tensors="np")
    return {k: v.astype(np.int64) for k, v in enc.items()}


def latency_stats(ms: np.ndarray) -> dict[str, float]:
    return {f"p{q}_ms": float(np.percentile(ms, q)) for q in (50, 90, 99)} | {"mean_ms": float(ms.mean())}


def measure(variant: Variant, test, texts: list[str], bcfg, max_length: int, log) -> dict[str, object]:
    tokenizer = AutoTokenizer.from_pretrained(variant.tokenizer_dir)
    logits, labels = [], []
    for batch, y in padded_batches(test, tokenizer, 64, max_length):
        logits.append(variant.predict(batch))
        labels.append(y)
    result: dict[str, object] = classification_metrics(np.concatenate(logits), np.concatenate(labels))
    result |= {"runtime": variant.runtime, "size_mb": variant.size_mb, "path": str(variant.path)}

    # Batch-1 latency on real sentences, each at its own length (what a request really costs).
    singles = [tokenizer([t], truncation=True, max_length=max_length, return_tensors="np") for t in texts]
    singles = [{k: v.astype(np.int64) for k, v in s.items()} for s in singles]
    cursor = iter(range(10**9))
    real = time_calls(lambda: variant.predict(singles[next(cursor) % len(singles)]), bcfg.warmup, bcfg.iterations)
    result["latency_real"] = latency_stats(real)
    result["by_length"] = {}
    for length in bcfg.seq_lengths:
        one = fixed_length_batch(tokenizer, texts[: bcfg.latency_batch_size], length)
        many = fixed_length_batch(tokenizer, (texts * bcfg.throughput_batch_size)[: bcfg.throughput_batch_size], length)
        lat = time_calls(lambda one=one: variant.predict(one), bcfg.warmup, bcfg.iterations)
        thr = time_calls(lambda many=many: variant.predict(many), min(bcfg.warmup, 2), bcfg.throughput_iterations)
        result["by_length"][str(length)] = latency_stats(lat) | {
            "throughput_per_s": bcfg.throughput_batch_size / (np.median(thr) / 1000.0)
        }
    log.info("%-22s acc %.4f  p50 %.2f ms (real)  %.1f MB", variant.name, result["accuracy"],
             result["latency_real"]["p50_ms"], variant.size_mb)
    return result


def markdown_table(results: dict[str, dict], bcfg, baseline: str) -> str:
    lengths = [str(n) for n in bcfg.seq_lengths]
    head = ["variant", "runtime", "test acc", "macro-F1", "p50 ms (real, bs1)", "p99 ms (real, bs1)"]
    head += [f"p50 ms (len {n}, bs{bcfg.latency_batch_size})" for n in lengths]
    head += [f"throughput/s (len {n}, bs{bcfg.throughput_batch_size})" for n in lengths]
    head += ["size MB", f"speed-up vs {baseline}"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    base_p50 = results[baseline]["latency_real"]["p50_ms"] if baseline in results else None
    for name, r in results.items():
        cells = [name, r["runtime"], f"{r['accuracy']:.4f}", f"{r['macro_f1']:.4f}",
                 f"{r['latency_real']['p50_ms']:.2f}", f"{r['latency_real']['p99_ms']:.2f}"]
        cells += [f"{r['by_length'][n]['p50_ms']:.2f}" for n in lengths]
        cells += [f"{r['by_length'][n]['throughput_per_s']:.0f}" for n in lengths]
        speed = f"{base_p50 / r['latency_real']['p50_ms']:.1f}x" if base_p50 else "n/a"
        cells += [f"{r['size_mb']:.1f}", speed]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows) + "\n"


def plot(results: dict[str, dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, r in results.items():
        x, y = r["latency_real"]["p50_ms"], r["accuracy"]
        ax.scatter(x, y, s=30 + 4 * r["size_mb"], alpha=0.7)
        ax.annotate(f"{name} ({r['size_mb']:.0f} MB)", (x, y), textcoords="offset points", xytext=(6, 4), fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("batch-1 p50 latency on real test sentences (ms, log scale)")
    ax.set_ylabel("test accuracy")
    ax.set_title("accuracy vs latency (marker area ~ size)")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(ctx: StageContext) -> StageResult:
    cfg, bcfg = ctx.cfg, ctx.cfg.benchmark
    if cfg.runtime.threads:
        torch.set_num_threads(cfg.runtime.threads)
    data = ctx.input("data")
    test = load_tokenized(data)["test"]
    if bcfg.max_eval_samples and len(test) > bcfg.max_eval_samples:
        test = test.select(range(bcfg.max_eval_samples))
    texts = list(test["text"][: max(bcfg.iterations, bcfg.throughput_batch_size)])

    export, quantize = ctx.input("export"), ctx.input("quantize")
    variants: list[Callable[[], Variant]] = []
    if bcfg.include_pytorch:
        variants.append(lambda: pytorch_variant("teacher-pytorch", ctx.input("finetune").output("model")))
    variants.append(lambda: onnx_variant("teacher-onnx", export.output("teacher_best"), ctx))
    variants.append(lambda: onnx_variant("teacher-stock-int8", ctx.input("baseline").output("stock_int8"),
                                         ctx, ctx.input("finetune").output("model")))
    if bcfg.include_pytorch:
        variants.append(lambda: pytorch_variant("student-pytorch", ctx.input("distill").output("model")))
    variants.append(lambda: onnx_variant("student-onnx", export.output("student_best"), ctx))
    variants.append(lambda: onnx_variant("student-int8", quantize.output("student_int8"), ctx))

    results: dict[str, dict] = {}
    for make in variants:
        variant = make()  # built one at a time so only one model is resident while timing
        results[variant.name] = measure(variant, test, texts, bcfg, cfg.data.max_length, ctx.log)
        del variant

    baseline = "teacher-pytorch" if "teacher-pytorch" in results else "teacher-onnx"
    report = {
        "cpu": cpu_features(), "threads": cfg.runtime.threads or os.cpu_count(),
        "test_examples": len(test), "baseline": baseline, "variants": results,
        "settings": bcfg.model_dump(),
    }
    save_json(ctx.out / "benchmark.json", report)
    table = markdown_table(results, bcfg, baseline)
    header = (f"Test set: {len(test)} examples. CPU: {report['cpu']['model']} "
              f"({report['threads']} threads, AVX512-VNNI: {report['cpu']['avx512_vnni']}).\n\n")
    (ctx.out / "results.md").write_text(header + table)
    plot(results, ctx.out / "accuracy_vs_latency.png")
    for name in ("benchmark.json", "results.md", "accuracy_vs_latency.png"):
        ctx.tracker.log_artifact(ctx.out / name)

    metrics: dict[str, float] = {}
    for name, r in results.items():
        metrics[f"bench/{name}/test_accuracy"] = r["accuracy"]
        metrics[f"bench/{name}/size_mb"] = r["size_mb"]
        metrics[f"bench/{name}/latency_p50_ms"] = r["latency_real"]["p50_ms"]
        metrics[f"bench/{name}/latency_p99_ms"] = r["latency_real"]["p99_ms"]
        for length, stats in r["by_length"].items():
            metrics[f"bench/{name}/latency_p50_ms_len{length}"] = stats["p50_ms"]
            metrics[f"bench/{name}/throughput_per_s_len{length}"] = stats["throughput_per_s"]
    return StageResult(
        metrics=metrics,
        outputs={"report": "benchmark.json", "table": "results.md", "plot": "accuracy_vs_latency.png"},
    )
