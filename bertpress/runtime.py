"""Run a released model with onnxruntime, tokenizers and numpy only (no torch, no transformers).

    from bertpress.runtime import Model
    model = Model.load("artifacts/release/<key>/bundle")      # or "models:/bertpress-default@champion"
    model.predict(["a gripping, beautifully shot film"])      # [{"label": ..., "score": ..., ...}]
    model.embed(["some text"], kind="mean")                   # [1, hidden]

Texts are sorted by length before batching (less padding: the FastFormers trick) and results are
returned in input order.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer

from bertpress import bundle as bundle_format
from bertpress.embeddings import EMBEDDING_KINDS, l2_normalize, mean_pool
from bertpress.errors import BundleError, InputError
from bertpress.tasks import head_for, task_name

REGISTRY_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[\w-]+)|/(?P<version>\d+))$")
BUNDLE_ARTIFACT_PATH = "bundle"  # where the release stage logs the bundle in its MLflow run
BUNDLE_URI_TAG = "bertpress.bundle_uri"


def default_cache_dir() -> Path:
    return Path(os.environ.get("BERTPRESS_CACHE", Path.home() / ".cache" / "bertpress")) / "bundles"


def resolve_source(source: str | Path, cache_dir: Path | None = None,
                   tracking_uri: str | None = None) -> Path:
    """A local bundle directory for a path or a registry URI (models:/name@alias, models:/name/3).

    Registry bundles are downloaded once per model version into the cache (MLflow client needed:
    `pip install 'bertpress[registry]'`, or the full training install). The registry is
    `tracking_uri`, else $MLFLOW_TRACKING_URI, else MLflow's current tracking URI.
    """
    text = str(source)
    if not text.startswith("models:/"):
        path = Path(text).expanduser()
        if not path.exists():
            raise BundleError(f"bundle {path} does not exist: pass a bundle directory "
                              "(artifacts/release/<key>/bundle, made by `make release`) or a "
                              "registry URI such as models:/<name>@champion")
        return path
    match = REGISTRY_URI.match(text)
    if not match:
        raise BundleError(f"{text!r} is not a registry URI bertpress understands: use "
                          "models:/<name>@<alias> or models:/<name>/<version>")
    try:
        import mlflow
        from mlflow import MlflowClient
        from mlflow.exceptions import MlflowException
    except ImportError:
        raise BundleError(f"{text} needs the MLflow client: pip install 'bertpress[registry]'") from None
    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
    client = MlflowClient()
    name = match["name"]
    try:
        version = (client.get_model_version_by_alias(name, match["alias"]) if match["alias"]
                   else client.get_model_version(name, match["version"]))
    except MlflowException as exc:
        raise BundleError(f"{text}: not found in the registry at {mlflow.get_tracking_uri()} "
                          f"({exc.message.splitlines()[0]}). Check the name and alias, and "
                          "MLFLOW_TRACKING_URI.") from None
    # Keyed by server too: two tracking servers can both have a "name" version 1.
    server = hashlib.sha256(mlflow.get_tracking_uri().encode()).hexdigest()[:12]
    target = (cache_dir or default_cache_dir()) / server / name / f"v{version.version}"
    bundle_dir = target / BUNDLE_ARTIFACT_PATH
    try:
        bundle_format.verify(bundle_dir)
        return bundle_dir  # already downloaded and intact
    except BundleError:
        pass
    uri = version.tags.get(BUNDLE_URI_TAG) or f"runs:/{version.run_id}/{BUNDLE_ARTIFACT_PATH}"
    target.mkdir(parents=True, exist_ok=True)
    try:
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(target)))
    except MlflowException as exc:
        raise BundleError(f"{text} is version {version.version}, but its bundle could not be "
                          f"downloaded from {uri} ({exc.message.splitlines()[0]}); the run's "
                          "artifacts may have been deleted: release it again (`make release`)") from None


def available_providers(device: str = "auto") -> list[str]:
    """CUDA when onnxruntime-gpu sees a GPU and device allows it; CPU always."""
    import onnxruntime as ort  # imported where a session is made: a static bundle needs none

    chosen = []
    if device != "cpu" and "CUDAExecutionProvider" in ort.get_available_providers():
        chosen.append("CUDAExecutionProvider")
    if device == "cuda" and not chosen:
        raise InputError("device 'cuda' asked for, but onnxruntime has no CUDA provider "
                           "(install onnxruntime-gpu instead of onnxruntime)")
    return [*chosen, "CPUExecutionProvider"]


class Model:
    """A loaded bundle: tokenizer + ONNX Runtime session + the task's head, which turns model
    outputs into predictions (labels, entities, ...)."""

    def __init__(self, bundle_dir: str | Path, *, threads: int = 0, device: str = "auto",
                 verify: bool = True):
        self.path = Path(bundle_dir)
        self.metadata: dict[str, Any] = bundle_format.read_metadata(self.path)
        if verify:
            bundle_format.verify(self.path)
        self.task = task_name(self.metadata)
        self.labels: list[str] = list(self.metadata["labels"])
        self.max_length: int = int(self.metadata["max_length"])
        self.outputs: list[str] = list(self.metadata["outputs"])
        self.tokenizer = Tokenizer.from_file(str(self.path / bundle_format.TOKENIZER_FILE))
        self.tokenizer.enable_truncation(self.max_length)
        self.pad_token = self.metadata.get("pad_token", "[PAD]")
        self.pad_id = self.tokenizer.token_to_id(self.pad_token) or 0
        self.tokenizer.enable_padding(pad_id=self.pad_id, pad_token=self.pad_token)
        self.static = None
        if self.metadata.get("static"):  # a Model2Vec tier: numpy only, no session
            from bertpress.static import StaticVectors

            self.static = StaticVectors(self.path, self.metadata["static"], bundle_format.TOKENIZER_FILE)
            self.session, self._inputs = None, set()
            self.head = head_for(self)
            return
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        self.session = ort.InferenceSession(str(self.path / bundle_format.MODEL_FILE), options,
                                            providers=available_providers(device))
        self._inputs = {i.name for i in self.session.get_inputs()}
        self.head = head_for(self)

    @classmethod
    def load(cls, source: str | Path, tracking_uri: str | None = None, cache_dir: Path | None = None,
             **kwargs: Any) -> Model:
        """A bundle directory or a registry URI (models:/name@alias; downloaded to cache_dir)."""
        return cls(resolve_source(source, cache_dir=cache_dir, tracking_uri=tracking_uri), **kwargs)

    # -- inference -------------------------------------------------------------------------------
    def predict(self, inputs: Sequence[Any], batch_size: int = 32, **options: Any) -> list[dict[str, Any]]:
        """One prediction per input, in input order; what an input and a prediction are depends
        on the task (a text or text pair -> label and probabilities; a text or word list ->
        entities). See the task's head in bertpress.tasks."""
        return self.head.predict(inputs, batch_size=batch_size, **options)

    def predict_proba(self, texts: Sequence[Any], batch_size: int = 32) -> np.ndarray:
        """Class probabilities of a classification bundle, [len(texts), len(labels)]."""
        if not hasattr(self.head, "predict_proba"):
            raise BundleError(f"predict_proba needs a sequence-classification bundle; this one is {self.task}")
        return self.head.predict_proba(texts, batch_size)

    def feed(self, encodings: Sequence[Any]) -> dict[str, np.ndarray]:
        """Model inputs for tokenizers encodings of equal length (padded)."""
        feed = {
            "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
            "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64),
        }
        return {k: v for k, v in feed.items() if k in self._inputs}

    def _encode(self, texts: Sequence[Any]) -> dict[str, np.ndarray]:
        return self.feed(self.tokenizer.encode_batch(list(texts)))

    def _batches(self, texts: Sequence[Any], batch_size: int) -> Iterator[tuple[np.ndarray, list[Any]]]:
        """Index arrays and inputs of length-sorted batches (similar lengths pad less)."""
        texts = check_texts(texts, pairs=True)
        if batch_size < 1:
            raise InputError(f"batch_size must be >= 1, got {batch_size}")
        order = np.argsort([len(t) if isinstance(t, str) else sum(map(len, t)) for t in texts],
                           kind="stable")
        for start in range(0, len(texts), batch_size):
            idx = order[start:start + batch_size]
            yield idx, [texts[i] for i in idx]

    def run(self, texts: Sequence[Any], outputs: Sequence[str], batch_size: int = 32
            ) -> Iterator[tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]]:
        """Raw model outputs per batch: (indices into texts, {output: array}, attention mask)."""
        if self.session is None:
            raise BundleError("this is a static (Model2Vec) bundle: it has no graph outputs; use Model.encode")
        for idx, batch in self._batches(texts, batch_size):
            feed = self._encode(batch)
            values = self.session.run(list(outputs), feed)
            yield idx, dict(zip(outputs, values, strict=True)), feed["attention_mask"]

    def embed(self, texts: Sequence[str], kind: str = "mean", batch_size: int = 32,
              normalize: bool = False) -> np.ndarray | list[np.ndarray]:
        """Embeddings as BERT users know them.

        kind: "mean" (attention-masked mean of the sequence output, [n, H]), "pooled" ([CLS] after
        the pooler, [n, H]), "sequence" (per-token last layer, n x [len_i, H]) or "hidden_states"
        (every layer, embeddings first, n x [layers + 1, len_i, H]).
        """
        if kind not in EMBEDDING_KINDS:
            raise InputError(f"unknown embedding kind {kind!r}; choose one of {sorted(EMBEDDING_KINDS)}")
        needed = EMBEDDING_KINDS[kind]
        if needed not in self.outputs and self.metadata.get("sentence_embedding"):
            raise BundleError(f"this is a sentence-embedding bundle: its output is the sentence embedding "
                              f"itself (no {kind!r} output); use Model.encode / `bertpress predict`")
        if needed not in self.outputs:
            raise BundleError(
                f"this bundle's model has outputs {self.outputs}, and {kind!r} embeddings need "
                f"{needed!r}: export it with export.embedding_outputs including {needed!r} and run "
                "`make release` again"
            )
        results: list[Any] = [None] * len(texts)
        for idx, out, mask in self.run(texts, [needed], batch_size):
            value = out[needed]
            if kind == "mean":
                value = mean_pool(value, mask)
            for row, i in enumerate(idx):
                length = int(mask[row].sum())
                if kind in ("mean", "pooled"):
                    results[i] = value[row]
                elif kind == "sequence":
                    results[i] = value[row, :length]
                else:
                    results[i] = value[:, row, :length]
        if kind in ("mean", "pooled"):
            stacked = np.stack(results) if results else np.zeros((0, 0), dtype=np.float32)
            return l2_normalize(stacked) if normalize else stacked
        return [l2_normalize(r) for r in results] if normalize else results

    def encode(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        """One L2-normalized float32 vector per text, the bundle's sentence embedding (dot product =
        cosine). A sentence-embedding bundle computes it inside its ONNX graph (pooling and
        normalisation included; its `sentence_embedding` metadata names the output); any other
        bundle gives the attention-masked mean of its last layer (sentence-transformers' mean pooling)."""
        if self.static is not None:
            return self.static.encode(check_texts(texts))
        spec = self.metadata.get("sentence_embedding")
        if not spec:
            return self.embed(texts, kind="mean", batch_size=batch_size, normalize=True).astype(np.float32)
        name = spec["output"]
        rows: list[Any] = [None] * len(texts)
        for idx, out, _ in self.run(texts, [name], batch_size):
            for row, i in enumerate(idx):
                rows[i] = out[name][row]
        vectors = np.stack(rows).astype(np.float32) if rows else np.zeros((0, 0), dtype=np.float32)
        return vectors if spec.get("normalized") else l2_normalize(vectors)

    @property
    def embedding_name(self) -> str:
        """What `encode` returns, recorded by anything that must not mix embeddings (an index)."""
        spec = self.metadata.get("sentence_embedding")
        if self.static is not None:
            return "static token vectors (Model2Vec), mean, L2-normalized"
        return f"output {spec['output']!r} of the graph" if spec else "mean of the last layer, L2-normalized"


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def check_texts(texts: Sequence[Any], pairs: bool = False) -> list[Any]:
    """A list of strings (or, with pairs, [text, text_pair] pairs as tuples)."""
    if isinstance(texts, str):
        raise InputError("pass a list of texts, not a single string (wrap it: [text])")
    checked = []
    for i, text in enumerate(texts):
        if pairs and isinstance(text, list | tuple) and len(text) == 2 and all(isinstance(t, str) for t in text):
            checked.append(tuple(text))
        elif isinstance(text, str):
            checked.append(text)
        else:
            kind = "a string or a [text, text_pair] pair" if pairs else "a string"
            raise InputError(f"input #{i} is {type(text).__name__}, not {kind}")
    return checked
