"""quantize stage: dynamic INT8 of the fused student graph with onnxruntime's quantizer.

Quantizing the *fused* graph used to fail with "Unable to find data type for weight_name ...":
shape inference cannot type tensors produced by com.microsoft ops (Attention, SkipLayerNorm), so
we tell the quantizer their default type (extra_options DefaultTensorType=FLOAT), which is what
its own error message recommends. Fusion and INT8 then coexist (QAttention, MatMulInteger).
Validation accuracy is checked against the fp32 graph; too large a drop fails the stage.

Writes: student_int8/model.onnx (+ config and tokenizer files), quantize_report.json.
"""

from __future__ import annotations

import shutil

import onnx
from onnxruntime.quantization import QuantType, quantize_dynamic
from transformers import AutoTokenizer

from pipeline.stage import StageContext, StageError, StageResult
from stages._hf import load_tokenized, save_json
from stages._onnx import file_mb, op_counts, score_onnx

# Operators that only exist in an integer graph: proof that quantization happened.
INTEGER_OPS = ("MatMulInteger", "DynamicQuantizeMatMul", "QAttention", "DynamicQuantizeLinear",
               "QGemm", "MatMulIntegerToFloat")


def run(ctx: StageContext) -> StageResult:
    cfg, qcfg = ctx.cfg, ctx.cfg.quantize
    export = ctx.input("export")
    source = export.output("student_best")
    out_dir = ctx.out / "student_int8"
    out_dir.mkdir()
    # Carry config.json and tokenizer files so the folder is a complete model directory.
    for item in export.output("student_dir").iterdir():
        if item.suffix != ".onnx":
            shutil.copy2(item, out_dir / item.name)
    target = out_dir / "model.onnx"
    ctx.log.info("dynamic INT8 quantization of %s", source)
    quantize_dynamic(
        source, target,
        weight_type=QuantType.QInt8,
        per_channel=qcfg.per_channel,
        reduce_range=qcfg.reduce_range,
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
    )
    ops = op_counts(target)
    integer_ops = {op: ops.get(op, 0) for op in INTEGER_OPS if ops.get(op)}
    if not integer_ops:
        raise StageError(f"quantization produced no integer operators in {target}: {ops}")

    data = ctx.input("data")
    tokenizer = AutoTokenizer.from_pretrained(export.output("student_dir"))
    validation = load_tokenized(data)["validation"]
    fp32 = score_onnx(source, validation, tokenizer, cfg.data.max_length, cfg.runtime)
    int8 = score_onnx(target, validation, tokenizer, cfg.data.max_length, cfg.runtime)
    drop = fp32["accuracy"] - int8["accuracy"]
    report = {
        "source": str(source), "fp32": fp32, "int8": int8, "accuracy_drop": drop,
        "size_mb": {"fp32": file_mb(source), "int8": file_mb(target)},
        "integer_ops": integer_ops, "op_counts": ops,
    }
    save_json(ctx.out / "quantize_report.json", report)
    ctx.tracker.log_artifact(ctx.out / "quantize_report.json")
    ctx.tracker.log_artifact(target, artifact_path="student_int8")  # the model that ships
    ctx.log.info("validation accuracy fp32 %.4f -> int8 %.4f; size %.1f -> %.1f MB",
                 fp32["accuracy"], int8["accuracy"], report["size_mb"]["fp32"], report["size_mb"]["int8"])
    if drop > qcfg.max_accuracy_drop:
        raise StageError(
            f"INT8 validation accuracy {int8['accuracy']:.4f} is {drop:.4f} below fp32 "
            f"{fp32['accuracy']:.4f}, over quantize.max_accuracy_drop={qcfg.max_accuracy_drop}. "
            "Try quantize.per_channel=true or quantize.reduce_range=true, or raise the tolerance."
        )
    metrics = {
        "val/fp32_accuracy": fp32["accuracy"], "val/int8_accuracy": int8["accuracy"],
        "val/int8_accuracy_drop": drop, "model/fp32_size_mb": report["size_mb"]["fp32"],
        "model/int8_size_mb": report["size_mb"]["int8"],
        "model/size_ratio": report["size_mb"]["int8"] / report["size_mb"]["fp32"],
    } | {f"ops/{op}": float(n) for op, n in integer_ops.items()}
    return StageResult(
        metrics=metrics,
        outputs={"student_int8": "student_int8/model.onnx", "student_int8_dir": "student_int8",
                 "report": "quantize_report.json"},
        info={"integer_ops": integer_ops},
    )
