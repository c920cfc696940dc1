"""Shared ONNX Runtime helpers: sessions, padded numpy batches, scoring, graph statistics."""

from __future__ import annotations

import os
import platform
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from datasets import Dataset
from transformers import PreTrainedTokenizerBase

from pipeline.config import RuntimeConfig
from stages._hf import MODEL_INPUTS


def providers(runtime: RuntimeConfig | None = None) -> list[str]:
    """CUDA first when onnxruntime-gpu sees a GPU (unless runtime.device=cpu), CPU always."""
    available = ort.get_available_providers()
    chosen = []
    if "CUDAExecutionProvider" in available and (runtime is None or runtime.device != "cpu"):
        chosen.append("CUDAExecutionProvider")
    chosen.append("CPUExecutionProvider")
    return chosen


def make_session(
    path: Path, runtime: RuntimeConfig | None = None, threads: int | None = None,
    provider_list: list[str] | None = None,
) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    n = threads if threads is not None else (runtime.threads if runtime else 0)
    if n:
        opts.intra_op_num_threads = n
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=opts, providers=provider_list or providers(runtime))


def padded_batches(
    ds: Dataset, tokenizer: PreTrainedTokenizerBase, batch_size: int, max_length: int
) -> Iterator[tuple[dict[str, np.ndarray], np.ndarray]]:
    """Yield (inputs as int64, padded to the longest in the batch, labels), tokenizing the raw text
    with the given model's own tokenizer (a vocabulary-trimmed student has different ids)."""
    for start in range(0, len(ds), batch_size):
        rows = ds[start : start + batch_size]
        enc = tokenizer(rows["text"], rows.get("text_pair"), padding=True, truncation=True,
                        max_length=max_length, return_tensors="np")
        yield {k: v.astype(np.int64) for k, v in enc.items() if k in MODEL_INPUTS}, np.asarray(rows["label"])


def session_feed(session: ort.InferenceSession, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    names = {i.name for i in session.get_inputs()}
    return {k: v for k, v in batch.items() if k in names}


def onnx_logits(
    session: ort.InferenceSession, ds: Dataset, tokenizer, max_length: int, batch_size: int = 64
) -> tuple[np.ndarray, np.ndarray]:
    logits, labels = [], []
    for batch, y in padded_batches(ds, tokenizer, batch_size, max_length):
        logits.append(session.run(["logits"], session_feed(session, batch))[0])
        labels.append(y)
    return np.concatenate(logits), np.concatenate(labels)


def op_counts(path: Path) -> dict[str, int]:
    model = onnx.load(str(path), load_external_data=False)
    return dict(sorted(Counter(node.op_type for node in model.graph.node).items()))


def file_mb(path: Path) -> float:
    return Path(path).stat().st_size / 1e6


def cpu_features() -> dict[str, object]:
    """CPU model and the ISA features that decide INT8 speed (VNNI) and Optimum's quantization config."""
    flags: set[str] = set()
    model = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    return {
        "model": model, "cores": os.cpu_count(), "avx2": "avx2" in flags,
        "avx512": "avx512f" in flags, "avx512_vnni": "avx512_vnni" in flags, "avx_vnni": "avx_vnni" in flags,
        "amx": "amx_int8" in flags,
    }


def time_calls(fn: Callable[[], object], warmup: int, iterations: int) -> np.ndarray:
    for _ in range(warmup):
        fn()
    times = np.empty(iterations)
    for i in range(iterations):
        start = time.perf_counter()
        fn()
        times[i] = time.perf_counter() - start
    return times * 1000.0  # ms


def latency_stats(ms: np.ndarray) -> dict[str, float]:
    return {f"p{q}_ms": float(np.percentile(ms, q)) for q in (50, 90, 99)} | {"mean_ms": float(ms.mean())}


def real_sentence_latency(
    predict: Callable[[dict[str, np.ndarray]], object], tokenizer, texts: list[str], max_length: int,
    warmup: int, iterations: int,
) -> dict[str, float]:
    """Batch-1 latency over real sentences, each at its own length (what a request really costs),
    cycling through `texts`."""
    singles = [{k: v.astype(np.int64) for k, v in tokenizer([t], truncation=True, max_length=max_length,
                                                             return_tensors="np").items()} for t in texts]
    cursor = iter(range(10**9))
    ms = time_calls(lambda: predict(singles[next(cursor) % len(singles)]), warmup, iterations)
    return latency_stats(ms)
