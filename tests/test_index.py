"""Vector indexes: build, add, search, rebuild; results equal a brute-force numpy search on the same
vectors; an index refuses a bundle other than its own; `index`, `search` and `/search` without torch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bertpress import index as vindex
from bertpress.errors import BundleError, InputError
from bertpress.runtime import Model
from conftest import embedding_bundle, free_port, wait_until_serving
from conftest import http_call as call

ROOT = Path(__file__).resolve().parents[1]
NO_TORCH = [sys.executable, str(ROOT / "tests" / "no_torch.py")]
WORDS = ["film", "plot", "music", "acting", "great", "dull", "thin", "wonderful", "moving", "boring", "the", "a", "is", "and", "with"]
QUERIES = ["great acting", "a dull film", "the music"]


def corpus(n: int, seed: int, start: int = 0) -> list[vindex.Document]:
    rng = np.random.default_rng(seed)
    return [vindex.Document(f"doc-{start + i}", " ".join(rng.choice(WORDS, size=rng.integers(2, 9))),
                            {"n": start + i}) for i in range(n)]


def write_jsonl(path: Path, docs: list[vindex.Document]) -> Path:
    path.write_text("".join(json.dumps({"id": d.id, "text": d.text, **d.metadata}) + "\n" for d in docs))
    return path


def brute_force(model: Model, docs: list[vindex.Document], queries: list[str], k: int):
    vectors, q = model.encode([d.text for d in docs]), model.encode(queries)
    scores = q @ vectors.T
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return [[docs[j].id for j in row] for row in order], np.take_along_axis(scores, order, axis=1)


def all_scores(model: Model, docs: list[vindex.Document], query: str) -> dict[str, float]:
    """Every document's brute-force score for one query, by id."""
    scores = model.encode([d.text for d in docs]) @ model.encode([query])[0]
    return {d.id: float(s) for d, s in zip(docs, scores, strict=True)}


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    root = tmp_path_factory.mktemp("index-bundles")
    return embedding_bundle(root / "a", seed=0, name="a"), embedding_bundle(root / "b", seed=1, name="b")


def test_search_equals_brute_force_and_add_keeps_what_was_there(bundles, tmp_path):
    model = Model(bundles[0])
    first, more = corpus(40, 0), corpus(25, 1, start=40)
    built, seconds = vindex.build(model, first, tmp_path / "idx", progress=False)
    assert seconds > 0 and len(built) == 40
    built.add(model, more)
    built.save()
    reopened = vindex.VectorIndex.open(tmp_path / "idx")
    assert len(reopened) == 65 and reopened.meta["count"] == 65 and reopened.meta["kind"] == "exact"
    hits = reopened.search(model, QUERIES, k=5)
    _, want_scores = brute_force(model, first + more, QUERIES, 5)
    for query, row, scores in zip(QUERIES, hits, want_scores, strict=True):
        # The top-k scores are the brute-force ones, and every hit carries its own document's score
        # (documents with equal scores may come in either order).
        np.testing.assert_allclose([h["score"] for h in row], scores, rtol=1e-5, atol=1e-6)
        truth = all_scores(model, first + more, query)
        np.testing.assert_allclose([truth[h["id"]] for h in row], [h["score"] for h in row], rtol=1e-5, atol=1e-6)
        assert len({h["id"] for h in row}) == 5 and [h["rank"] for h in row] == [1, 2, 3, 4, 5]
        assert all(h["metadata"]["n"] == int(h["id"].split("-")[1]) for h in row)
    with pytest.raises(InputError, match="already in the index"):
        reopened.add(model, corpus(1, 2, start=3))  # doc-3 exists


def test_an_index_refuses_another_bundle_until_rebuilt(bundles, tmp_path):
    a, b = Model(bundles[0]), Model(bundles[1])
    docs = corpus(30, 3)
    vindex.build(a, docs, tmp_path / "idx", progress=False)
    opened = vindex.VectorIndex.open(tmp_path / "idx")
    with pytest.raises(BundleError, match="--rebuild"):
        opened.search(b, QUERIES, k=3)
    rebuilt, _ = vindex.rebuild(b, tmp_path / "idx", progress=False)
    assert rebuilt.meta["bundle"]["name"] == "b" and len(rebuilt) == 30
    got = [[h["id"] for h in row] for row in vindex.VectorIndex.open(tmp_path / "idx").search(b, QUERIES, k=3)]
    assert got == brute_force(b, docs, QUERIES, 3)[0]


def declare_space(bundle: Path, target: Path, space: str) -> Path:
    """A copy of a bundle whose bundle.json says its sentence embedding (its logits, here) lives in
    `space`, as the release stage writes for a student kept in its teacher's space and that teacher."""
    import shutil

    from bertpress import bundle as bundle_format

    shutil.copytree(bundle, target)
    meta = json.loads((target / bundle_format.METADATA_FILE).read_text())
    meta["sentence_embedding"] = {"output": "logits", "dim": 2, "pooling": "mean", "normalized": False,
                                  "space": space}
    (target / bundle_format.METADATA_FILE).write_text(json.dumps(meta))
    bundle_format.write_checksums(target)
    return target


def test_a_bundle_of_the_index_space_searches_it_but_adds_nothing(bundles, tmp_path):
    teacher = Model(declare_space(bundles[0], tmp_path / "teacher", "t#sha256:1"))
    student = Model(declare_space(bundles[1], tmp_path / "student", "t#sha256:1"))
    stranger = Model(declare_space(bundles[1], tmp_path / "stranger", "u#sha256:2"))
    docs = corpus(30, 9)
    vindex.build(teacher, docs, tmp_path / "idx", progress=False)
    opened = vindex.VectorIndex.open(tmp_path / "idx")
    assert opened.meta["bundle"]["space"] == "t#sha256:1"
    # The student's query vectors against the teacher's document vectors, brute force.
    want = np.sort(student.encode(QUERIES) @ teacher.encode([d.text for d in docs]).T, axis=1)[:, ::-1][:, :4]
    got = [[h["score"] for h in row] for row in opened.search(student, QUERIES, k=4)]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    with pytest.raises(BundleError, match="added by the bundle that built it"):
        opened.add(student, corpus(2, 10, start=100))
    for other in (stranger, Model(bundles[1])):  # another space, or none declared
        with pytest.raises(BundleError, match="--rebuild"):
            opened.search(other, QUERIES, k=4)


def test_hnsw_recall_against_exact(bundles, tmp_path):
    model = Model(bundles[0])
    docs = corpus(300, 4)
    exact, _ = vindex.build(model, docs, tmp_path / "exact", progress=False)
    approx, _ = vindex.build(model, docs, tmp_path / "hnsw", kind="hnsw", progress=False)
    queries = [d.text for d in corpus(20, 5)]
    want = [{h["id"] for h in row} for row in exact.search(model, queries, 10)]
    got = [{h["id"] for h in row} for row in vindex.VectorIndex.open(tmp_path / "hnsw").search(model, queries, 10)]
    recall = np.mean([len(w & g) / 10 for w, g in zip(want, got, strict=True)])
    assert recall >= 0.9


def test_an_inconsistent_index_is_reported(bundles, tmp_path):
    model = Model(bundles[0])
    vindex.build(model, corpus(10, 6), tmp_path / "idx", progress=False)
    docs = tmp_path / "idx" / vindex.DOCUMENTS_FILE
    docs.write_text("".join(docs.read_text().splitlines(keepends=True)[:-1]))
    with pytest.raises(InputError, match="inconsistent"):
        vindex.VectorIndex.open(tmp_path / "idx")


def no_torch(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([*NO_TORCH, *args], cwd=ROOT, capture_output=True, text=True, timeout=120)
    if check:
        assert proc.returncode == 0, f"{args} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc


def test_index_and_search_commands_without_torch(bundles, tmp_path):
    a, b = bundles
    first, more = corpus(30, 7), corpus(10, 8, start=30)
    out = tmp_path / "idx"
    no_torch("index", str(a), "--input", str(write_jsonl(tmp_path / "c1.jsonl", first)), "--out", str(out))
    added = no_torch("index", str(a), "--input", str(write_jsonl(tmp_path / "c2.jsonl", more)), "--out", str(out))
    assert "added 10 documents" in added.stderr and "40 in all" in added.stderr
    proc = no_torch("search", str(out), *QUERIES[:2], "-k", "4")
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["query"] for r in rows] == QUERIES[:2]
    assert [[h["id"] for h in r["hits"]] for r in rows] == brute_force(Model(a), first + more, QUERIES[:2], 4)[0]

    mixed = no_torch("index", str(b), "--input", str(tmp_path / "c2.jsonl"), "--out", str(out), check=False)
    assert mixed.returncode == 2 and "--rebuild" in mixed.stderr
    assert len(vindex.VectorIndex.open(out)) == 40  # the refused add lost nothing
    no_torch("index", str(b), "--out", str(out), "--rebuild")
    proc = no_torch("search", str(out), QUERIES[0], "-k", "4", "--bundle", str(b))
    assert [h["id"] for h in json.loads(proc.stdout)["hits"]] == brute_force(Model(b), first + more, QUERIES[:1], 4)[0][0]

    not_index = tmp_path / "other"
    not_index.mkdir()
    (not_index / "notes.txt").write_text("mine")
    refused = no_torch("index", str(a), "--input", str(tmp_path / "c1.jsonl"), "--out", str(not_index), check=False)
    assert refused.returncode == 2 and "not a bertpress index" in refused.stderr


def test_search_over_http_without_torch(bundles, tmp_path):
    a = bundles[0]
    docs = corpus(25, 9)
    vindex.build(Model(a), docs, tmp_path / "idx", progress=False)
    port = free_port()
    proc = subprocess.Popen([*NO_TORCH, "serve", str(a), "--index", str(tmp_path / "idx"), "--port", str(port),
                             "--threads", "1"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_serving(f"{base}/health", proc, timeout_s=60)
        assert call(base, "/metadata")[1]["index"] == {"documents": 25, "kind": "exact", "dim": 32}
        status, body = call(base, "/search", {"query": QUERIES[0], "k": 3})
        assert status == 200 and body["k"] == 3
        assert [h["id"] for h in body["results"][0]] == brute_force(Model(a), docs, QUERIES[:1], 3)[0][0]
        status, body = call(base, "/search", {"queries": QUERIES, "k": 2})
        assert status == 200 and [len(r) for r in body["results"]] == [2, 2, 2]
        status, body = call(base, "/search", {"k": 2})
        assert status == 422 and "query" in json.dumps(body)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
