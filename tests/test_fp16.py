"""The fp16 copy for GPUs and IO-bound sessions, checked on the CPU provider (no GPU here)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import torch
from transformers import BertConfig, BertForSequenceClassification

from stages._fp16 import convert_to_fp16, io_bound
from stages._multi_output import export_with_embeddings


def test_fp16_copy_and_io_binding(tmp_path):
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        num_labels=3)).eval()
    fp32 = export_with_embeddings(model, tmp_path / "model.onnx", [], opset=17)
    counts = convert_to_fp16(fp32, tmp_path / "fp16" / "model.onnx")
    assert counts["float16"] > 0 and counts["float32"] == 0
    converted = onnx.load(str(tmp_path / "fp16" / "model.onnx"))
    onnx.checker.check_model(converted)
    assert [i.type.tensor_type.elem_type for i in converted.graph.input] == [onnx.TensorProto.INT64] * 3
    assert converted.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT

    rng = np.random.default_rng(0)
    feed = {"input_ids": rng.integers(5, 100, (3, 9)), "attention_mask": np.ones((3, 9), dtype=np.int64),
            "token_type_ids": np.zeros((3, 9), dtype=np.int64)}
    session = ort.InferenceSession(str(fp32), providers=["CPUExecutionProvider"])
    reference = session.run(["logits"], feed)[0]
    np.testing.assert_array_equal(io_bound(session)(feed), reference)
    half = ort.InferenceSession(str(tmp_path / "fp16" / "model.onnx"), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(io_bound(half)(feed), reference, atol=1e-2)
