"""Embeddings from PyTorch and from the exported ONNX model (through the torch-free runtime) agree;
the last layer of the all-layers output is the sequence output; mean pooling ignores padding."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

from bertpress import bundle as bundle_format
from bertpress.embeddings import mean_pool
from bertpress.runtime import Model
from conftest import write_bundle
from stages._hf import train_wordpiece_tokenizer
from stages._multi_output import embed as pytorch_embed
from stages._multi_output import export_with_embeddings

TEXTS = ["a wonderful, moving film", "dull", "the plot is thin but the acting is great and the music too",
         "", "unexpected words like zyxq appear here"]
CORPUS = ["a wonderful moving film with great acting", "a dull thin plot", "the music is great",
          "the acting is wonderful", "boring and dull film"] * 4


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    root = tmp_path_factory.mktemp("emb")
    tokenizer = train_wordpiece_tokenizer(CORPUS, vocab_size=120)
    tokenizer.save_pretrained(root / "tok")
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
        intermediate_size=64, num_labels=2, max_position_embeddings=64)).eval()
    outputs = ["pooled", "sequence", "hidden_states"]
    onnx_path = export_with_embeddings(model, root / "model.onnx", outputs, opset=17)
    bundle = write_bundle(root / "bundle", onnx_path, root / "tok" / "tokenizer.json", outputs)
    return model, tokenizer, bundle, root


def test_onnx_embeddings_match_pytorch(tiny_model):
    model, tokenizer, bundle, _ = tiny_model
    expected = pytorch_embed(model, tokenizer, TEXTS, max_length=24, batch_size=2)
    runtime = Model(bundle)
    for kind in ("pooled", "mean"):
        got = runtime.embed(TEXTS, kind=kind, batch_size=3)
        assert got.shape == (len(TEXTS), 32)
        np.testing.assert_allclose(got, expected[kind], atol=1e-4)
    sequence = runtime.embed(TEXTS, kind="sequence")
    layers = runtime.embed(TEXTS, kind="hidden_states")
    for i, text in enumerate(TEXTS):
        n_tokens = len(tokenizer(text, truncation=True, max_length=24)["input_ids"])
        assert sequence[i].shape == (n_tokens, 32)
        assert layers[i].shape == (3 + 1, n_tokens, 32)  # embeddings + one per encoder layer
        np.testing.assert_allclose(sequence[i], expected["sequence"][i], atol=1e-4)
        np.testing.assert_allclose(layers[i], expected["hidden_states"][i], atol=1e-4)
        # The last layer of the all-layers output is the sequence output, in both runtimes.
        np.testing.assert_array_equal(layers[i][-1], sequence[i])
        np.testing.assert_array_equal(expected["hidden_states"][i][-1], expected["sequence"][i])


def test_logits_match_pytorch_and_probabilities_sum_to_one(tiny_model):
    model, tokenizer, bundle, _ = tiny_model
    runtime = Model(bundle)
    probs = runtime.predict_proba(TEXTS, batch_size=2)
    with torch.no_grad():
        logits = model(**tokenizer(TEXTS, padding=True, truncation=True, max_length=24, return_tensors="pt")).logits
    np.testing.assert_allclose(probs, torch.softmax(logits, -1).numpy(), atol=1e-5)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-6)
    predictions = runtime.predict(TEXTS)
    assert [p["label"] for p in predictions] == [["neg", "pos"][i] for i in probs.argmax(1)]


def test_normalized_embeddings_have_unit_norm(tiny_model):
    vectors = Model(tiny_model[2]).embed(TEXTS, kind="mean", normalize=True)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_fused_int8_graph_keeps_every_output(tiny_model):
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from stages.export import fuse

    model, tokenizer, _, root = tiny_model
    counts = fuse(root / "model.onnx", root / "fused.onnx", num_heads=4, hidden_size=32)
    assert counts["Attention"] == 3
    quantize_dynamic(str(root / "fused.onnx"), str(root / "int8.onnx"), weight_type=QuantType.QInt8,
                     extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    ops = {n.op_type for n in onnx.load(str(root / "int8.onnx")).graph.node}
    assert {"QAttention", "MatMulInteger"} <= ops
    outputs = ["pooled", "sequence", "hidden_states"]
    bundle = write_bundle(root / "bundle-int8", root / "int8.onnx", root / "tok" / "tokenizer.json", outputs)
    got = Model(bundle).embed(TEXTS, kind="mean")
    want = pytorch_embed(model, tokenizer, TEXTS, max_length=24)["mean"]
    cosine = (got * want).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
    assert cosine.min() > 0.98


def test_mean_pool_ignores_padding():
    sequence = np.array([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])
    mask = np.array([[1, 1, 0]])
    np.testing.assert_allclose(mean_pool(sequence, mask), [[2.0, 3.0]])


def test_logits_only_bundle_explains_how_to_get_embeddings(tiny_model, tmp_path):
    _, _, bundle, _ = tiny_model
    copy = tmp_path / "logits-only"
    shutil.copytree(bundle, copy)
    meta = json.loads((copy / "bundle.json").read_text())
    (copy / "bundle.json").write_text(json.dumps(meta | {"outputs": ["logits"]}))
    bundle_format.write_checksums(copy)
    with pytest.raises(bundle_format.BundleError, match="export.embedding_outputs"):
        Model(copy).embed(["x"], kind="mean")
