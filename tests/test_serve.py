"""`bertpress serve` on 127.0.0.1, started as a real process without torch, spoken to over real HTTP."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import http_call as call
from conftest import served

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def server(tiny_bundle):
    with served(tiny_bundle, "--max-batch", "4", "--max-text-chars", "500", "--max-body-bytes", "4000",
                "--threads", "1") as base:
        yield base


def test_health_and_metadata(server):
    assert call(server, "/health") == (200, {"status": "ok", "model": "bertpress-tiny", "version": None})
    status, meta = call(server, "/metadata")
    assert status == 200
    assert meta["labels"] == ["negative", "neutral", "positive"]
    assert meta["limits"] == {"max_batch": 4, "max_text_chars": 500, "max_body_bytes": 4000}
    assert meta["providers"] == ["CPUExecutionProvider"]


def test_predict_one_and_many(server):
    status, one = call(server, "/predict", {"text": "an utterly wonderful film"})
    assert status == 200 and len(one["predictions"]) == 1
    status, many = call(server, "/predict", {"texts": ["an utterly wonderful film", "a tedious script", "ok"]})
    assert status == 200 and len(many["predictions"]) == 3
    assert many["predictions"][0]["label"] == one["predictions"][0]["label"]
    assert many["predictions"][0]["score"] == pytest.approx(one["predictions"][0]["score"], abs=2e-2)
    for p in many["predictions"]:
        assert p["label"] in p["probabilities"]
        assert sum(p["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)


def test_embed_kinds(server):
    status, body = call(server, "/embed", {"texts": ["a b", "c d e"], "kind": "mean", "normalize": True})
    assert status == 200 and len(body["embeddings"]) == 2 and len(body["embeddings"][0]) == 32
    status, body = call(server, "/embed", {"text": "a b", "kind": "sequence"})
    assert status == 200 and len(body["embeddings"][0][0]) == 32  # tokens x hidden
    status, body = call(server, "/embed", {"text": "a b", "kind": "hidden_states"})
    assert status == 200 and len(body["embeddings"][0]) == 3  # embeddings + 2 layers


@pytest.mark.parametrize(("path", "body", "code", "message"), [
    ("/predict", {"texts": ["a"] * 5}, 413, "5 texts in one request; the limit is 4"),
    ("/predict", {"text": "x" * 501}, 413, "has 501 characters; the limit is 500"),
    ("/predict", {"texts": ["y" * 450] * 4 + ["z" * 450] * 6}, 413, "over the limit of 4000"),
    ("/predict", {"texts": []}, 422, "is empty"),
    ("/predict", {"text": "a", "texts": ["b"]}, 422, "exactly one of"),
    ("/predict", {"txt": "a"}, 422, "Extra inputs are not permitted"),
    ("/predict", b"not json", 422, "JSON decode error"),
    ("/embed", {"text": "a", "kind": "cls"}, 422, "Input should be 'mean', 'pooled', 'sequence' or 'hidden_states'"),
])
def test_bad_requests_get_4xx_with_a_message(server, path, body, code, message):
    status, payload = call(server, path, body)
    assert status == code
    assert message in json.dumps(payload)
    assert call(server, "/health")[0] == 200  # and the server keeps serving
