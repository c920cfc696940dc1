"""`bertpress serve`: a bundle behind HTTP (FastAPI + uvicorn), torch-free.

    GET  /health     liveness + the model's name and version
    GET  /metadata   labels, inference settings, outputs, metrics, limits
    POST /predict    {"texts": ["...", ...]} (or {"text": "..."}) -> labels and probabilities
    POST /embed      {"texts": [...], "kind": "mean"|"pooled"|"sequence"|"hidden_states",
                      "normalize": false} -> embeddings

Bad requests get a 4xx with a message in "detail": 413 for a body or batch over the limits, 422 for
a malformed body, 400 for an embedding kind this bundle's model does not export.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, model_validator

from bertpress.bundle import BundleError
from bertpress.runtime import Model


@dataclass(frozen=True)
class Limits:
    max_batch: int = 64  # texts per request
    max_text_chars: int = 10_000  # per text; the model reads at most max_length tokens anyway
    max_body_bytes: int = 1_000_000


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str | None = None
    texts: list[str] | None = None

    @model_validator(mode="after")
    def _one_of(self):
        if (self.text is None) == (self.texts is None):
            raise ValueError('give exactly one of "text" (a string) or "texts" (a list of strings)')
        return self

    def all_texts(self) -> list[str]:
        return [self.text] if self.text is not None else list(self.texts or [])


class PredictRequest(_Request):
    pass


class EmbedRequest(_Request):
    kind: Literal["mean", "pooled", "sequence", "hidden_states"] = "mean"
    normalize: bool = Field(False, description="L2-normalize each vector.")


def create_app(model: Model, limits: Limits = Limits(), version: str | None = None) -> FastAPI:
    app = FastAPI(title=f"bertpress: {model.metadata.get('name', 'model')}", version=version or "0")

    @app.middleware("http")
    async def limit_body(request: Request, call_next):
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limits.max_body_bytes:
            return _too_large(int(declared), limits)
        if request.method == "POST":
            body = await request.body()  # chunked uploads have no content-length: count them
            if len(body) > limits.max_body_bytes:
                return _too_large(len(body), limits)
        return await call_next(request)

    def checked(texts: list[str]) -> list[str]:
        if not texts:
            raise HTTPException(422, '"texts" is empty: send at least one text')
        if len(texts) > limits.max_batch:
            raise HTTPException(413, f"{len(texts)} texts in one request; the limit is "
                                     f"{limits.max_batch} (split the batch, or start the server "
                                     "with a larger --max-batch)")
        for i, text in enumerate(texts):
            if len(text) > limits.max_text_chars:
                raise HTTPException(413, f"text #{i} has {len(text)} characters; the limit is "
                                         f"{limits.max_text_chars} (--max-text-chars)")
        return texts

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", "model": model.metadata.get("name"), "version": version}

    @app.get("/metadata")
    def metadata() -> dict[str, Any]:
        keys = ("name", "task", "labels", "max_length", "truncation", "outputs", "variant",
                "architecture", "metrics", "provenance")
        return {k: model.metadata.get(k) for k in keys} | {
            "version": version, "limits": asdict(limits), "providers": model.session.get_providers()}

    @app.post("/predict")
    def predict(body: PredictRequest) -> dict[str, Any]:
        texts = checked(body.all_texts())
        return {"predictions": model.predict(texts, batch_size=limits.max_batch)}

    @app.post("/embed")
    def embed(body: EmbedRequest) -> dict[str, Any]:
        texts = checked(body.all_texts())
        try:
            vectors = model.embed(texts, kind=body.kind, batch_size=limits.max_batch,
                                  normalize=body.normalize)
        except BundleError as exc:
            raise HTTPException(400, str(exc)) from None
        return {"kind": body.kind, "embeddings": [v.tolist() for v in vectors]}

    return app


def _too_large(size: int, limits: Limits) -> JSONResponse:
    return JSONResponse(status_code=413, content={
        "detail": f"request body of {size} bytes is over the limit of {limits.max_body_bytes} "
                  "(send fewer or shorter texts, or start the server with a larger --max-body-bytes)"})


def serve(model: Model, host: str, port: int, limits: Limits, version: str | None = None,
          log_level: str = "info") -> None:
    import uvicorn

    uvicorn.run(create_app(model, limits, version), host=host, port=port, log_level=log_level)
