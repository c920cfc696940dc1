"""Shared ONNX Runtime helpers: sessions, padded numpy batches, scoring, graph statistics."""

from __future__ import annotations

import os
import platform
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

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


def session_feed(session: ort.InferenceSession, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    names = {i.name for i in session.get_inputs()}
    return {k: v for k, v in batch.items() if k in names}


def op_counts(path: Path) -> dict[str, int]:
    model = onnx.load(str(path), load_external_data=False)
    return dict(sorted(Counter(node.op_type for node in model.graph.node).items()))


# ONNX Runtime's dynamic quantization takes one activation scale per tensor, i.e. over the
# whole batch: a row's outputs then depend on what shares its batch.
BATCH_DEPENDENT_OPS = frozenset({"DynamicQuantizeLinear", "DynamicQuantizeMatMul", "DynamicQuantizeLSTM"})


def rows_per_batch(path: Path, batched: int = 64) -> int:
    """How many rows a quality pass may batch through `path`: 1 for a graph with dynamic
    quantization (so its metric is what one request gets), else `batched`."""
    return 1 if BATCH_DEPENDENT_OPS & set(op_counts(path)) else batched


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


def single_inputs(tokenizer, texts: list, max_length: int) -> list[dict[str, np.ndarray]]:
    """Each text (or [text, pair]) tokenized alone, at its own length: a batch-1 request."""
    singles = []
    for text in texts:
        pair = isinstance(text, list | tuple)
        enc = tokenizer([text[0]] if pair else [text], [text[1]] if pair else None, truncation=True,
                        max_length=max_length, return_tensors="np")
        singles.append({k: v.astype(np.int64) for k, v in enc.items() if k in MODEL_INPUTS})
    return singles


def real_sentence_latency(
    predict: Callable[[dict[str, np.ndarray]], object], tokenizer, texts: list, max_length: int,
    warmup: int, iterations: int,
) -> dict[str, float]:
    """Batch-1 latency over real sentences, each at its own length (what a request really costs),
    cycling through `texts`."""
    singles = single_inputs(tokenizer, texts, max_length)
    cursor = iter(range(10**9))
    ms = time_calls(lambda: predict(singles[next(cursor) % len(singles)]), warmup, iterations)
    return latency_stats(ms)


def interleaved_rounds(predictors: dict[str, Callable[[dict[str, np.ndarray]], object]], tokenizer,
                       texts: list, max_length: int, rounds: int, iterations: int,
                       warmup: int = 5) -> dict[str, list[float]]:
    """Batch-1 p50 per round for each predictor over the same real sentences, the predictors
    taking turns every round: machine noise hits them alike, and the spread of a predictor's rounds
    is the noise its comparison with another must exceed. `tokenizer` is one for all, or a dict
    giving each predictor its own (a student with a budget vocabulary reads other pieces)."""
    own = tokenizer if isinstance(tokenizer, dict) else dict.fromkeys(predictors, tokenizer)
    singles = {name: single_inputs(own[name], texts, max_length) for name in predictors}
    for name, predict in predictors.items():
        for batch in singles[name][:warmup]:
            predict(batch)
    per_round: dict[str, list[float]] = {name: [] for name in predictors}
    for _ in range(rounds):
        for name, predict in predictors.items():
            cursor, inputs = iter(range(10**9)), singles[name]
            ms = time_calls(lambda p=predict, c=cursor, x=inputs: p(x[next(c) % len(x)]), 0, iterations)
            per_round[name].append(float(np.percentile(ms, 50)))
    return per_round


def compact_shared_rows(src: Path, dst: Path, kept: list[int], position: np.ndarray) -> None:
    """Store only the kept word-embedding rows and look each input id up through `position`
    (`input_ids -> Gather(position) -> word embedding`); the graph's outputs are unchanged for a
    model whose rows were shared with `share_rows`. Works on the plain export (Gather) and on the
    fused graph (EmbedLayerNormalization reads the ids and the matrix as inputs 0 and 2)."""
    model = onnx.load(str(src))
    graph = model.graph
    vocab = len(position)
    inits = {i.name: i for i in graph.initializer}
    users = [(node, slot) for node in graph.node for slot, name in enumerate(node.input)
             if name in inits and tuple(inits[name].dims)[:1] == (vocab,) and len(inits[name].dims) == 2
             and ((node.op_type == "Gather" and slot == 0) or (node.op_type == "EmbedLayerNormalization" and slot == 2))]
    if len(users) != 1:
        raise ValueError(f"expected one word-embedding lookup of {vocab} rows in {src}, found {len(users)}")
    node, slot = users[0]
    matrix = inits[node.input[slot]]
    compact = numpy_helper.to_array(matrix)[np.asarray(kept)]
    matrix.CopyFrom(numpy_helper.from_array(compact, matrix.name))
    ids_slot = 1 if node.op_type == "Gather" else 0
    # int32: what EmbedLayerNormalization takes, and half the bytes (Gather takes either).
    remap = numpy_helper.from_array(position.astype(np.int32), "shared_rows_position")
    graph.initializer.append(remap)
    shared_ids = "input_ids_shared_rows"
    lookup = helper.make_node("Gather", ["shared_rows_position", node.input[ids_slot]], [shared_ids],
                                   name="SharedRowsLookup")
    node.input[ids_slot] = shared_ids
    graph.node.insert(list(graph.node).index(node), lookup)
    onnx.save(model, str(dst))
