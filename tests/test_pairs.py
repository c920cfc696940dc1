"""Text-pair classification bundles (NLI, paraphrase): the runtime, `predict` and `serve` take
[text, text_pair] inputs, read the same way as the training side, torch-free."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

from bertpress import bundle as bundle_format
from bertpress.errors import InputError
from bertpress.runtime import Model
from conftest import free_port, http_call, wait_until_serving
from pipeline.config import build_config
from stages._hf import train_wordpiece_tokenizer
from stages._multi_output import export_with_embeddings
from stages.tasks.sequence_classification import SequenceClassification

ROOT = Path(__file__).resolve().parents[1]
NO_TORCH = [sys.executable, str(ROOT / "tests" / "no_torch.py")]
PAIRS = [("a man is playing a guitar", "someone plays music"), ("the cat sleeps", "a dog is barking loudly")]


@pytest.fixture(scope="module")
def pair_bundle(tmp_path_factory):
    """A tiny random pair classifier, exported and bundled as the release stage does."""
    folder = tmp_path_factory.mktemp("pair") / "bundle"
    folder.mkdir()
    tokenizer = train_wordpiece_tokenizer([t for pair in PAIRS for t in pair], 200)
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, num_labels=3)).eval()
    export_with_embeddings(model, folder / bundle_format.MODEL_FILE, [], 17)
    tokenizer.backend_tokenizer.save(str(folder / bundle_format.TOKENIZER_FILE))
    (folder / bundle_format.METADATA_FILE).write_text(json.dumps({
        "format": bundle_format.FORMAT, "name": "pairs", "task": "sequence-classification",
        "labels": ["entailment", "neutral", "contradiction"], "max_length": 32, "outputs": ["logits"],
        "text_pair": True}))
    bundle_format.write_checksums(folder)
    return folder, model, tokenizer


def test_pair_predictions_match_the_pytorch_model(pair_bundle):
    folder, model, tokenizer = pair_bundle
    runtime = Model(folder)
    got = runtime.predict_proba(PAIRS, batch_size=2)
    enc = tokenizer([a for a, _ in PAIRS], [b for _, b in PAIRS], padding=True, return_tensors="pt")
    with torch.no_grad():
        want = torch.softmax(model(**enc).logits, -1).numpy()
    np.testing.assert_allclose(got, want, atol=1e-4)
    rows = runtime.predict([list(p) for p in PAIRS])  # lists work as well as tuples
    assert [r["label"] for r in rows] == [runtime.labels[i] for i in want.argmax(1)]


def test_a_pair_model_refuses_single_texts(pair_bundle):
    with pytest.raises(InputError, match="classifies text pairs"):
        Model(pair_bundle[0]).predict(["only one text"])


def test_the_release_records_pairs_from_the_config():
    pairs = build_config({"data": {"source": "files", "files": {"train": "x.csv"}, "text_pair_column": "b"}})
    assert SequenceClassification(pairs).bundle_metadata() == {"text_pair": True}
    assert SequenceClassification(build_config({})).bundle_metadata() == {"text_pair": False}


def test_predict_takes_pairs_from_arguments_and_files_without_torch(pair_bundle, tmp_path):
    folder = str(pair_bundle[0])
    # Arguments: texts in order, one --pair per text.
    texts = [p for p, _ in PAIRS]
    hyps = [a for _, h in PAIRS for a in ("--pair", h)]
    proc = subprocess.run([*NO_TORCH, "predict", folder, *texts, *hyps], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [tuple(r["text"]) for r in rows] == PAIRS
    source = tmp_path / "pairs.csv"
    with source.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["premise", "hypothesis"])
        writer.writerows(PAIRS)
    proc = subprocess.run([*NO_TORCH, "predict", folder, "--input", str(source), "--text-column", "premise",
                           "--pair-column", "hypothesis", "--format", "csv"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[1].startswith("a man is playing a guitar ||| someone plays music,")
    single = subprocess.run([*NO_TORCH, "predict", folder, "one text only"], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert single.returncode == 2 and "text_pair" in single.stderr and "Traceback" not in single.stderr


def test_serve_takes_pairs(pair_bundle):
    port = free_port()
    proc = subprocess.Popen([*NO_TORCH, "serve", str(pair_bundle[0]), "--port", str(port)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_serving(f"{base}/health", proc, timeout_s=60)

        def post(body):
            return http_call(base, "/predict", body)

        status, body = post({"texts": [p for p, _ in PAIRS], "text_pairs": [h for _, h in PAIRS]})
        assert status == 200 and len(body["predictions"]) == 2
        expected = Model(pair_bundle[0]).predict(list(PAIRS))
        assert [p["label"] for p in body["predictions"]] == [e["label"] for e in expected]
        assert post({"text": PAIRS[0][0], "text_pair": PAIRS[0][1]})[0] == 200
        status, body = post({"texts": ["a"], "text_pairs": ["b", "c"]})
        assert status == 422 and "one second text per entry" in json.dumps(body)
        status, body = post({"text": "no pair"})
        assert status == 400 and "text pairs" in body["detail"]
    finally:
        proc.terminate()
        proc.wait(timeout=10)
