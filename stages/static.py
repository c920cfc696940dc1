"""static stage (sentence embeddings, when static.enabled): a Model2Vec static student distilled
from the teacher with the `model2vec` library: every vocabulary token passed through the teacher
once, PCA to static.pca_dims, SIF weighting; a sentence is then the mean of its tokens' vectors, a
speed in another league than any transformer. Saved in model2vec's own format and as the files of
a static bundle (bertpress.static: numpy + tokenizers only), checked to give model2vec's own
vectors (cosine >= 0.9999 on validation texts) and scored on validation.

Writes: model2vec/ (StaticModel.save_pretrained), static.npz + tokenizer.json (the bundle's
files), static_report.json. Inactive (an {"enabled": false} record) when static.enabled is false.
"""

from __future__ import annotations

import json

import numpy as np

from bertpress.static import STATIC_FILE, StaticVectors
from pipeline.stage import StageContext, StageError, StageResult
from stages._hf import load_splits_dir, save_json
from stages.tasks import get_task

RESULT_FILE = "static_report.json"
PARITY_MIN_COSINE = 0.9999


def bundle_settings(model, max_tokens: int) -> dict:
    """What bertpress.static needs to encode as model2vec does."""
    skip = [model.unk_token_id] if model.unk_token_id is not None else []
    return {"normalize": bool(model.normalize), "max_tokens": max_tokens, "dim": int(model.dim),
            "median_token_length": getattr(model, "median_token_length", None), "skip_ids": skip}


def run(ctx: StageContext) -> StageResult:
    scfg = ctx.cfg.static
    if not scfg.enabled:
        save_json(ctx.out / RESULT_FILE, {"enabled": False})
        return StageResult(outputs={"static_result": RESULT_FILE}, info={"enabled": False})
    from model2vec.distill import distill

    task = get_task(ctx.cfg)
    teacher_dir = ctx.path("teacher_model")
    ctx.log.info("Model2Vec: distilling static token vectors from %s (PCA %s)", teacher_dir, scfg.pca_dims)
    try:
        # float16 vectors (model2vec's default): half the size, no measurable loss.
        model = distill(model_name=str(teacher_dir), pca_dims=scfg.pca_dims, sif_coefficient=scfg.sif_coefficient,
                        device="cpu", quantize_to="float16")
    except ValueError as exc:  # e.g. more PCA dimensions than the teacher has
        raise StageError(f"model2vec could not distill {teacher_dir}: {exc}; check static.pca_dims "
                         "(at most the teacher's hidden size)") from None
    model.save_pretrained(str(ctx.out / "model2vec"))
    files = ctx.out / "static"
    files.mkdir()
    arrays = {"embeddings": np.asarray(model.embedding, dtype=np.float16)}
    if model.weights is not None:
        arrays["weights"] = np.asarray(model.weights, dtype=np.float32)
    if model.token_mapping is not None:
        arrays["token_mapping"] = np.asarray(model.token_mapping)
    np.savez(files / STATIC_FILE, **arrays)
    model.tokenizer.save(str(files / "tokenizer.json"))
    settings = bundle_settings(model, ctx.cfg.data.max_length)
    (files / "static.json").write_text(json.dumps(settings, indent=2))

    # The numpy encoder must give model2vec's vectors, or the bundle would ship another model.
    validation = load_splits_dir(ctx.path("dataset"))["validation"]
    texts = task.rows_of(validation)[0]
    encoder = StaticVectors(files, settings, "tokenizer.json")
    ours = encoder.encode(texts)
    theirs = np.asarray(model.encode(texts, max_length=settings["max_tokens"]), dtype=np.float32)
    norms = np.linalg.norm(ours, axis=1) * np.linalg.norm(theirs, axis=1)
    cosine = np.where(norms > 0, (ours * theirs).sum(1) / np.clip(norms, 1e-12, None), 1.0)
    if cosine.min() < PARITY_MIN_COSINE:
        raise StageError(f"bertpress.static disagrees with model2vec's encode() (min cosine {cosine.min():.6f} "
                         f"on {len(texts)} validation texts): a model2vec version with another encoding "
                         "rule; pin the version in constraints.txt and report it")
    scores = task.score_vectors(lambda _: ours, validation)
    size_mb = (files / STATIC_FILE).stat().st_size / 1e6
    report = {"enabled": True, "settings": settings, "vocabulary": int(len(model.embedding)),
              "parity_min_cosine": float(cosine.min()), "validation": scores, "size_mb": size_mb,
              "pca_dims": scfg.pca_dims}
    save_json(ctx.out / RESULT_FILE, report)
    ctx.tracker.log_artifact(ctx.out / RESULT_FILE)
    ctx.log.info("static model: %d tokens x %d dims, %.1f MB; validation %s %.4f", len(model.embedding),
                 settings["dim"], size_mb, task.primary_metric, scores[task.primary_metric])
    return StageResult(
        metrics={f"eval/{k}": v for k, v in scores.items()} | {"model/static_size_mb": size_mb,
                                                                "static/parity_min_cosine": float(cosine.min())},
        outputs={"static_result": RESULT_FILE, "static_model": "static"},
        info={"enabled": True, "size_mb": size_mb})
