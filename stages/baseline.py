"""baseline stage: the fine-tuned teacher through Optimum's stock path, exactly as its docs show it
(the task's ORTModelFor* export -> ORTOptimizer O2 -> ORTQuantizer dynamic INT8 with the CPU's
AutoQuantizationConfig), so the benchmark can show what bertpress gains over what users would
otherwise do.

If the stock path fails (Optimum's quantizer does not type the fused com.microsoft ops and has no
option to), we record the error and take the step users take next: dynamic INT8 of the unfused
export with the same quantization config.

Writes: int8/model*.onnx (+ config, tokenizer), baseline_report.json.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from optimum.onnxruntime import ORTOptimizer, ORTQuantizer
from optimum.onnxruntime.configuration import AutoOptimizationConfig, AutoQuantizationConfig

from pipeline.stage import StageContext, StageError, StageResult
from stages._hf import save_json
from stages._onnx import cpu_features, file_mb, op_counts
from stages.tasks import get_task


def quantization_config(features: dict[str, bool]):
    if features.get("avx512_vnni"):
        return "avx512_vnni", AutoQuantizationConfig.avx512_vnni(is_static=False, per_channel=False)
    if features.get("avx512"):
        return "avx512", AutoQuantizationConfig.avx512(is_static=False, per_channel=False)
    return "avx2", AutoQuantizationConfig.avx2(is_static=False, per_channel=False)


def _only_onnx(folder: Path) -> Path:
    found = sorted(folder.glob("*.onnx"))
    if len(found) != 1:
        raise StageError(f"expected one ONNX file in {folder}, found {[p.name for p in found]}")
    return found[0]


def run(ctx: StageContext) -> StageResult:
    teacher_dir = ctx.path("teacher_model")
    exported, optimized, int8 = ctx.out / "onnx", ctx.out / "o2", ctx.out / "int8"
    ctx.log.info("stock Optimum path: export -> O2 -> dynamic INT8 of %s", teacher_dir)
    model = get_task(ctx.cfg).ort_model.from_pretrained(teacher_dir, export=True)
    model.save_pretrained(exported)
    ORTOptimizer.from_pretrained(model).optimize(
        save_dir=optimized, optimization_config=AutoOptimizationConfig.O2()
    )
    isa, qconfig = quantization_config(cpu_features())
    report: dict[str, object] = {"quantization_config": isa, "path": "export -> O2 -> dynamic INT8"}
    try:
        ORTQuantizer.from_pretrained(optimized, file_name=_only_onnx(optimized).name).quantize(
            save_dir=int8, quantization_config=qconfig
        )
    except Exception as exc:  # the stock path's known failure on fused graphs
        ctx.log.warning("stock O2 + INT8 failed (%s); falling back to INT8 of the unfused export", exc)
        report |= {"o2_int8_error": f"{type(exc).__name__}: {str(exc)[:500]}",
                   "path": "export -> dynamic INT8 (O2 + INT8 failed)"}
        shutil.rmtree(int8, ignore_errors=True)
        ORTQuantizer.from_pretrained(exported, file_name=_only_onnx(exported).name).quantize(
            save_dir=int8, quantization_config=qconfig
        )
    final = _only_onnx(int8)
    report |= {"size_mb": file_mb(final), "op_counts": op_counts(final)}
    save_json(ctx.out / "baseline_report.json", report)
    ctx.tracker.log_artifact(ctx.out / "baseline_report.json")
    shutil.rmtree(exported, ignore_errors=True)  # only the shipped graph is kept
    shutil.rmtree(optimized, ignore_errors=True)
    return StageResult(
        metrics={"model/stock_int8_size_mb": report["size_mb"],
                 "baseline/o2_int8_failed": float("o2_int8_error" in report)},
        outputs={"stock_int8": f"int8/{final.name}", "stock_int8_dir": "int8",
                 "baseline_report": "baseline_report.json"},
        info={"path": report["path"], "error": report.get("o2_int8_error")},
    )
