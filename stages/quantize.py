"""quantize stage: INT8 recipes for the student, each measured; the fastest within tolerance ships.

Recipes (quantize.candidates): dynamic INT8 (weights int8 ahead of time, activations quantized on
the fly) and static INT8 (activation ranges calibrated on a bounded set of training texts with
MinMax, Entropy or Percentile; QDQ format), each optionally per-channel / reduce-range. Every
candidate's validation metrics (the task's), batch-1 latency and size are recorded; candidates whose
primary metric drops more than max_metric_drop below fp32 are out, and none passing fails the stage.

Selection must not depend on timing noise: the candidates are timed in interleaved rounds, and one
counts as slower than another only if its p50 is more than latency_tie_margin above it AND their
round-by-round p50s do not overlap. Among those no other candidate is reliably faster than, the
best primary metric ships, then the smallest file, then the name (two runs ship the same recipe).

Dynamic INT8 runs on the *fused* graph: onnxruntime's quantizer cannot type tensors produced by
com.microsoft ops (Attention, SkipLayerNorm) and says "Unable to find data type for weight_name";
telling it their default type (extra_options DefaultTensorType=FLOAT, as its message recommends)
makes fusion and INT8 coexist (QAttention, MatMulInteger, QEmbedLayerNormalization). Static QDQ runs
on the unfused export because the QDQ quantizer has no Attention support.

4-bit embedding tables (embedding_bits: 4): the vocabulary rows are the largest INT8 tensor of a small
student, and EmbedLayerNormalization only reads float tables, so these candidates use a fused graph
without that fusion (embeddings looked up by Gather), dynamic INT8 everywhere else, then the tables
as 4-bit blocks (onnxruntime's MatMulNBitsQuantizer -> GatherBlockQuantized).

Writes: student_int8/model.onnx (the selected recipe, + config and tokenizer), candidates/<name>.onnx
for the others, student_fused_gather.onnx (when a 4-bit candidate is listed), quantize_report.json.
"""

from __future__ import annotations

import logging
import resource
import shutil
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import version_converter
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_dynamic,
    quantize_static,
)
from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer
from onnxruntime.quantization.registry import IntegerOpsRegistry
from transformers import AutoConfig, AutoTokenizer

from pipeline.config import QuantCandidate
from pipeline.stage import StageContext, StageError, StageResult
from stages._fp16 import convert_to_fp16
from stages._hf import load_splits_dir, save_json
from stages._onnx import (
    file_mb,
    interleaved_rounds,
    make_session,
    op_counts,
    rows_per_batch,
    session_feed,
)
from stages.tasks import get_task
from stages.tasks.base import Task, predict_rows

# Operators that only exist in an integer graph: proof that quantization happened.
INTEGER_OPS = ("MatMulInteger", "DynamicQuantizeMatMul", "QAttention", "DynamicQuantizeLinear",
               "QEmbedLayerNormalization", "QuantizeLinear", "DequantizeLinear", "QLinearMatMul",
               "QGemm", "MatMulIntegerToFloat", "GatherBlockQuantized")
CALIBRATION = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}


class TextCalibrationReader(CalibrationDataReader):
    """Feeds tokenized training texts to the calibrator, a batch at a time (bounded memory)."""

    def __init__(self, batches: list[dict[str, np.ndarray]], input_names: set[str]):
        self.batches = [{k: v for k, v in b.items() if k in input_names} for b in batches]
        self.position = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.position >= len(self.batches):
            return None
        self.position += 1
        return self.batches[self.position - 1]

    def rewind(self) -> None:
        self.position = 0


def quantize_embedding_tables(source: Path, target: Path, bits: int, block_size: int) -> int:
    """Every float embedding table read by a Gather becomes `bits`-bit blocks along the hidden axis
    (onnxruntime's GatherBlockQuantized); id remap tables (shared rows) and shape Gathers are left
    alone. Returns how many tables were quantized."""
    model = onnx.load(str(source))
    # int4 tensors need opset 21; the quantizer only relabels the opset, which breaks ops whose
    # attributes became inputs since (ReduceL2's axes in the embedding graphs), so convert properly.
    if next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) < 21:
        model = version_converter.convert_version(model, 21)
    floats = {i.name for i in model.graph.initializer
              if i.data_type == onnx.TensorProto.FLOAT and len(i.dims) == 2}
    tables, others = [], []
    for index, node in enumerate(model.graph.node):
        if node.op_type == "Gather":
            node.name = node.name or f"Gather_{index}"
            (tables if node.input[0] in floats else others).append(node.name)
    if not tables:
        raise ValueError(f"no embedding Gather over a float table in {source}: was EmbedLayerNormalization fused?")
    # (nodes_to_include does not stop the quantizer from trying every Gather with a constant input.)
    quantizer = MatMulNBitsQuantizer(model, bits=bits, block_size=block_size, is_symmetric=False,
                                     op_types_to_quantize=("Gather",), quant_axes=(("Gather", 1),),
                                     nodes_to_exclude=others)
    quantizer.process()
    quantizer.model.save_model_to_file(str(target))
    return len(tables)


def _not_preprocess_advice(record: logging.LogRecord) -> bool:
    # onnxruntime advises "pre-processing before quantization" on every call: its shape inference
    # and graph optimization, which the transformer optimizer already did to these graphs (fused,
    # shapes known). Repeated once per candidate, the advice reads like a fault.
    return "pre-processing before quantization" not in record.getMessage()


def build(candidate: QuantCandidate, source: Path, target: Path, calibration: TextCalibrationReader | None,
          percentile: float) -> None:
    root = logging.getLogger()  # onnxruntime logs through logging.warning(), i.e. the root logger
    root.addFilter(_not_preprocess_advice)
    try:
        _build(candidate, source, target, calibration, percentile)
    finally:
        root.removeFilter(_not_preprocess_advice)


def _build(candidate: QuantCandidate, source: Path, target: Path, calibration: TextCalibrationReader | None,
           percentile: float) -> None:
    common = {"per_channel": candidate.per_channel, "reduce_range": candidate.reduce_range}
    if candidate.method == "dynamic":
        # 4-bit tables: the embeddings stay float for the INT8 pass, then get their own blocks.
        ops = [op for op in IntegerOpsRegistry if op != "Gather"] if candidate.embedding_bits != 8 else None
        quantize_dynamic(source, target, weight_type=QuantType.QInt8, op_types_to_quantize=ops,
                         extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT}, **common)
        if candidate.embedding_bits != 8:
            quantize_embedding_tables(target, target, candidate.embedding_bits, candidate.embedding_block_size)
        return
    assert calibration is not None
    calibration.rewind()
    quantize_static(
        source, target, calibration, quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
        calibrate_method=CALIBRATION[candidate.calibration],
        op_types_to_quantize=["MatMul", "Gather"],
        # Memory is bounded by quantize.calibration_samples. (CalibMaxIntermediateOutputs would
        # flush in chunks, but MinMax then raises "No data is collected" when the batch count is a
        # multiple of the chunk size.)
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT, "WeightSymmetric": True,
                       "CalibPercentile": percentile},
        **common,
    )


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


@dataclass(frozen=True)
class Measured:
    """One passing candidate: its p50 per timing round, primary metric and size."""

    rounds_ms: tuple[float, ...]
    metric: float
    size_mb: float

    @property
    def p50_ms(self) -> float:
        return statistics.median(self.rounds_ms)


def reliably_slower(a: Measured, b: Measured, margin: float) -> bool:
    """a is slower than b beyond the measured noise: a's p50 more than `margin` above b's, and
    even a's fastest round slower than b's slowest."""
    return a.p50_ms > b.p50_ms * (1 + margin) and min(a.rounds_ms) > max(b.rounds_ms)


def select_candidate(passing: dict[str, Measured], margin: float, greater_is_better: bool = True) -> str:
    """Among candidates no other is reliably faster than, the best primary metric, then the
    smallest, then the name: latency decides only where it beats the noise."""
    if not passing:
        raise ValueError("no candidate to select from")
    contenders = [n for n, m in passing.items()
                  if not any(reliably_slower(m, other, margin) for other in passing.values())]
    sign = -1 if greater_is_better else 1
    return min(contenders, key=lambda n: (sign * passing[n].metric, passing[n].size_mb, n))


def graph_rows(path: Path, features, tokenizer, ctx: StageContext) -> list[np.ndarray]:
    """One ONNX model's outputs, one per feature row."""
    session = make_session(path, ctx.cfg.runtime)
    return predict_rows(lambda batch: session.run(["logits"], session_feed(session, batch))[0], features, tokenizer,
                        batch_size=rows_per_batch(path), desc=f"{path.parent.name}/{path.name} on validation")


def score(path: Path, features, tokenizer, ctx: StageContext, task: Task,
          reference: list[np.ndarray] | None = None, rows: list[np.ndarray] | None = None) -> dict:
    """Validation metrics (the task's) and size of one ONNX model (`rows`: its outputs, when
    already computed); with `reference` (the fp32 graph's outputs) also how close its outputs are
    to them (the task's comparison, if any)."""
    rows = rows if rows is not None else graph_rows(path, features, tokenizer, ctx)
    compared = {f"{k}_vs_fp32": v for k, v in task.compare_rows(reference, rows).items()} if reference else {}
    return task.metrics(rows, features) | compared | {"size_mb": file_mb(path)}


def batch1_predictors(paths: dict[str, Path], ctx: StageContext) -> dict[str, Callable]:
    sessions = {name: make_session(path, ctx.cfg.runtime) for name, path in paths.items()}
    return {name: (lambda batch, s=s: s.run(["logits"], session_feed(s, batch)))
            for name, s in sessions.items()}


def run(ctx: StageContext) -> StageResult:
    cfg, qcfg = ctx.cfg, ctx.cfg.quantize
    task = get_task(cfg)
    metric = task.primary_metric
    graphs = {"fused": ctx.path("student_best"), "unfused": ctx.path("student_onnx")}
    if any(c.source_graph == "fused_gather" for c in qcfg.candidates):
        from stages.export import fuse  # optimum's exporter: imported only when needed

        graphs["fused_gather"] = ctx.out / "student_fused_gather.onnx"
        model_cfg = AutoConfig.from_pretrained(ctx.path("student_dir"))
        fuse(graphs["unfused"], graphs["fused_gather"], model_cfg.num_attention_heads, model_cfg.hidden_size,
             embed_layer_norm=False)
    tokenizer = AutoTokenizer.from_pretrained(ctx.path("student_dir"))
    raw = load_splits_dir(ctx.path("dataset"))
    validation = task.features(raw["validation"], tokenizer)
    texts = task.texts(raw["validation"])[:50]

    calibration = None
    if any(c.method == "static" for c in qcfg.candidates):
        train = raw["train"].shuffle(seed=cfg.project.seed)
        calib = task.calibration_inputs(train.select(range(min(qcfg.calibration_samples, len(train)))))
        # Entropy/percentile calibrators stack activations across batches: one fixed length.
        batches = []
        for start in range(0, len(calib), qcfg.calibration_batch_size):
            chunk = calib[start : start + qcfg.calibration_batch_size]
            pairs = isinstance(chunk[0], tuple)
            enc = tokenizer([c[0] for c in chunk] if pairs else chunk, [c[1] for c in chunk] if pairs else None,
                            padding="max_length", truncation=True, max_length=cfg.data.max_length,
                            return_tensors="np")
            batches.append({k: v.astype(np.int64) for k, v in enc.items()})
        names = {i.name for i in onnx.load(str(graphs["unfused"]), load_external_data=False).graph.input}
        calibration = TextCalibrationReader(batches, names)

    reference = graph_rows(graphs["fused"], validation, tokenizer, ctx)
    fp32 = score(graphs["fused"], validation, tokenizer, ctx, task, rows=reference)
    ctx.log.info("fp32 (fused): validation %s %.4f", metric, fp32[metric])
    (ctx.out / "candidates").mkdir()
    results: dict[str, dict] = {}
    for candidate in qcfg.candidates:
        target = ctx.out / "candidates" / f"{candidate.name}.onnx"
        ctx.log.info("INT8 candidate %s on the %s graph", candidate.name, candidate.source_graph)
        try:
            build(candidate, graphs[candidate.source_graph], target, calibration, qcfg.percentile)
        except Exception as exc:  # one recipe failing must not hide the others' results
            results[candidate.name] = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
            ctx.log.warning("candidate %s failed: %s", candidate.name, results[candidate.name]["error"])
            continue
        ops = op_counts(target)
        integer_ops = {op: n for op, n in ops.items() if op in INTEGER_OPS}
        if not integer_ops:
            results[candidate.name] = {"error": f"no integer operators in the graph: {ops}"}
            continue
        scores = score(target, validation, tokenizer, ctx, task, reference)
        drop = (fp32[metric] - scores[metric]) * (1 if task.greater_is_better else -1)
        results[candidate.name] = scores | {
            "metric_drop": drop, "within_tolerance": drop <= qcfg.max_metric_drop,
            "graph": candidate.source_graph, "integer_ops": integer_ops, "path": f"candidates/{target.name}",
            "peak_rss_mb": peak_rss_mb(),
        }
        ctx.log.info("  %s: %s %.4f (drop %+.4f), %.1f MB", candidate.name, metric, scores[metric], -drop,
                     scores["size_mb"])

    passing = {n: r for n, r in results.items() if r.get("within_tolerance")}
    report = {"primary_metric": metric, "fp32": fp32, "candidates": results,
              "max_metric_drop": qcfg.max_metric_drop}
    if not passing:
        save_json(ctx.out / "quantize_report.json", report)
        summary = "; ".join(f"{n}: " + (r["error"] if "error" in r else f"drop {r['metric_drop']:.4f}")
                            for n, r in results.items())
        raise StageError(
            f"no INT8 candidate kept validation {metric} within quantize.max_metric_drop="
            f"{qcfg.max_metric_drop} of fp32 {fp32[metric]:.4f} ({summary}). Add candidates "
            "(e.g. {method: dynamic, per_channel: true}) or raise the tolerance."
        )
    # Timed together, round by round, so machine noise hits every candidate alike.
    timed = {"fp32": graphs["fused"]} | {n: ctx.out / r["path"] for n, r in passing.items()}
    rounds = interleaved_rounds(batch1_predictors(timed, ctx), tokenizer, texts, cfg.data.max_length,
                                qcfg.selection_rounds, qcfg.selection_iterations)
    for name, per_round in rounds.items():
        entry = fp32 if name == "fp32" else results[name]
        entry["latency"] = {"p50_ms": statistics.median(per_round), "rounds_p50_ms": per_round}
    measured = {n: Measured(tuple(rounds[n]), r[metric], r["size_mb"]) for n, r in passing.items()}
    chosen = select_candidate(measured, qcfg.latency_tie_margin, task.greater_is_better)
    report["selected"] = chosen
    report["reliably_faster_than_chosen"] = [n for n, m in measured.items()
                                             if reliably_slower(measured[chosen], m, qcfg.latency_tie_margin)]
    for name, r in passing.items():
        ctx.log.info("  %s: p50 %.3f ms (rounds %s)", name, r["latency"]["p50_ms"],
                     ", ".join(f"{v:.3f}" for v in r["latency"]["rounds_p50_ms"]))
    out_dir = ctx.out / "student_int8"
    out_dir.mkdir()
    for item in ctx.path("student_dir").iterdir():  # config + tokenizer: a complete model dir
        if item.suffix != ".onnx":
            shutil.copy2(item, out_dir / item.name)
    shutil.move(ctx.out / results[chosen]["path"], out_dir / "model.onnx")
    results[chosen]["path"] = "student_int8/model.onnx"
    save_json(ctx.out / "quantize_report.json", report)
    ctx.tracker.log_artifact(ctx.out / "quantize_report.json")
    ctx.tracker.log_artifact(out_dir / "model.onnx", artifact_path="student_int8")  # the model that ships
    best = results[chosen]
    ctx.log.info("selected %s: validation %s %.4f -> %.4f, %.1f -> %.1f MB", chosen, metric,
                 fp32[metric], best[metric], fp32["size_mb"], best["size_mb"])

    outputs = {"student_int8": "student_int8/model.onnx", "student_int8_dir": "student_int8",
               "quantize_report": "quantize_report.json"}
    extra_metrics: dict[str, float] = {}
    fp16_info: dict = {}
    if qcfg.fp16:
        fp16_dir = ctx.out / "student_fp16"
        fp16_dir.mkdir()
        for item in out_dir.iterdir():
            if item.suffix != ".onnx":
                shutil.copy2(item, fp16_dir / item.name)
        fp16_info["initializers"] = convert_to_fp16(graphs["fused"], fp16_dir / "model.onnx")
        scores = score(fp16_dir / "model.onnx", validation, tokenizer, ctx, task)
        fp16_info |= {metric: scores[metric], "size_mb": scores["size_mb"]}
        ctx.log.info("fp16 copy for GPUs: validation %s %.4f (fp32 %.4f), %.1f MB", metric, scores[metric],
                     fp32[metric], scores["size_mb"])
        extra_metrics = {f"val/fp16_{metric}": scores[metric], "model/fp16_size_mb": scores["size_mb"]}
        outputs |= {"student_fp16": "student_fp16/model.onnx", "student_fp16_dir": "student_fp16"}
    report["fp16"] = fp16_info
    save_json(ctx.out / "quantize_report.json", report)

    metrics = extra_metrics | {
        f"val/fp32_{metric}": fp32[metric], f"val/int8_{metric}": best[metric],
        f"val/int8_{metric}_drop": best["metric_drop"], "model/fp32_size_mb": fp32["size_mb"],
        "model/int8_size_mb": best["size_mb"], "model/size_ratio": best["size_mb"] / fp32["size_mb"],
        "quant/peak_rss_mb": peak_rss_mb(),
    } | {f"ops/{op}": float(n) for op, n in best["integer_ops"].items()}
    for name, r in results.items():
        if "error" not in r:
            metrics |= {f"cand/{name}/val_{metric}": r[metric], f"cand/{name}/size_mb": r["size_mb"]}
            if "latency" in r:
                metrics[f"cand/{name}/latency_p50_ms"] = r["latency"]["p50_ms"]
    return StageResult(
        metrics=metrics,
        outputs=outputs,
        info={"selected": chosen, "integer_ops": best["integer_ops"], "fp16": fp16_info},
    )
