"""The released bundle through the torch-free runtime and CLI: predict/embed from arguments, stdin
and files, with torch, transformers, datasets and mlflow made unimportable; bundle integrity."""

from __future__ import annotations

import csv
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bertpress import bundle as bundle_format
from bertpress.runtime import Model
from bertpress.textio import InputError, read_texts

ROOT = Path(__file__).resolve().parents[1]
NO_TORCH = [sys.executable, str(ROOT / "tests" / "no_torch.py")]
TEXTS = ["an utterly wonderful film", "a tedious, lifeless script", "it was fine I guess"]


def no_torch(*args: str, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([*NO_TORCH, *args], cwd=ROOT, capture_output=True, text=True, input=stdin,
                          timeout=120)
    if check:
        assert proc.returncode == 0, f"{args} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc


def test_bundle_is_complete_and_checksummed(tiny_bundle):
    names = {p.name for p in tiny_bundle.iterdir()}
    assert names == {"model.onnx", "tokenizer.json", "bundle.json", "README.md", "SHA256SUMS"}
    sums = bundle_format.read_checksums(tiny_bundle)
    assert set(sums) == names - {"SHA256SUMS"}
    bundle_format.verify(tiny_bundle)
    meta = bundle_format.read_metadata(tiny_bundle)
    assert meta["labels"] == ["negative", "neutral", "positive"]
    assert meta["max_length"] == 32 and meta["outputs"] == ["logits", "pooled", "sequence", "hidden_states"]
    card = (tiny_bundle / "README.md").read_text()
    assert "## Results" in card and "| student-int8 |" in card and "## Limitations" in card


def test_predict_without_torch_from_arguments(tiny_bundle):
    proc = no_torch("predict", str(tiny_bundle), *TEXTS)
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["text"] for r in rows] == TEXTS
    in_process = Model(tiny_bundle).predict(TEXTS)
    for row, expected in zip(rows, in_process, strict=True):
        assert row["label"] == expected["label"] and row["label"] in ("negative", "neutral", "positive")
        assert sum(row["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
        assert row["score"] == pytest.approx(max(row["probabilities"].values()))


def test_predict_without_torch_from_stdin_as_csv(tiny_bundle):
    proc = no_torch("predict", str(tiny_bundle), "-", "--format", "csv", stdin="\n".join(TEXTS) + "\n\n")
    rows = list(csv.DictReader(io.StringIO(proc.stdout)))
    assert [r["text"] for r in rows] == TEXTS
    assert set(rows[0]) == {"text", "label", "score", "p_negative", "p_neutral", "p_positive"}


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".txt"])
def test_predict_without_torch_from_a_file_to_a_file(tiny_bundle, tmp_path, suffix):
    source = tmp_path / f"in{suffix}"
    if suffix == ".csv":
        source.write_text("id,review\n" + "".join(f'{i},"{t}"\n' for i, t in enumerate(TEXTS)))
    elif suffix == ".jsonl":
        source.write_text("".join(json.dumps({"review": t}) + "\n" for t in TEXTS))
    else:
        source.write_text("\n".join(TEXTS))
    out = tmp_path / "out.jsonl"
    no_torch("predict", str(tiny_bundle), "--input", str(source), "--text-column", "review",
             "--output", str(out), "--batch-size", "2")
    assert [json.loads(line)["text"] for line in out.read_text().splitlines()] == TEXTS


def test_embed_without_torch(tiny_bundle, tmp_path):
    proc = no_torch("embed", str(tiny_bundle), *TEXTS, "--kind", "mean", "--normalize")
    vectors = np.array([json.loads(line)["embedding"] for line in proc.stdout.splitlines()])
    assert vectors.shape == (3, 32)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    proc = no_torch("embed", str(tiny_bundle), "one two", "--kind", "hidden_states")
    layers = np.array(json.loads(proc.stdout)["embedding"])
    assert layers.shape[0] == 2 + 1 and layers.shape[2] == 32  # 2 student layers + embeddings
    npy = tmp_path / "vectors.npy"
    no_torch("embed", str(tiny_bundle), *TEXTS, "--kind", "pooled", "--format", "npy", "--output", str(npy))
    assert np.load(npy).shape == (3, 32)


def test_runtime_sorts_by_length_but_returns_input_order(tiny_bundle):
    model = Model(tiny_bundle)
    texts = ["short", "a much much longer text than the others in this batch", "mid length text"]
    together = model.predict_proba(texts, batch_size=2)
    one_by_one = np.concatenate([model.predict_proba([t]) for t in texts])
    np.testing.assert_allclose(together, one_by_one, atol=2e-2)  # INT8: padding shifts scales a little
    assert together.argmax(1).tolist() == one_by_one.argmax(1).tolist()


@pytest.mark.parametrize(("args", "message"), [
    (["predict", "/no/such/bundle", "x"], "does not exist"),
    (["predict", "{bundle}"], "no texts"),
    (["predict", "{bundle}", "--input", "/no/such.csv"], "does not exist"),
    (["predict", "{bundle}", "x", "--format", "xml"], "use jsonl or csv"),
    (["embed", "{bundle}", "x", "--kind", "cls"], "unknown embedding kind"),
    (["embed", "{bundle}", "x", "--kind", "sequence", "--format", "npy", "--output", "/tmp/x.npy"], "--format npy needs"),
    (["predict", "models:/bad uri", "x"], "not a registry URI"),
])
def test_bad_input_gets_a_clear_error_and_exit_code_2(tiny_bundle, args, message):
    proc = no_torch(*[a.replace("{bundle}", str(tiny_bundle)) for a in args], check=False)
    assert proc.returncode == 2, proc.stderr
    assert message in " ".join(proc.stderr.split())


def test_corrupted_bundle_is_refused(tiny_bundle, tmp_path):
    copy = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, copy)
    with (copy / "model.onnx").open("r+b") as fh:
        fh.seek(100)
        fh.write(b"\x00\x01\x02")
    with pytest.raises(bundle_format.BundleError, match="does not match its sha256"):
        Model(copy)
    (copy / "SHA256SUMS").unlink()
    with pytest.raises(bundle_format.BundleError, match="no SHA256SUMS"):
        Model(copy)


def test_csv_without_the_text_column_names_the_columns(tmp_path):
    source = tmp_path / "in.csv"
    source.write_text("id,body\n1,hello\n")
    with pytest.raises(InputError, match=r"no field 'text' \(fields: \['body', 'id'\]\); pass --text-column"):
        read_texts([], source)
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(InputError, match="not UTF-8"):
        read_texts([], bad)


def test_the_shipped_package_imports_no_training_code():
    """bertpress/ (runtime, serve, bundle, CLI) stands alone: no pipeline, stages, torch or
    transformers import anywhere in it, lazy ones included."""
    import ast

    blocked = {"pipeline", "stages", "torch", "transformers", "optimum", "datasets", "sklearn"}
    for path in sorted((ROOT / "bertpress").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for name in names:
                assert name.split(".")[0] not in blocked, f"{path.relative_to(ROOT)} imports {name}"
