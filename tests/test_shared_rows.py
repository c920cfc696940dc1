"""Shared embedding rows: a row budget that keeps the teacher's word pieces (stages/_vocab.py,
stages/_onnx.py). The compact ONNX graph must predict exactly what the shared PyTorch model does."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from transformers import BertConfig, BertForTokenClassification

from stages._hf import train_wordpiece_tokenizer
from stages._onnx import compact_shared_rows
from stages._vocab import share_rows, shared_row_plan, token_counts
from stages.export import fuse, to_onnx

DATA = Path(__file__).parent / "data" / "tiny_reviews.csv"


@pytest.fixture(scope="module")
def texts() -> list[str]:
    with DATA.open() as fh:
        return [row["review"] for row in csv.DictReader(fh)]


@pytest.fixture(scope="module")
def shared_model(texts, tmp_path_factory):
    tokenizer = train_wordpiece_tokenizer(texts, 300)
    torch.manual_seed(0)
    model = BertForTokenClassification(BertConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, num_labels=5)).eval()
    domain = texts[:10]
    budget = len(set(token_counts(tokenizer, domain)) | set(tokenizer.all_special_ids)) + 60
    kept, position = shared_row_plan(tokenizer, domain, budget, model.get_input_embeddings().weight.data)
    share_rows(model, kept, position)
    folder = tmp_path_factory.mktemp("shared")
    model.save_pretrained(folder / "model")
    tokenizer.save_pretrained(folder / "model")
    return folder, tokenizer, kept, position


def test_the_plan_keeps_the_budget_and_maps_kept_pieces_to_themselves(shared_model, texts):
    _, tokenizer, kept, position = shared_model
    assert len(kept) == len(set(kept)) and len(position) == len(tokenizer)
    assert set(token_counts(tokenizer, texts[:10])) <= set(kept)
    assert (position[np.asarray(kept)] == np.arange(len(kept))).all()
    assert position.min() >= 0 and position.max() < len(kept)


def _logits(path: Path, batch: dict[str, np.ndarray]) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}
    return session.run(None, {k: v for k, v in batch.items() if k in names})[0]


@pytest.mark.parametrize("fused", [False, True])
def test_the_compact_graph_predicts_what_the_shared_model_does(shared_model, texts, fused):
    folder, tokenizer, kept, position = shared_model
    onnx_dir = folder / f"onnx-{fused}"
    plain = to_onnx(folder / "model", onnx_dir, 17, "token-classification")
    source = plain
    if fused:
        source = onnx_dir / "fused.onnx"
        fuse(plain, source, num_heads=4, hidden_size=32)
    compact = onnx_dir / "compact.onnx"
    compact_shared_rows(source, compact, kept, position)
    batch = dict(tokenizer(texts[20:28], padding=True, return_tensors="np"))
    batch = {k: v.astype(np.int64) for k, v in batch.items()}
    np.testing.assert_allclose(_logits(compact, batch), _logits(source, batch), atol=1e-5)
    shapes = [tuple(i.dims) for i in onnx.load(str(compact)).graph.initializer]
    assert (len(kept), 32) in shapes and (len(tokenizer), 32) not in shapes  # only the kept rows stored


def test_dynamic_int8_quantizes_the_kept_rows_and_leaves_the_lookup_alone(shared_model, texts, tmp_path):
    from onnxruntime.quantization import QuantType, quantize_dynamic

    folder, tokenizer, kept, position = shared_model
    plain = to_onnx(folder / "model", tmp_path / "onnx", 17, "token-classification")
    fuse(plain, tmp_path / "fused.onnx", num_heads=4, hidden_size=32)
    compact_shared_rows(tmp_path / "fused.onnx", tmp_path / "compact.onnx", kept, position)
    quantize_dynamic(str(tmp_path / "compact.onnx"), str(tmp_path / "int8.onnx"), weight_type=QuantType.QInt8,
                     extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})  # as the quantize stage
    graph = onnx.load(str(tmp_path / "int8.onnx")).graph
    ops = {n.op_type for n in graph.node}
    assert "QEmbedLayerNormalization" in ops and "SharedRowsLookup" in {n.name for n in graph.node}
    table = next(i for i in graph.initializer if i.name == "shared_rows_position")
    assert (onnx.numpy_helper.to_array(table) == position).all()
    batch = dict(tokenizer(texts[20:28], padding=True, return_tensors="np"))
    batch = {k: v.astype(np.int64) for k, v in batch.items()}
    fp32, int8 = _logits(tmp_path / "compact.onnx", batch), _logits(tmp_path / "int8.onnx", batch)
    assert (fp32.argmax(-1) == int8.argmax(-1)).mean() > 0.9


def _weight_bytes(path: Path) -> int:
    return sum(len(i.raw_data) for i in onnx.load(str(path)).graph.initializer)


def test_four_bit_tables_keep_the_lookup_and_predictions_in_less_space(shared_model, texts, tmp_path):
    from pipeline.config import QuantCandidate
    from stages.quantize import build

    folder, tokenizer, kept, position = shared_model
    plain = to_onnx(folder / "model", tmp_path / "onnx", 17, "token-classification")
    for eln in (True, False):
        fuse(plain, tmp_path / f"fused-{eln}.onnx", num_heads=4, hidden_size=32, embed_layer_norm=eln)
        compact_shared_rows(tmp_path / f"fused-{eln}.onnx", tmp_path / f"compact-{eln}.onnx", kept, position)
    int8, four = tmp_path / "int8.onnx", tmp_path / "emb4.onnx"
    build(QuantCandidate(), tmp_path / "compact-True.onnx", int8, None, 99.999)
    build(QuantCandidate(embedding_bits=4, embedding_block_size=16), tmp_path / "compact-False.onnx", four,
          None, 99.999)
    graph = onnx.load(str(four)).graph
    ops = [n.op_type for n in graph.node]
    assert ops.count("GatherBlockQuantized") >= 2 and "MatMulInteger" in ops and "QAttention" in ops
    assert "EmbedLayerNormalization" not in ops and "SharedRowsLookup" in {n.name for n in graph.node}
    table = next(i for i in graph.initializer if i.name == "shared_rows_position")
    assert (onnx.numpy_helper.to_array(table) == position).all()  # the id remap is not quantized
    assert not [i.name for i in graph.initializer if i.data_type == onnx.TensorProto.FLOAT
                and tuple(i.dims) == (len(kept), 32)]  # no float copy of the rows left behind
    # The stored weights shrink (on a model this tiny the file does not: more graph than weights).
    assert _weight_bytes(four) < _weight_bytes(int8)
    batch = dict(tokenizer(texts[20:28], padding=True, return_tensors="np"))
    batch = {k: v.astype(np.int64) for k, v in batch.items()}
    fp32, quantized = _logits(tmp_path / "compact-True.onnx", batch), _logits(four, batch)
    assert (fp32.argmax(-1) == quantized.argmax(-1)).mean() > 0.9
    np.testing.assert_allclose(_logits(tmp_path / "compact-False.onnx", batch), fp32, atol=1e-5)


def test_a_shared_rows_student_goes_through_export_with_only_its_kept_rows(tmp_path):
    from conftest import run_cli

    run_cli("run", "quantize", "--set", "distill.trim_vocab.max_tokens=120", "--set",
            "distill.trim_vocab.share_rows=true", "--set",
            "quantize.candidates=[{method: dynamic}, {method: dynamic, embedding_bits: 4, embedding_block_size: 16}]",
            root=tmp_path, config="configs/tiny-ner.yaml")
    [model_dir] = (tmp_path / "artifacts").glob("distill/*/model")
    shared = np.load(model_dir / "shared_rows.npz")
    assert len(shared["kept"]) == 120
    vocabulary = len(shared["position"])
    for graph in ("model.onnx", "model_fused.onnx"):
        [path] = (tmp_path / "artifacts").glob(f"export/*/student/{graph}")
        rows = [tuple(i.dims) for i in onnx.load(str(path)).graph.initializer if len(i.dims) == 2]
        assert any(r[0] == 120 for r in rows) and not any(r[0] == vocabulary for r in rows), graph
    parity = json.loads(next((tmp_path / "artifacts").glob("export/*/parity.json")).read_text())["parity"]
    assert parity["student_fused"]["max_abs_diff"] < 1e-4 and parity["student_fused"]["argmax_changes"] == 0
    # The quantize stage builds the 4-bit-table candidate on its own fused graph and measures it too.
    report = json.loads(next((tmp_path / "artifacts").glob("quantize/*/quantize_report.json")).read_text())
    four = report["candidates"]["dynamic-emb4-block16"]
    assert four["graph"] == "fused_gather" and four["integer_ops"]["GatherBlockQuantized"] >= 2
    assert four["within_tolerance"] and four["metric_drop"] <= 0.05


def test_the_model_card_says_what_unseen_words_become():
    from pipeline.config import VocabTrimConfig
    from stages.release import vocabulary_note

    assert "nearest" not in vocabulary_note(VocabTrimConfig(enabled=True))
    assert "fall back" in vocabulary_note(VocabTrimConfig(enabled=True))
    shared = vocabulary_note(VocabTrimConfig(enabled=True, max_tokens=7000, share_rows=True))
    assert "7000 embedding rows" in shared and "fall back" not in shared
    assert vocabulary_note(VocabTrimConfig()) == "Full teacher vocabulary."


def test_a_budget_below_the_texts_pieces_keeps_the_most_frequent(texts):
    """A large distillation corpus uses more pieces than the row budget: the plan keeps the
    specials, the characters and then the corpus's most frequent pieces; the rest share rows."""
    from stages._vocab import character_ids

    tokenizer = train_wordpiece_tokenizer(texts, 300)
    counts = token_counts(tokenizer, texts)
    floor = set(tokenizer.all_special_ids) | character_ids(tokenizer, texts)
    budget = len(floor) + 20
    assert len(set(counts) | floor) > budget
    rows = torch.randn(len(tokenizer), 16, generator=torch.Generator().manual_seed(0))
    kept, position = shared_row_plan(tokenizer, texts, budget, rows)
    assert len(kept) == budget and floor <= set(kept)
    top = sorted((i for i in counts if i not in floor), key=lambda i: (-counts[i], i))[:20]
    assert set(top) <= set(kept)
    assert position.max() < budget and (position[np.asarray(kept)] == np.arange(budget)).all()


def test_four_bit_tables_keep_an_opset_17_graph_valid(tmp_path):
    """The int4 type needs opset 21, where ReduceL2 takes its axes as an input: an embedding graph's
    L2 normalisation (axes attribute, opset 17) must still load and compute the same thing."""
    from onnx import TensorProto, helper

    from stages.quantize import quantize_embedding_tables

    table = np.random.default_rng(0).normal(size=(50, 32)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "ids"], ["rows"]),
         helper.make_node("ReduceL2", ["rows"], ["norm"], axes=[-1], keepdims=1),
         helper.make_node("Div", ["rows", "norm"], ["unit"])],
        "l2", [helper.make_tensor_value_info("ids", TensorProto.INT64, ["n"])],
        [helper.make_tensor_value_info("unit", TensorProto.FLOAT, ["n", 32])],
        [onnx.numpy_helper.from_array(table, "table")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(tmp_path / "m.onnx"))
    assert quantize_embedding_tables(tmp_path / "m.onnx", tmp_path / "q.onnx", 4, 16) == 1
    model = onnx.load(str(tmp_path / "q.onnx"))
    assert "GatherBlockQuantized" in {n.op_type for n in model.graph.node}
    ids = np.array([0, 7, 49])
    got = ort.InferenceSession(str(tmp_path / "q.onnx"), providers=["CPUExecutionProvider"]).run(None, {"ids": ids})[0]
    want = table[ids] / np.linalg.norm(table[ids], axis=-1, keepdims=True)
    assert np.abs(got - want).max() < 0.1 and np.allclose(np.linalg.norm(got, axis=-1), 1, atol=1e-5)


def test_the_distill_stage_scores_the_student_it_ships_after_rows_are_shared(tmp_path):
    """Sharing rows happens after training: the stage's validation/test scores must be those of
    the shared model (the one exported), with the scores before it kept under full_rows/."""
    from conftest import run_cli

    run_cli("run", "quantize", "--set", "distill.trim_vocab.max_tokens=60", "--set",
            "distill.trim_vocab.share_rows=true", root=tmp_path, config="configs/tiny-sts.yaml")
    [distilled] = (tmp_path / "artifacts").glob("distill/*/metrics.json")
    metrics = json.loads(distilled.read_text())
    assert {"full_rows/eval/spearman", "full_rows/test/spearman", "eval/spearman", "test/spearman"} <= set(metrics)
    report = json.loads(next((tmp_path / "artifacts").glob("quantize/*/quantize_report.json")).read_text())
    # 60 rows of 137 change this student's validation score (0.83 -> 0.89 here), so the check
    # below can tell the shared model's score from the full one's.
    assert abs(metrics["full_rows/eval/spearman"] - metrics["eval/spearman"]) > 0.02
    assert metrics["eval/spearman"] == pytest.approx(report["fp32"]["spearman"], abs=1e-3)
