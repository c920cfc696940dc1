"""A vector index of a corpus embedded by one bundle: FAISS on disk, torch-free.

    bertpress index BUNDLE --input corpus.jsonl --out DIR    build, or add to an existing index
    bertpress index BUNDLE --out DIR --rebuild               re-embed the stored documents (new bundle)
    bertpress search DIR "query" -k 10                       top-k documents with scores

    DIR/index.faiss      FAISS index over L2-normalized vectors (inner product = cosine): exact
                         (IndexFlatIP) by default, or approximate (HNSW) with --hnsw
    DIR/documents.jsonl  one line per vector, in vector order: {"id", "text", "metadata"}
    DIR/index.json       which bundle made the vectors (its name and the sha256 of its graph and
                         tokenizer), the embedding, the index type, and the document count

A query embedded by another bundle lives in another vector space: opening an index with a bundle
other than the one recorded is refused (rebuild the index with the new bundle instead), with one
exception: bundles that declare the same embedding space (`sentence_embedding.space` in bundle.json:
a student distilled into its teacher's space, and that teacher) may answer queries over each other's
index, so a corpus embedded once by the teacher serves the student's queries. Documents are only
added by the bundle that made the index. Every save
writes new files beside the old ones and renames them into place, index.json last, so an interrupted
add leaves the previous index readable.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bertpress import bundle as bundle_format
from bertpress.errors import BundleError, InputError

INDEX_FILE = "index.faiss"
DOCUMENTS_FILE = "documents.jsonl"
META_FILE = "index.json"
FORMAT = "bertpress-index/1"
KINDS = ("exact", "hnsw")


@dataclass(frozen=True)
class Document:
    id: str
    text: str
    metadata: dict[str, Any]


def bundle_identity(model) -> dict[str, str]:
    """Name and content hashes of the files that decide a bundle's vectors."""
    from bertpress.static import STATIC_FILE

    sums = bundle_format.read_checksums(model.path)
    return {"name": str(model.metadata.get("name", model.path.name)), "path": str(model.path.resolve()),
            "model_sha256": sums.get(bundle_format.MODEL_FILE, sums.get(STATIC_FILE, "")),
            "tokenizer_sha256": sums.get(bundle_format.TOKENIZER_FILE, ""),
            "embedding": model.embedding_name,
            "space": (model.metadata.get("sentence_embedding") or {}).get("space") or ""}


def same_bundle(a: dict[str, str], b: dict[str, str]) -> bool:
    return all(a.get(k) == b.get(k) for k in ("model_sha256", "tokenizer_sha256", "embedding"))


def same_space(a: dict[str, str], b: dict[str, str]) -> bool:
    """Both bundles declare one embedding space (a student kept in its teacher's, and the teacher)."""
    return bool(a.get("space")) and a.get("space") == b.get("space")


def read_documents(path: Path, text_column: str = "text", id_column: str = "id") -> list[Document]:
    """Documents from .jsonl / .csv / .tsv / .txt: the text field, an id (the id field, else the
    file's stem and row number) and every other field as metadata."""
    from bertpress.textio import read_records

    records = read_records(Path(path), text_column)
    docs = []
    for number, record in enumerate(records, 1):
        text = record.get(text_column)
        if not isinstance(text, str) or not text.strip():
            raise InputError(f"{path}: row {number} has no text in field {text_column!r} (fields: "
                             f"{sorted(record)}); pass --text-column NAME")
        doc_id = record.get(id_column)
        doc_id = f"{Path(path).stem}:{number}" if doc_id is None or doc_id == "" else str(doc_id)
        metadata = {k: v for k, v in record.items() if k not in (text_column, id_column)}
        docs.append(Document(doc_id, text, metadata))
    if not docs:
        raise InputError(f"{path} has no documents")
    return docs


def _faiss():
    try:
        import faiss
    except ImportError:
        raise InputError("vector indexes need FAISS: pip install 'bertpress[index]' (faiss-cpu)") from None
    return faiss


class VectorIndex:
    """Documents and their vectors from one bundle; search by inner product on unit vectors."""

    def __init__(self, path: Path, meta: dict[str, Any], index, documents: list[Document]):
        self.path, self.meta, self.index, self.documents = Path(path), meta, index, documents
        self._ids = {d.id for d in documents}

    # -- create / open ---------------------------------------------------------------------------
    @classmethod
    def create(cls, path: Path, model, dim: int, kind: str = "exact", hnsw_m: int = 32,
               ef_search: int = 64) -> VectorIndex:
        if kind not in KINDS:
            raise InputError(f"unknown index kind {kind!r}; choose one of {', '.join(KINDS)}")
        faiss = _faiss()
        if kind == "exact":
            index = faiss.IndexFlatIP(dim)
        else:
            index = faiss.IndexHNSWFlat(dim, hnsw_m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efSearch = ef_search
        meta = {"format": FORMAT, "bundle": bundle_identity(model), "dim": dim, "kind": kind,
                "hnsw_m": hnsw_m if kind == "hnsw" else None,
                "ef_search": ef_search if kind == "hnsw" else None, "count": 0}
        return cls(Path(path), meta, index, [])

    @classmethod
    def open(cls, path: Path) -> VectorIndex:
        path = Path(path)
        meta_path = path / META_FILE
        if not meta_path.is_file():
            raise InputError(f"{path} is not a bertpress index (no {META_FILE}); build one with "
                             "`bertpress index BUNDLE --input CORPUS --out DIR`")
        meta = json.loads(meta_path.read_text())
        if meta.get("format") != FORMAT:
            raise InputError(f"{meta_path}: format {meta.get('format')!r}, this bertpress reads {FORMAT!r}")
        faiss = _faiss()
        index = faiss.read_index(str(path / INDEX_FILE))
        if meta.get("kind") == "hnsw" and meta.get("ef_search"):
            index.hnsw.efSearch = int(meta["ef_search"])
        documents = []
        with (path / DOCUMENTS_FILE).open(encoding="utf-8") as fh:
            for line in fh:
                row = json.loads(line)
                documents.append(Document(row["id"], row["text"], row.get("metadata", {})))
        if not (len(documents) == index.ntotal == meta["count"]):
            raise InputError(f"{path}: {len(documents)} documents, {index.ntotal} vectors, index.json says "
                             f"{meta['count']}: the index is inconsistent; rebuild it (--rebuild)")
        return cls(path, meta, index, documents)

    def check_bundle(self, model, queries: bool = False) -> None:
        """Refuse a bundle other than the one whose vectors the index holds; for `queries`, also
        accept one that declares the same embedding space."""
        made_by, given = self.meta["bundle"], bundle_identity(model)
        if same_bundle(made_by, given) or (queries and same_space(made_by, given)):
            return
        if same_space(made_by, given):
            raise BundleError(
                f"index {self.path} was built with bundle {made_by['name']!r} ({made_by['path']}); "
                f"{given['path']} shares its embedding space ({given['space']}), so it may search this "
                "index, but documents are added by the bundle that built it: "
                f"bertpress index {made_by['path']} --input CORPUS --out {self.path}")
        raise BundleError(
            f"index {self.path} was built with bundle {made_by['name']!r} ({made_by['path']}, graph "
            f"sha256 {made_by['model_sha256'][:12]}); {given['path']} is a different model (graph "
            f"sha256 {given['model_sha256'][:12]}) whose vectors live in another space. Use the "
            f"index's bundle, or re-embed the stored documents with this one: "
            f"bertpress index {given['path']} --out {self.path} --rebuild")

    # -- content ---------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.documents)

    def add(self, model, documents: Sequence[Document], batch_size: int = 64,
            progress: bool = True) -> float:
        """Embed and add documents (ids must be new); seconds spent embedding and indexing."""
        self.check_bundle(model)
        seen: set[str] = set()
        repeated = [d.id for d in documents if d.id in self._ids or (d.id in seen or seen.add(d.id))]
        if repeated:
            raise InputError(f"{len(repeated)} document id(s) already in the index or repeated in the "
                             f"input, e.g. {repeated[:3]}; give unique ids (--id-column), or rebuild")
        start = time.perf_counter()
        vectors = embed_all(model, [d.text for d in documents], batch_size, progress)
        if vectors.shape[1] != self.meta["dim"]:
            raise BundleError(f"the bundle gives {vectors.shape[1]}-d vectors; the index holds {self.meta['dim']}-d")
        self.index.add(vectors)
        self.documents += list(documents)
        self._ids |= {d.id for d in documents}
        self.meta["count"] = len(self.documents)
        return time.perf_counter() - start

    def search(self, model, queries: Sequence[str], k: int = 10, batch_size: int = 32) -> list[list[dict]]:
        """Per query, up to k hits {rank, id, score, text, metadata}, best first."""
        self.check_bundle(model, queries=True)
        return self.search_vectors(model.encode(list(queries), batch_size=batch_size), k)

    def search_vectors(self, vectors: np.ndarray, k: int = 10) -> list[list[dict]]:
        if k < 1:
            raise InputError(f"k must be >= 1, got {k}")
        if not self.documents:
            return [[] for _ in range(len(vectors))]
        scores, positions = self.index.search(np.ascontiguousarray(vectors, dtype=np.float32),
                                              min(k, len(self.documents)))
        return [[{"rank": r + 1, "id": self.documents[p].id, "score": float(s),
                  "text": self.documents[p].text, "metadata": self.documents[p].metadata}
                 for r, (s, p) in enumerate(zip(row_s, row_p, strict=True)) if p >= 0]
                for row_s, row_p in zip(scores, positions, strict=True)]

    # -- disk ------------------------------------------------------------------------------------
    def save(self) -> None:
        """New files beside the old, renamed into place; index.json (the count) goes last."""
        faiss = _faiss()
        self.path.mkdir(parents=True, exist_ok=True)
        tmp_index, tmp_docs, tmp_meta = (self.path / f".{name}.tmp" for name in (INDEX_FILE, DOCUMENTS_FILE, META_FILE))
        faiss.write_index(self.index, str(tmp_index))
        with tmp_docs.open("w", encoding="utf-8") as fh:
            for d in self.documents:
                fh.write(json.dumps({"id": d.id, "text": d.text, "metadata": d.metadata}, ensure_ascii=False) + "\n")
        tmp_meta.write_text(json.dumps(self.meta, indent=2))
        os.replace(tmp_index, self.path / INDEX_FILE)
        os.replace(tmp_docs, self.path / DOCUMENTS_FILE)
        os.replace(tmp_meta, self.path / META_FILE)


def embed_all(model, texts: Sequence[str], batch_size: int = 64, progress: bool = True) -> np.ndarray:
    """Vectors of many texts, in chunks, with a progress bar on stderr (rich: a runtime dependency)."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    chunk = max(batch_size * 16, 256)
    parts = []
    columns = (TextColumn("embedding"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True), disable=not progress) as bar:
        task = bar.add_task("embedding", total=len(texts))
        for start in range(0, len(texts), chunk):
            parts.append(model.encode(texts[start:start + chunk], batch_size=batch_size))
            bar.advance(task, len(texts[start:start + chunk]))
    return np.concatenate(parts) if parts else np.zeros((0, 0), dtype=np.float32)


def build(model, documents: Sequence[Document], out: Path, kind: str = "exact", batch_size: int = 64,
          progress: bool = True, hnsw_m: int = 32, ef_search: int = 64) -> tuple[VectorIndex, float]:
    """A new index of `documents` at `out` (which must not hold one); (index, seconds)."""
    probe = model.encode([documents[0].text])
    index = VectorIndex.create(out, model, probe.shape[1], kind, hnsw_m, ef_search)
    seconds = index.add(model, documents, batch_size, progress)
    index.save()
    return index, seconds


def rebuild(model, path: Path, batch_size: int = 64, progress: bool = True,
            kind: str | None = None) -> tuple[VectorIndex, float]:
    """Re-embed an index's stored documents with `model` (a new bundle) into a fresh index there."""
    old = VectorIndex.open(path)
    kind = kind or old.meta["kind"]
    return build(model, old.documents, path, kind, batch_size, progress,
                 old.meta.get("hnsw_m") or 32, old.meta.get("ef_search") or 64)
