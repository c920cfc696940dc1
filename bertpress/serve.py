"""`bertpress serve`: a bundle behind HTTP (FastAPI + uvicorn), torch-free.

    GET  /health     liveness + the model's name and version
    GET  /metadata   task, labels, inference settings, outputs, metrics, limits
    POST /predict    {"texts": ["...", ...]} (or {"text": "..."}) -> per the bundle's task: labels and
                     probabilities (+ "text_pairs"/"text_pair" for text-pair models), or entities
                     with character offsets ({"words": [[...], ...]} for pre-split input;
                     "aggregation": none|simple|first|average|max), or the answer span of a
                     question-answering bundle: {"question": "...", "context": "..."} (or
                     "questions" + "contexts" lists; "top_k", "max_answer_length")
    POST /embed      {"texts": [...], "kind": "mean"|"pooled"|"sequence"|"hidden_states",
                      "normalize": false} -> embeddings
    POST /rerank     (a cross-encoder bundle) {"query": "...", "passages": [...], "top_k": 10} -> the
                     passages best first {rank, index, score, text}
    POST /search     (with --index) {"query": "..."} or {"queries": [...]}, "k": 10 -> per query its
                     hits {rank, id, score, text, metadata}, best first

Bad requests get a 4xx with a message in "detail": 413 for a body or batch over the limits, 422 for
a malformed body, 400 for an embedding kind this bundle's model does not export.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, model_validator

from bertpress.errors import BundleError, InputError
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


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str | None = None
    texts: list[str] | None = None
    words: list[list[str]] | None = Field(None, description="Pre-split inputs (entity recognition).")
    text_pair: str | None = None
    text_pairs: list[str] | None = None
    aggregation: Literal["none", "simple", "first", "average", "max"] | None = None
    question: str | None = Field(None, description="Question answering: with \"context\".")
    context: str | None = None
    questions: list[str] | None = Field(None, description="Question answering: with \"contexts\".")
    contexts: list[str] | None = None
    top_k: int | None = Field(None, ge=1, le=100, description="Question answering: answers per question.")
    max_answer_length: int | None = Field(None, ge=1, le=512, description="Question answering: in tokens.")

    @model_validator(mode="after")
    def _one_of(self):
        given = [name for name in ("text", "texts", "words", "question", "questions")
                 if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError('give exactly one of "text" (a string), "texts" (a list of strings), '
                             '"words" (a list of word lists), or "question" + "context" / "questions" + '
                             '"contexts" (question answering)')
        if (self.question is None) != (self.context is None):
            raise ValueError('"question" and "context" go together')
        if (self.questions is None) != (self.contexts is None) or len(self.questions or []) != len(self.contexts or []):
            raise ValueError('"questions" needs one context per question in "contexts"')
        if self.text_pair is not None and self.text is None:
            raise ValueError('"text_pair" goes with "text"; use "text_pairs" with "texts"')
        if self.text_pairs is not None and len(self.text_pairs) != len(self.texts or []):
            raise ValueError('"text_pairs" needs one second text per entry of "texts"')
        return self

    def inputs(self) -> list:
        if self.question is not None:
            return [(self.question, self.context)]
        if self.questions is not None:
            return list(zip(self.questions, self.contexts or [], strict=True))
        if self.words is not None:
            return [list(w) for w in self.words]
        texts = [self.text] if self.text is not None else list(self.texts or [])
        pairs = [self.text_pair] if self.text_pair is not None else self.text_pairs
        return [(t, p) for t, p in zip(texts, pairs, strict=True)] if pairs is not None else texts


class SearchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    query: str | None = None
    queries: list[str] | None = None
    k: int = Field(10, ge=1, le=1000)

    @model_validator(mode="after")
    def _one_of(self):
        if (self.query is None) == (self.queries is None):
            raise ValueError('give exactly one of "query" (a string) or "queries" (a list of strings)')
        return self


class RerankRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    query: str = Field(min_length=1)
    passages: list[str]
    top_k: int | None = Field(None, ge=1, le=1000, description="Keep the best k (default: all).")
    retriever_scores: list[float] | None = Field(None, description="The first-stage score of each passage: "
                                                 "fused into the order when the bundle was trained so.")


class EmbedRequest(_Request):
    kind: Literal["mean", "pooled", "sequence", "hidden_states"] = "mean"
    normalize: bool = Field(False, description="L2-normalize each vector.")


def create_app(model: Model, limits: Limits = Limits(), version: str | None = None, index=None) -> FastAPI:
    """The app; `index` (a bertpress.index.VectorIndex built with `model`) adds POST /search."""
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

    def checked(texts: list) -> list:
        if not texts:
            raise HTTPException(422, '"texts" is empty: send at least one text')
        if len(texts) > limits.max_batch:
            raise HTTPException(413, f"{len(texts)} texts in one request; the limit is "
                                     f"{limits.max_batch} (split the batch, or start the server "
                                     "with a larger --max-batch)")
        for i, item in enumerate(texts):
            size = len(item) if isinstance(item, str) else sum(len(t) + 1 for t in item)
            if size > limits.max_text_chars:
                raise HTTPException(413, f"text #{i} has {size} characters; the limit is "
                                         f"{limits.max_text_chars} (--max-text-chars)")
        return texts

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", "model": model.metadata.get("name"), "version": version}

    @app.get("/metadata")
    def metadata() -> dict[str, Any]:
        keys = ("name", "task", "labels", "max_length", "truncation", "outputs", "variant",
                "architecture", "metrics", "provenance", "text_pair", "aggregation", "stride",
                "doc_stride", "max_answer_length", "rerank_depth")
        return {k: model.metadata.get(k) for k in keys} | {
            "version": version, "limits": asdict(limits), "providers": model.session.get_providers() if model.session else ["numpy"],
            "index": index and {"documents": len(index), "kind": index.meta["kind"], "dim": index.meta["dim"]}}

    @app.post("/predict")
    def predict(body: PredictRequest) -> dict[str, Any]:
        inputs = checked(body.inputs())
        options = {"aggregation": body.aggregation} if body.aggregation else {}
        qa = {"top_k": body.top_k, "max_answer_length": body.max_answer_length}
        options |= {k: v for k, v in qa.items() if v is not None}
        if options and ("aggregation" in options) != (model.task == "token-classification"):
            raise HTTPException(400, f"{sorted(options)} do not apply to this {model.task} bundle")
        if (body.question is not None or body.questions is not None) != (model.task == "question-answering"):
            raise HTTPException(400, f"this bundle is {model.task}: question answering takes "
                                     '"question" + "context"; other bundles "text" / "texts"')
        try:
            return {"predictions": model.predict(inputs, batch_size=limits.max_batch, **options)}
        except (InputError, TypeError) as exc:
            raise HTTPException(400, str(exc)) from None

    @app.post("/embed")
    def embed(body: EmbedRequest) -> dict[str, Any]:
        texts = checked(body.all_texts())
        try:
            vectors = model.embed(texts, kind=body.kind, batch_size=limits.max_batch,
                                  normalize=body.normalize)
        except BundleError as exc:
            raise HTTPException(400, str(exc)) from None
        return {"kind": body.kind, "embeddings": [v.tolist() for v in vectors]}

    @app.post("/rerank")
    def rerank(body: RerankRequest) -> dict[str, Any]:
        if model.task != "cross-encoder":
            raise HTTPException(400, f"this bundle is {model.task}: /rerank needs a cross-encoder bundle")
        if not body.passages:
            raise HTTPException(422, '"passages" is empty: send the candidates to re-rank')
        passages = checked(list(body.passages))
        if len(body.query) > limits.max_text_chars:
            raise HTTPException(413, f"the query has {len(body.query)} characters; the limit is "
                                     f"{limits.max_text_chars} (--max-text-chars)")
        try:
            return {"query": body.query, "results": model.head.rerank(body.query, passages, body.top_k,
                                                                      batch_size=limits.max_batch,
                                                                      retriever_scores=body.retriever_scores)}
        except InputError as exc:
            raise HTTPException(400, str(exc)) from None

    @app.post("/search")
    def search(body: SearchRequest) -> dict[str, Any]:
        if index is None:
            raise HTTPException(404, "this server has no index: start it with --index DIR "
                                     "(made by `bertpress index`)")
        queries = checked([body.query] if body.query is not None else list(body.queries or []))
        return {"k": body.k, "results": index.search(model, queries, body.k)}

    return app


def _too_large(size: int, limits: Limits) -> JSONResponse:
    return JSONResponse(status_code=413, content={
        "detail": f"request body of {size} bytes is over the limit of {limits.max_body_bytes} "
                  "(send fewer or shorter texts, or start the server with a larger --max-body-bytes)"})


def serve(model: Model, host: str, port: int, limits: Limits, version: str | None = None,
          index=None, log_level: str = "info") -> None:
    import uvicorn

    uvicorn.run(create_app(model, limits, version, index), host=host, port=port, log_level=log_level)
