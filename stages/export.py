"""export stage: teacher and student to ONNX (dynamic batch and sequence axes) via optimum, with
the task's export head, a parity check against PyTorch on real validation inputs, then
onnxruntime's transformer fusions (attention, SkipLayerNorm, GELU, embeddings), with the parity
check repeated on the fused graph.

With export.embedding_outputs the student is exported with those outputs beside its logits
(stages._multi_output's wrapper; optimum has no such head) and parity covers every output.
Per-token outputs (token classification logits, sequence, hidden_states) are compared over real
(unpadded) tokens only.

Writes, for m in {teacher, student}: m/model.onnx, m/model_fused.onnx, m/config.json, tokenizer
files, and parity.json (with the student's output names).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import torch
from onnxruntime.transformers.fusion_options import FusionOptions
from onnxruntime.transformers.optimizer import optimize_model
from optimum.exporters.onnx import main_export
from transformers import AutoTokenizer

from pipeline.stage import StageContext, StageError, StageResult
from stages._hf import MODEL_INPUTS, load_model, load_splits_dir, save_json
from stages._multi_output import ModelWithEmbeddings, export_with_embeddings
from stages._onnx import compact_shared_rows, file_mb, make_session, session_feed
from stages._vocab import SHARED_ROWS_FILE
from stages.tasks import get_task
from stages.tasks.base import Task

# Fused operators worth reporting (onnxruntime's names); counts of 0 are kept to show what failed.
FUSED_OPS = ("Attention", "MultiHeadAttention", "EmbedLayerNormalization", "SkipLayerNormalization",
             "LayerNormalization", "BiasGelu", "FastGelu", "Gelu", "QuickGelu")
PER_TOKEN = ("sequence", "hidden_states")
log = logging.getLogger("bertpress.export")


def to_onnx(model_dir: Path, out_dir: Path, opset: int, task: str) -> Path:
    main_export(
        model_name_or_path=str(model_dir),
        output=out_dir,
        task=task,
        opset=opset,
        device="cpu",
        do_validation=False,  # we validate on real data below, with our own tolerance
        library_name="transformers",
    )
    path = out_dir / "model.onnx"
    if not path.is_file():
        raise StageError(f"optimum wrote no {path}")
    return path


def fuse(onnx_path: Path, out_path: Path, num_heads: int, hidden_size: int,
         embed_layer_norm: bool = True) -> dict[str, int]:
    """onnxruntime's BERT fusions in Python only (opt_level=0), so the graph stays portable across
    CPU and GPU and can still be quantized. `embed_layer_norm=False` leaves the embedding lookups
    as Gathers (for 4-bit embedding tables, which EmbedLayerNormalization cannot read)."""
    options = FusionOptions("bert")
    options.enable_embed_layer_norm = embed_layer_norm
    optimizer = optimize_model(
        str(onnx_path), model_type="bert", num_heads=num_heads, hidden_size=hidden_size,
        optimization_options=options, opt_level=0, use_gpu=False,
    )
    optimizer.save_model_to_file(str(out_path), use_external_data_format=False)
    stats = optimizer.get_fused_operator_statistics()
    return {op: int(stats.get(op, 0)) for op in FUSED_OPS}


def export_with_head(model_dir: Path, out_dir: Path, outputs: list[str], opset: int, task: Task) -> Path:
    """Through stages._multi_output's wrapper: the task's head, plus any embedding outputs."""
    model = load_model(model_dir, task.auto_model)
    path = export_with_embeddings(model, out_dir / "model.onnx", outputs, opset, task.head_logits,
                                  per_token_logits=task.per_token)
    # The same side files optimum writes next to its model: config and tokenizer.
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                 "vocab.txt"):
        if (model_dir / name).is_file():
            shutil.copy2(model_dir / name, out_dir / name)
    return path


def parity(model_dir: Path, onnx_path: Path, raw, task: Task, runtime) -> dict[str, float]:
    """ONNX vs PyTorch on real inputs: max |logit difference| and argmax disagreements (per token
    for per-token logits) and, for each embedding output, the max |difference| over real
    (unpadded) tokens relative to its scale."""
    session = make_session(onnx_path, runtime, provider_list=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    reference = ModelWithEmbeddings(load_model(model_dir, task.auto_model), names[1:], task.head_logits).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    features = task.features(raw, tokenizer)
    columns = [c for c in MODEL_INPUTS if c in features.column_names]
    diffs = dict.fromkeys(names, 0.0)
    flips, n = 0, 0
    for start in range(0, len(features), 16):
        chunk = features[start:start + 16]
        rows = [{c: chunk[c][i] for c in columns} for i in range(len(chunk["input_ids"]))]
        batch = {k: np.asarray(v, dtype=np.int64) for k, v in tokenizer.pad(rows, return_tensors="np").items()
                 if k in columns}
        with torch.no_grad():
            expected = [t.numpy() for t in reference(**{k: torch.from_numpy(v) for k, v in batch.items()})]
        got = session.run(names, session_feed(session, batch))
        mask = batch["attention_mask"].astype(bool)
        for name, want, have in zip(names, expected, got, strict=True):
            diff = np.abs(want - have)
            if name in PER_TOKEN or (name == "logits" and task.per_token):
                diff = diff[:, mask] if name == "hidden_states" else diff[mask]
            scale = 1.0 if name == "logits" else max(1.0, float(np.abs(want).max()))
            diffs[name] = max(diffs[name], float(diff.max()) / scale)
        if task.argmax_outputs:
            changed = expected[0].argmax(-1) != got[0].argmax(-1)
            flips += int((changed[mask] if task.per_token else changed).sum())
        n += len(got[0])
    result = {"max_abs_diff": diffs["logits"], "argmax_changes": flips, "examples": n}
    return result | {f"{name}_max_rel_diff": d for name, d in diffs.items() if name != "logits"}


def run(ctx: StageContext) -> StageResult:
    cfg, ecfg = ctx.cfg, ctx.cfg.export
    task = get_task(cfg)
    validation = load_splits_dir(ctx.path("dataset"))["validation"]
    sample = validation.select(range(min(ecfg.parity_samples, len(validation))))

    metrics: dict[str, float] = {}
    outputs: dict[str, str] = {}
    info: dict[str, dict] = {"parity": {}, "fused_ops": {}}
    for role in ("teacher", "student"):
        model_dir = ctx.path(f"{role}_model")
        out_dir = ctx.out / role
        ctx.log.info("exporting the %s (%s) to ONNX", role, model_dir)
        extra_outputs = ecfg.embedding_outputs if role == "student" else []
        if extra_outputs or task.own_export:
            raw = export_with_head(model_dir, out_dir, extra_outputs, ecfg.opset, task)
        else:
            raw = to_onnx(model_dir, out_dir, ecfg.opset, task.export_task)
        checks = {"onnx": raw}
        if ecfg.optimize:
            model_cfg = load_model(model_dir, task.auto_model).config
            fused_path = out_dir / "model_fused.onnx"
            counts = fuse(raw, fused_path, model_cfg.num_attention_heads, model_cfg.hidden_size)
            info["fused_ops"][role] = counts
            metrics |= {f"{role}/fused_{op.lower()}": float(n) for op, n in counts.items() if n}
            if counts["Attention"] + counts["MultiHeadAttention"] < model_cfg.num_hidden_layers:
                ctx.log.warning(
                    "%s: attention fused in %d of %d layers; the unfused graph is slower",
                    role, counts["Attention"] + counts["MultiHeadAttention"], model_cfg.num_hidden_layers,
                )
            checks["fused"] = fused_path
            outputs[f"{role}_fused"] = f"{role}/model_fused.onnx"
        if (model_dir / SHARED_ROWS_FILE).is_file():  # after fusion, which matches the plain lookup
            shared = np.load(model_dir / SHARED_ROWS_FILE)
            for path in checks.values():
                compact_shared_rows(path, path, shared["kept"].tolist(), shared["position"])
            ctx.log.info("%s: %d embedding rows stored, ids looked up through a remap table",
                         role, len(shared["kept"]))
        for variant, path in checks.items():
            result = parity(model_dir, path, sample, task, cfg.runtime)
            info["parity"][f"{role}_{variant}"] = result
            metrics[f"{role}/{variant}_max_abs_diff"] = result["max_abs_diff"]
            metrics[f"{role}/{variant}_size_mb"] = file_mb(path)
            worst_embedding = max((v for k, v in result.items() if k.endswith("_max_rel_diff")), default=0.0)
            # Prediction flips are reported, not judged: with every logit within atol, a flip needs
            # the two top logits within 2 x atol (a near-tie float noise may turn), and a real
            # disagreement already fails the logit check.
            if result["max_abs_diff"] > ecfg.atol or worst_embedding > ecfg.atol:
                raise StageError(
                    f"{role} {variant} ONNX disagrees with PyTorch on {result['examples']} validation "
                    f"examples: max |logit diff| {result['max_abs_diff']:.2e}, worst embedding "
                    f"relative diff {worst_embedding:.2e} (export.atol {ecfg.atol:.0e}), "
                    f"{result['argmax_changes']} prediction(s) changed. Try another "
                    "export.opset, or export.optimize=false if only the fused graph fails."
                )
            ctx.log.info("%s %s parity: max |diff| %.2e on %d examples%s", role, variant,
                         result["max_abs_diff"], result["examples"],
                         f" ({result['argmax_changes']} near-tied prediction(s) flipped)" if result["argmax_changes"] else "")
        checked = task.export_checks(model_dir, checks.get("fused", checks["onnx"]), task.texts(sample))
        if checked:
            info.setdefault("library_parity", {})[role] = checked
            metrics |= {f"{role}/{k}": v for k, v in checked.items()}
            ctx.log.info("%s: %s", role, checked)
        if role == "student":
            info["student_outputs"] = ["logits", *ecfg.embedding_outputs]
        outputs[f"{role}_onnx"] = f"{role}/model.onnx"
        outputs[f"{role}_dir"] = role
        # The best graph for serving: fused when fusion ran.
        outputs[f"{role}_best"] = outputs.get(f"{role}_fused", outputs[f"{role}_onnx"])
    save_json(ctx.out / "parity.json", info)
    ctx.tracker.log_artifact(ctx.out / "parity.json")
    return StageResult(metrics=metrics, outputs=outputs | {"parity": "parity.json"}, info=info)
