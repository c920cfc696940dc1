"""quantize stage: INT8 recipes for the student, each measured, the fastest within tolerance kept.

Recipes (quantize.candidates): dynamic INT8 (weights int8 ahead of time, activations quantized on
the fly) and static INT8 (activation ranges calibrated on a bounded set of training texts with
MinMax, Entropy or Percentile; QDQ format), each optionally per-channel / reduce-range. Every
candidate's validation accuracy, batch-1 latency and size are recorded; the fastest whose accuracy
drop vs fp32 stays within max_accuracy_drop is selected, and none passing fails the stage.

Dynamic INT8 runs on the *fused* graph: onnxruntime's quantizer cannot type tensors produced by
com.microsoft ops (Attention, SkipLayerNorm) and says "Unable to find data type for weight_name";
telling it their default type (extra_options DefaultTensorType=FLOAT, as its message recommends)
makes fusion and INT8 coexist (QAttention, MatMulInteger, QEmbedLayerNormalization). Static QDQ runs
on the unfused export because the QDQ quantizer has no Attention support.

Writes: student_int8/model.onnx (the selected recipe, + config and tokenizer), candidates/<name>.onnx
for the others, quantize_report.json.
"""

from __future__ import annotations

import resource
import shutil
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_dynamic,
    quantize_static,
)
from transformers import AutoTokenizer

from pipeline.config import QuantCandidate
from pipeline.stage import StageContext, StageError, StageResult
from stages._fp16 import convert_to_fp16
from stages._hf import classification_metrics, load_tokenized, save_json
from stages._onnx import (
    file_mb,
    make_session,
    onnx_logits,
    op_counts,
    real_sentence_latency,
    session_feed,
)

# Operators that only exist in an integer graph: proof that quantization happened.
INTEGER_OPS = ("MatMulInteger", "DynamicQuantizeMatMul", "QAttention", "DynamicQuantizeLinear",
               "QEmbedLayerNormalization", "QuantizeLinear", "DequantizeLinear", "QLinearMatMul",
               "QGemm", "MatMulIntegerToFloat")
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


def build(candidate: QuantCandidate, source: Path, target: Path, calibration: TextCalibrationReader | None,
          percentile: float) -> None:
    common = {"per_channel": candidate.per_channel, "reduce_range": candidate.reduce_range}
    if candidate.method == "dynamic":
        quantize_dynamic(source, target, weight_type=QuantType.QInt8,
                         extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT}, **common)
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


def evaluate(path: Path, validation, tokenizer, ctx: StageContext, texts: list[str]) -> dict:
    session = make_session(path, ctx.cfg.runtime)
    logits, labels = onnx_logits(session, validation, tokenizer, ctx.cfg.data.max_length)
    latency = real_sentence_latency(
        lambda batch: session.run(["logits"], session_feed(session, batch)), tokenizer, texts,
        ctx.cfg.data.max_length, warmup=5, iterations=ctx.cfg.quantize.selection_iterations)
    return classification_metrics(logits, labels) | {"latency": latency, "size_mb": file_mb(path)}


def select_candidate(passing: dict[str, tuple[float, float]], tie_margin: float) -> str:
    """The fastest candidate, {name: (p50 ms, accuracy)}; those within tie_margin of the fastest p50
    are a tie (a few percent is timing noise on a shared CPU), won by the higher accuracy."""
    fastest = min(p50 for p50, _ in passing.values())
    tied = {n: v for n, v in passing.items() if v[0] <= fastest * (1 + tie_margin)}
    return max(tied, key=lambda n: (tied[n][1], -tied[n][0]))


def run(ctx: StageContext) -> StageResult:
    cfg, qcfg = ctx.cfg, ctx.cfg.quantize
    export, data = ctx.input("export"), ctx.input("data")
    graphs = {"fused": export.output("student_best"), "unfused": export.output("student_onnx")}
    tokenizer = AutoTokenizer.from_pretrained(export.output("student_dir"))
    splits = load_tokenized(data)
    validation = splits["validation"]
    texts = list(validation["text"][:50])

    calibration = None
    if any(c.method == "static" for c in qcfg.candidates):
        train = splits["train"].shuffle(seed=cfg.project.seed)
        calib = train.select(range(min(qcfg.calibration_samples, len(train))))
        # Entropy/percentile calibrators stack activations across batches: one fixed length.
        batches = []
        for start in range(0, len(calib), qcfg.calibration_batch_size):
            enc = tokenizer(calib["text"][start : start + qcfg.calibration_batch_size], padding="max_length",
                            truncation=True, max_length=cfg.data.max_length, return_tensors="np")
            batches.append({k: v.astype(np.int64) for k, v in enc.items()})
        names = {i.name for i in onnx.load(str(graphs["unfused"]), load_external_data=False).graph.input}
        calibration = TextCalibrationReader(batches, names)

    fp32 = evaluate(graphs["fused"], validation, tokenizer, ctx, texts)
    ctx.log.info("fp32 (fused): validation accuracy %.4f, p50 %.2f ms", fp32["accuracy"], fp32["latency"]["p50_ms"])
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
        scores = evaluate(target, validation, tokenizer, ctx, texts)
        drop = fp32["accuracy"] - scores["accuracy"]
        results[candidate.name] = scores | {
            "accuracy_drop": drop, "within_tolerance": drop <= qcfg.max_accuracy_drop,
            "graph": candidate.source_graph, "integer_ops": integer_ops, "path": f"candidates/{target.name}",
            "peak_rss_mb": peak_rss_mb(),
        }
        ctx.log.info("  %s: accuracy %.4f (drop %+.4f), p50 %.2f ms, %.1f MB", candidate.name,
                     scores["accuracy"], -drop, scores["latency"]["p50_ms"], scores["size_mb"])

    passing = {n: r for n, r in results.items() if r.get("within_tolerance")}
    report = {"fp32": fp32, "candidates": results, "max_accuracy_drop": qcfg.max_accuracy_drop}
    if not passing:
        save_json(ctx.out / "quantize_report.json", report)
        summary = "; ".join(f"{n}: " + (r["error"] if "error" in r else f"drop {r['accuracy_drop']:.4f}")
                            for n, r in results.items())
        raise StageError(
            f"no INT8 candidate kept validation accuracy within quantize.max_accuracy_drop="
            f"{qcfg.max_accuracy_drop} of fp32 {fp32['accuracy']:.4f} ({summary}). Add candidates "
            "(e.g. {method: dynamic, per_channel: true}) or raise the tolerance."
        )
    chosen = select_candidate({n: (r["latency"]["p50_ms"], r["accuracy"]) for n, r in passing.items()},
                              qcfg.latency_tie_margin)
    report["selected"] = chosen
    out_dir = ctx.out / "student_int8"
    out_dir.mkdir()
    for item in export.output("student_dir").iterdir():  # config + tokenizer: a complete model dir
        if item.suffix != ".onnx":
            shutil.copy2(item, out_dir / item.name)
    shutil.move(ctx.out / results[chosen]["path"], out_dir / "model.onnx")
    results[chosen]["path"] = "student_int8/model.onnx"
    save_json(ctx.out / "quantize_report.json", report)
    ctx.tracker.log_artifact(ctx.out / "quantize_report.json")
    ctx.tracker.log_artifact(out_dir / "model.onnx", artifact_path="student_int8")  # the model that ships
    best = results[chosen]
    ctx.log.info("selected %s: validation accuracy %.4f -> %.4f, %.1f -> %.1f MB", chosen,
                 fp32["accuracy"], best["accuracy"], fp32["size_mb"], best["size_mb"])

    outputs = {"student_int8": "student_int8/model.onnx", "student_int8_dir": "student_int8",
               "report": "quantize_report.json"}
    extra_metrics: dict[str, float] = {}
    fp16_info: dict = {}
    if qcfg.fp16:
        fp16_dir = ctx.out / "student_fp16"
        fp16_dir.mkdir()
        for item in out_dir.iterdir():
            if item.suffix != ".onnx":
                shutil.copy2(item, fp16_dir / item.name)
        fp16_info["initializers"] = convert_to_fp16(graphs["fused"], fp16_dir / "model.onnx")
        scores = evaluate(fp16_dir / "model.onnx", validation, tokenizer, ctx, texts)
        fp16_info |= {"accuracy": scores["accuracy"], "size_mb": scores["size_mb"]}
        ctx.log.info("fp16 copy for GPUs: validation accuracy %.4f (fp32 %.4f), %.1f MB", scores["accuracy"],
                     fp32["accuracy"], scores["size_mb"])
        extra_metrics = {"val/fp16_accuracy": scores["accuracy"], "model/fp16_size_mb": scores["size_mb"]}
        outputs |= {"student_fp16": "student_fp16/model.onnx", "student_fp16_dir": "student_fp16"}

    metrics = extra_metrics | {
        "val/fp32_accuracy": fp32["accuracy"], "val/int8_accuracy": best["accuracy"],
        "val/int8_accuracy_drop": best["accuracy_drop"], "model/fp32_size_mb": fp32["size_mb"],
        "model/int8_size_mb": best["size_mb"], "model/size_ratio": best["size_mb"] / fp32["size_mb"],
        "quant/peak_rss_mb": peak_rss_mb(),
    } | {f"ops/{op}": float(n) for op, n in best["integer_ops"].items()}
    for name, r in results.items():
        if "error" not in r:
            metrics |= {f"cand/{name}/val_accuracy": r["accuracy"], f"cand/{name}/latency_p50_ms":
                        r["latency"]["p50_ms"], f"cand/{name}/size_mb": r["size_mb"]}
    return StageResult(
        metrics=metrics,
        outputs=outputs,
        info={"selected": chosen, "integer_ops": best["integer_ops"], "fp16": fp16_info,
              "candidates": {n: {k: v for k, v in r.items() if k in ("accuracy", "accuracy_drop", "size_mb", "error")}
                             | ({"p50_ms": r["latency"]["p50_ms"]} if "latency" in r else {})
                             for n, r in results.items()}},
    )
