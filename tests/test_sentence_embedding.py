"""Sentence embeddings through every stage (configs/tiny-embeddings.yaml, twice: all cache hits), the
pooling/normalisation module against sentence-transformers and closed forms, the embedding MSE,
and the bundle (predict, index, search) without torch."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from conftest import (
    TINY_EMBEDDINGS,
    assert_rerun_is_all_cache_hits,
    cli_status,
    no_torch_rows,
    run_cli,
    stage_manifest,
)
from pipeline.config import ConfigError, load_config
from stages._sentence import SentenceEmbeddingModel, load_sentence_model, pool
from stages.tasks.sentence_embedding import embedding_agreement, embedding_mse

ROOT = Path(__file__).resolve().parents[1]
NO_TORCH = [sys.executable, str(ROOT / "tests" / "no_torch.py")]
TINY_EMB = TINY_EMBEDDINGS


@pytest.fixture(scope="module")
def rows(tiny_embeddings_run) -> dict[str, dict]:
    return cli_status(tiny_embeddings_run, config=TINY_EMB)


def test_export_puts_pooling_and_normalisation_in_the_graph(rows):
    path, m = stage_manifest(rows, "export")
    for role in ("teacher", "student"):
        checked = m["info"]["library_parity"][role]  # vs sentence-transformers' encode()
        assert checked["st_min_cosine"] >= 0.9999
        assert m["metrics"][f"{role}/fused_max_abs_diff"] < 1e-4
    session = ort.InferenceSession(str(path / "student" / "model_fused.onnx"), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["logits"]
    feed = {i.name: np.ones((3, 7), dtype=np.int64) for i in session.get_inputs()}
    vectors = session.run(["logits"], feed)[0]
    assert vectors.shape == (3, 32)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_int8_reports_its_cosine_to_fp32_and_the_benchmark_the_stock_export(rows):
    path, _ = stage_manifest(rows, "quantize")
    report = json.loads((path / "quantize_report.json").read_text())
    assert report["primary_metric"] == "ndcg_at_5"
    chosen = report["candidates"][report["selected"]]
    assert chosen["mean_cosine_vs_fp32"] > 0.99 and 0 <= chosen["top5_overlap_vs_fp32"] <= 1
    bench, _ = stage_manifest(rows, "benchmark")
    result = json.loads((bench / "benchmark.json").read_text())
    variants = result["variants"]
    assert set(variants) >= {"teacher-pytorch", "teacher-stock-int8", "student-onnx", "student-int8"}
    # Optimum's feature-extraction export pooled in numpy agrees with the teacher it came from.
    assert variants["teacher-stock-int8"]["agreement_with_teacher"]["mean_cosine"] > 0.99
    # The same student through ONNX ranks the same, up to near-ties: a random tiny model's label
    # neighbours can score within float noise of each other, and one swapped pair moved nDCG@5 by
    # 3e-4 in a CI run (the embeddings' own parity is asserted at cosine >= 0.9999 elsewhere).
    assert variants["student-onnx"]["ndcg_at_5"] == pytest.approx(variants["student-pytorch"]["ndcg_at_5"], abs=5e-3)
    text = (bench / "results.md").read_text()
    assert "| test nDCG@5 by label | test MRR@5 | test P@5 |" in text and "## Agreement with teacher-pytorch" in text
    assert "texts/s (real, bs8)" in text and variants["student-int8"]["throughput_real"]["8"] > 0


def test_second_run_is_all_cache_hits(tiny_embeddings_run, rows):
    assert_rerun_is_all_cache_hits(tiny_embeddings_run, TINY_EMB, "bertpress-tiny-embeddings", rows)


def no_torch(*args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([*NO_TORCH, *args], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc


def test_bundle_embeds_indexes_and_searches_without_torch(rows, tmp_path):
    bundle = Path(rows["release"]["path"]) / "bundle"
    meta = json.loads((bundle / "bundle.json").read_text())
    assert meta["task"] == "sentence-embedding"
    space = meta["sentence_embedding"].pop("space")  # the teacher's: the student embeds into its space
    assert meta["sentence_embedding"] == {"output": "logits", "dim": 32, "pooling": "mean", "normalized": True}
    assert space.startswith(load_config(ROOT / TINY_EMB).teacher.model + "#sha256:")
    out = [json.loads(line) for line in no_torch("predict", str(bundle), "a great film", "dull").stdout.splitlines()]
    vectors = np.array([o["embedding"] for o in out])
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("a great film\nthe plot was dull\nwonderful acting\n")
    no_torch("index", str(bundle), "--input", str(corpus), "--out", str(tmp_path / "idx"))
    hits = json.loads(no_torch("search", str(tmp_path / "idx"), "a great film", "-k", "2").stdout)["hits"]
    assert hits[0]["text"] == "a great film" and hits[0]["score"] == pytest.approx(1.0, abs=1e-4)


# -- unit tests ----------------------------------------------------------------------------------
def test_pool_mean_ignores_padding_and_cls_takes_the_first_token():
    hidden = torch.tensor([[[1.0, 0.0], [3.0, 4.0], [100.0, 100.0]]])
    mask = torch.tensor([[1, 1, 0]])
    torch.testing.assert_close(pool(hidden, mask, "mean", normalize=False), torch.tensor([[2.0, 2.0]]))
    torch.testing.assert_close(pool(hidden, mask, "cls", normalize=False), torch.tensor([[1.0, 0.0]]))
    torch.testing.assert_close(pool(hidden, mask, "mean", normalize=True), torch.tensor([[2 ** -0.5, 2 ** -0.5]]))


def test_embedding_mse_is_two_minus_two_cosine_for_unit_vectors():
    a = torch.nn.functional.normalize(torch.randn(5, 8), dim=-1)
    b = torch.nn.functional.normalize(torch.randn(5, 8), dim=-1)
    assert embedding_mse(a, b).item() == pytest.approx((2 - 2 * (a * b).sum(-1)).mean().item(), rel=1e-5)
    assert embedding_mse(a, a).item() == 0.0
    from pipeline.stage import StageError

    with pytest.raises(StageError, match="8 dimensions, the teacher's 16"):
        embedding_mse(a, torch.zeros(5, 16))


def test_agreement_of_a_model_with_itself_and_with_noise():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, 16))
    same = embedding_agreement(x, x, k=5)
    assert same == {"mean_cosine": pytest.approx(1.0), "top5_overlap": 1.0}
    other = embedding_agreement(x, rng.normal(size=(30, 16)), k=5)
    assert other["mean_cosine"] < 0.5 and other["top5_overlap"] < 0.6


def _tiny_st_bert(tmp_path):
    """A 1-layer, 16-wide random BERT and its tokenizer saved in tmp_path/bert."""
    from transformers import BertConfig, BertModel

    from conftest import EMBEDDING_CORPUS
    from stages._hf import train_wordpiece_tokenizer

    tokenizer = train_wordpiece_tokenizer(EMBEDDING_CORPUS, vocab_size=100)
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32)).save_pretrained(tmp_path / "bert")
    tokenizer.save_pretrained(tmp_path / "bert")
    return tokenizer


def test_a_sentence_transformers_directory_keeps_its_pooling(tmp_path):
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer

    tokenizer = _tiny_st_bert(tmp_path)
    st = SentenceTransformer(modules=[Transformer(str(tmp_path / "bert")), Pooling(16, "cls"), Normalize()],
                             device="cpu")
    st.save(str(tmp_path / "st"))
    model = load_sentence_model(tmp_path / "st").eval()
    assert isinstance(model, SentenceEmbeddingModel) and (model.pooling, model.normalize) == ("cls", True)
    texts = ["a dull thin plot", "the music is great"]
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        ours = model(**batch).logits.numpy()
    np.testing.assert_allclose(ours, st.encode(texts), atol=1e-5)


@pytest.mark.parametrize("normalize", [True, False])
def test_a_dense_projection_is_read_and_written_as_sentence_transformers_does(tmp_path, normalize):
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import (
        Dense,
        Normalize,
        Pooling,
        Transformer,
    )

    from stages._sentence import write_st_modules

    tokenizer = _tiny_st_bert(tmp_path)
    modules = [Transformer(str(tmp_path / "bert")), Pooling(16, "mean"),
               Dense(16, 8, activation_function=torch.nn.Identity())] + ([Normalize()] if normalize else [])
    st = SentenceTransformer(modules=modules, device="cpu")
    st.save(str(tmp_path / "st"))
    texts = ["a dull thin plot", "the music is great and the cast is better"]
    model = load_sentence_model(tmp_path / "st", normalize=normalize).eval()  # a foreign directory: its Dense
    assert model.output_dim == 8 and model.config.sentence_projection == 8
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        ours = model(**batch).logits.numpy()
    np.testing.assert_allclose(ours, st.encode(texts), atol=1e-5)
    # Written back by bertpress: sentence-transformers and bertpress both read the same model again.
    model.save_pretrained(tmp_path / "ours")
    tokenizer.save_pretrained(tmp_path / "ours")
    write_st_modules(model, tmp_path / "ours", 32)
    np.testing.assert_allclose(SentenceTransformer(str(tmp_path / "ours"), device="cpu").encode(texts), ours, atol=1e-5)
    again = load_sentence_model(tmp_path / "ours").eval()
    with torch.no_grad():
        np.testing.assert_allclose(again(**batch).logits.numpy(), ours, atol=1e-6)


def test_a_dense_with_an_activation_is_refused_by_name(tmp_path):
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Dense, Pooling, Transformer

    from pipeline.stage import StageError

    _tiny_st_bert(tmp_path)
    SentenceTransformer(modules=[Transformer(str(tmp_path / "bert")), Pooling(16, "mean"), Dense(16, 8)],
                        device="cpu").save(str(tmp_path / "st"))  # Dense's default activation: Tanh
    with pytest.raises(StageError, match="its Dense module applies Tanh"):
        load_sentence_model(tmp_path / "st")


def test_a_narrower_student_starts_in_its_teachers_space():
    """shrink_width keeps the most important residual dimensions; the projection puts them back
    where they were, so before any training the student's pooled vector, projected, has the
    teacher's width with zeros in the dropped dimensions."""
    from transformers import BertConfig

    from stages._width import shrink_width

    config = BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
    config.sentence_pooling, config.sentence_normalize = "mean", False
    torch.manual_seed(0)
    teacher = SentenceEmbeddingModel(config).eval()
    student = shrink_width(teacher, 16, 2, 32).eval()
    assert (student.config.hidden_size, student.output_dim) == (16, 32)
    weight = student.projection.weight.detach()
    assert sorted(weight.sum(0).tolist()) == [1.0] * 16 and set(weight.sum(1).tolist()) == {0.0, 1.0}
    ids = torch.randint(0, 50, (3, 7))
    with torch.no_grad():
        vectors = student(input_ids=ids).logits
    kept = weight.sum(1).bool()
    assert vectors.shape == (3, 32) and torch.all(vectors[:, ~kept] == 0)
    assert shrink_width(student, 8, 1, 16).projection.weight.shape == (32, 8)  # an existing projection is sliced


def test_a_student_model_of_another_width_gets_a_projection_and_the_teachers_pooling():
    from transformers import BertConfig

    from stages.tasks import get_task

    teacher_config = BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                intermediate_size=64)
    teacher_config.sentence_pooling, teacher_config.sentence_normalize = "cls", True
    teacher = SentenceEmbeddingModel(teacher_config)
    student = SentenceEmbeddingModel(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1,
                                                num_attention_heads=2, intermediate_size=32))  # mean by default
    student = get_task(load_config(ROOT / TINY_EMB)).adapt_student(student, teacher)
    assert (student.pooling, student.normalize, student.output_dim) == ("cls", True, 32)
    with torch.no_grad():
        vectors = student(input_ids=torch.randint(0, 50, (2, 5))).logits
    assert vectors.shape == (2, 32)
    np.testing.assert_allclose(vectors.norm(dim=1).numpy(), 1.0, atol=1e-6)


def test_a_student_in_its_own_space_has_no_projection_and_learns_similarities():
    """task.output_space: student drops the projection a narrowed copy starts with; the loss is
    the mean squared difference of the batch's cosine matrices, zero for any rotation or scaling of
    the teacher's vectors (the geometry, not the coordinates), and needs no common width."""
    from transformers import BertConfig

    from stages._width import shrink_width
    from stages.tasks import get_task
    from stages.tasks.sentence_embedding import similarity_mse

    config = BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64)
    config.sentence_pooling, config.sentence_normalize = "mean", True
    teacher = SentenceEmbeddingModel(config)
    task = get_task(load_config(ROOT / TINY_EMB, ["task.output_space=student"]))
    student = task.adapt_student(shrink_width(teacher, 16, 2, 32), teacher)
    assert (student.projection, student.output_dim, student.config.sentence_projection) == (None, 16, None)

    t = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [1.0, 1.0, 0.0]])
    rotated = t[:, [1, 0]] * 3  # a 2-wide student: the same cosines (axes swapped, scaled)
    assert similarity_mse(rotated, t).item() == pytest.approx(0.0, abs=1e-7)
    s = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])  # every text the same: cosines all 1
    # teacher cosines: 1 on the diagonal, 0 (texts 0-1), 1/sqrt2 (0-2, 1-2), each off-diagonal twice
    expected = (2 * (1 - 0) ** 2 + 4 * (1 - 2 ** -0.5) ** 2) / 9
    assert similarity_mse(s, t).item() == pytest.approx(expected, rel=1e-6)
    assert task.distillation_loss(s, t, {}, 1.0, 0.0).item() == pytest.approx(expected, rel=1e-6)


def test_pair_batches_are_seeded_passes_and_the_loss_is_cosent_by_hand(tmp_path):
    """Every pass visits each pair once, the same index gives the same batch (resume-safe), and
    the loss equals CoSENT written out: log(1 + sum over s_i > s_j of exp(20 (cos_j - cos_i)))."""
    from stages._pairs import PairSupervision

    tokenizer = _tiny_st_bert(tmp_path)
    model = load_sentence_model(tmp_path / "bert", "mean", True).eval()
    pairs = [(f"the plot {i}", f"the music {i % 3}", float(i)) for i in range(6)]
    sup = PairSupervision(pairs, tokenizer, batch_size=3, max_length=16, seed=0)
    first_pass = sup.batch(0) + sup.batch(1)
    assert sorted(first_pass) == sorted(pairs) and sup.batch(1) == PairSupervision(
        pairs, tokenizer, batch_size=3, max_length=16, seed=0).batch(1)
    assert sup.batch(2) + sup.batch(3) != first_pass  # a new permutation each pass
    rows = sup.batch(4)
    with torch.no_grad():
        loss = sup.loss(model, 4).item()
        embed = [model(**tokenizer([r[side] for r in rows], padding=True, return_tensors="pt")).logits
                 for side in (0, 1)]
    cos = torch.nn.functional.cosine_similarity(embed[0], embed[1]).tolist()
    terms = [np.exp(20 * (cos[j] - cos[i])) for i in range(3) for j in range(3) if rows[i][2] > rows[j][2]]
    assert loss == pytest.approx(np.log(1 + sum(terms)), rel=1e-5)


def test_question_passage_batches_never_repeat_a_passage_and_the_loss_is_in_batch_softmax(tmp_path):
    """Retrieval pairs (question, passage, passage id): no batch holds one passage twice (it would
    be its own negative), passes are seeded, and the loss is cross-entropy over the scaled cosines
    of each question to the batch's passages, its own passage the target."""
    from stages._pairs import PairSupervision

    tokenizer = _tiny_st_bert(tmp_path)
    model = load_sentence_model(tmp_path / "bert", "mean", True).eval()
    pairs = [(f"who sang {i}", f"the music {i % 4}", i % 4) for i in range(12)]  # 3 questions per passage
    sup = PairSupervision(pairs, tokenizer, batch_size=4, max_length=16, seed=0, loss="in-batch")
    first_pass = [sup.batch(i) for i in range(3)]
    for rows in first_pass:
        assert len({r[2] for r in rows}) == len(rows) >= 2
    assert sup.batch(1) == PairSupervision(pairs, tokenizer, 4, 16, 0, loss="in-batch").batch(1)
    assert sorted(r for rows in first_pass for r in rows) == sorted(pairs)  # 3 x 4 distinct: all fit
    rows = sup.batch(2)
    with torch.no_grad():
        loss = sup.loss(model, 2).item()
        q, d = (model(**tokenizer([r[side] for r in rows], padding=True, return_tensors="pt")).logits
                for side in (0, 1))
    scores = 20 * torch.nn.functional.normalize(q, dim=1) @ torch.nn.functional.normalize(d, dim=1).T
    by_hand = np.mean([-torch.log_softmax(scores[i], 0)[i].item() for i in range(len(rows))])
    assert loss == pytest.approx(by_hand, rel=1e-5)


@pytest.mark.parametrize(("config", "overrides", "message"), [
    (TINY_EMB, ["distill.pair_weight=1.0"], "needs task.type: sentence-embedding with task.evaluation: pairs"),
    (TINY_EMB, ["search.enabled=true"], "covers classification tasks so far"),
    (TINY_EMB, ["export.embedding_outputs=[pooled]"], "'pooled' needs the [CLS] pooler"),
    (TINY_EMB, ["task.finetune_teacher=true"], "it needs task.evaluation: pairs"),
    (TINY_EMB, ["task.output_space=own"], "output_space"),
    ("configs/tiny-retrieval.yaml", ["distill.pair_weight=1.0", "task.test_queries=all"],
     "set task.test_queries: test-articles, or distill.pair_weight: 0"),
    # sentence-transformers' trainer has no length grouping: refused rather than silently ignored
    ("configs/tiny-sts.yaml", ["task.finetune_teacher=true", "finetune.group_by_length=true"],
     "set finetune.group_by_length: false"),
])
def test_config_errors(config, overrides, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(ROOT / config, overrides)


# -- pairs (STS) and passage retrieval (SQuAD as ReQA) -------------------------------------------
def test_pair_metrics_by_hand():
    from stages.tasks.sentence_embedding import pair_metrics

    # Pairs: identical (cos 1), orthogonal (cos 0), opposite (cos -1); gold 5, 2.5, 0 -> ranks agree.
    vectors = np.array([[1.0, 0], [1, 0], [1, 0], [0, 1], [1, 0], [-1, 0]])
    got = pair_metrics(vectors, np.array([5, 5, 2.5, 2.5, 0, 0]))
    assert got == {"spearman": pytest.approx(1.0), "pearson": pytest.approx(1.0)}
    got = pair_metrics(vectors, np.array([0, 0, 2.5, 2.5, 5, 5]))
    assert got["spearman"] == pytest.approx(-1.0)


def test_the_check_against_sentence_transformers_ignores_noise_on_near_ties_but_not_real_differences():
    from datasets import Dataset
    from scipy.stats import spearmanr

    from pipeline.stage import StageError
    from stages.tasks.sentence_embedding import (
        check_agrees_with_sentence_transformers,
        pair_metrics,
    )

    # 18 pairs whose cosines all sit within 1e-6 of each other: noise of 1e-7 reorders them.
    rng = np.random.default_rng(0)
    first = np.tile([1.0, 0.0, 0.0], (18, 1)).astype(np.float32)
    second = np.column_stack([np.ones(18), rng.uniform(0, 1e-3, 18), np.zeros(18)]).astype(np.float32)
    gold = rng.uniform(0, 5, 18)
    validation = Dataset.from_dict({"text": ["a"] * 18, "text_pair": ["b"] * 18, "label": gold})
    cosine = (first * second).sum(1) / np.linalg.norm(second, axis=1)
    evaluator = float(spearmanr(gold, cosine).statistic)
    ours = np.empty((36, 3))
    ours[0::2], ours[1::2] = first, second
    noisy = ours + rng.normal(0, 1e-7, ours.shape)
    assert abs(pair_metrics(noisy, np.repeat(gold, 2))["spearman"] - evaluator) > 1e-3  # the old check: flaky
    check_agrees_with_sentence_transformers(validation, evaluator, noisy, first, second)  # no error
    with pytest.raises(StageError, match="Spearman and sentence-transformers' differ"):
        check_agrees_with_sentence_transformers(validation, evaluator + 0.01, noisy, first, second)
    with pytest.raises(StageError, match="embeds differently"):
        check_agrees_with_sentence_transformers(validation, evaluator, noisy[::-1].copy(), first, second)


def test_passage_retrieval_metrics_by_hand():
    from stages.tasks.sentence_embedding import passage_retrieval_metrics

    # Two documents (groups 7 and 8) and two queries: q1 (group 7) is nearest doc 7 -> rank 1;
    # q2 (group 8) is also nearest doc 7, so its passage comes second -> MRR 1/2.
    vectors = np.array([[1.0, 0.0], [0.9, 0.1], [1.0, 0.0], [0.0, 1.0]])
    groups, roles = np.array([7, 8, 7, 8]), np.array([0, 0, 1, 1])
    got = passage_retrieval_metrics(vectors, groups, roles, k=10)
    assert got["mrr_at_10"] == pytest.approx((1 + 0.5) / 2)
    assert got["recall_at_1"] == pytest.approx(0.5) and got["recall_at_10"] == 1.0
    assert got["ndcg_at_10"] == pytest.approx((1 + 1 / np.log2(3)) / 2)


def test_queries_from_one_model_documents_from_another(tmp_path):
    from datasets import Dataset

    from stages.tasks.sentence_embedding import SentenceEmbedding

    cfg = load_config(ROOT / "configs" / "tiny-retrieval.yaml")
    task = SentenceEmbedding(cfg)
    features = Dataset.from_dict({"labels": [7, 8, 7, 8], "role": [0, 0, 1, 1]})
    # The student puts q2 nearer doc 7 (0.8) than its own doc 8 (0.6): MRR 1/2. The teacher's doc 8
    # sits at 0.96 from the student's q2, so over the teacher's documents q2 finds it first.
    student = [np.array(v) for v in ([1.0, 0.0], [0.8, 0.6], [1.0, 0.0], [0.0, 1.0])]
    teacher = [np.array(v) for v in ([1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.6, 0.8])]
    mixed = task.cross_encoded_rows(student, teacher, features)
    assert [list(r) for r in mixed] == [[1.0, 0.0], [0.8, 0.6], [1.0, 0.0], [0.6, 0.8]]
    metrics, per_query = task.evaluate(mixed, features)
    assert list(per_query) == [1.0, 1.0] and metrics["mrr_at_5"] == 1.0
    assert task.evaluate(student, features)[0]["mrr_at_5"] == 0.75
    assert task.cross_encoded_rows(student, [np.zeros(3)] * 4, features) is None  # another width: another space
    own_space = cfg.model_copy(update={"task": cfg.task.model_copy(update={"output_space": "student"})})
    assert SentenceEmbedding(own_space).cross_encoded_rows(student, teacher, features) is None
    labels = cfg.model_copy(update={"task": cfg.task.model_copy(update={"evaluation": "labels"})})
    assert SentenceEmbedding(labels).cross_encoded_rows(student, teacher, features) is None


def test_sts_reader_takes_sentences_from_columns_5_and_6(tmp_path):
    from pipeline.stage import StageError
    from stages.tasks.embedding_data import read_sts

    frame = read_sts(ROOT / "tests" / "data" / "tiny_sts.tsv")  # some lines carry an extra column
    assert len(frame) == 120 and list(frame.columns) == ["text", "text_pair", "label"]
    assert frame["label"].between(0, 5).all()
    bad = tmp_path / "bad.tsv"
    bad.write_text('genre\tfile\t2012\t0001\t3.0\tA "quoted" sentence.\tAnother one.\nonly\ttwo\n')
    with pytest.raises(StageError, match=r"line\(s\) \[2\]"):
        read_sts(bad)


def test_squad_articles_are_split_whole_and_every_passage_stays_in_the_corpus():
    from stages.tasks.embedding_data import DOCUMENT, QUERY, read_squad, retrieval_splits

    articles = read_squad(ROOT / "tests" / "data" / "tiny_squad.json")  # 6 articles x 3 paragraphs x 2 questions
    splits, report = retrieval_splits(articles, every=3, validation_share=0.25, seed=0)
    assert report["articles"] == {"train": 3, "validation": 1, "test": 2} and report["documents"] == 18
    test = splits["test"]
    assert test["role"].count(QUERY) == 2 * 3 * 2 and test["role"].count(DOCUMENT) == 18
    # Test articles are 2 and 5 (index % 3 == 2): their questions point at their own paragraphs 6-8, 15-17.
    assert {g for g, r in zip(test["label"], test["role"], strict=True) if r == QUERY} == {6, 7, 8, 15, 16, 17}
    assert len(splits["train"]) == 3 * 3 * 2 + 3 * 3  # questions + paragraphs of the train articles
    everything, _ = retrieval_splits(articles, every=3, validation_share=0.25, seed=0, queries="all")
    assert everything["test"]["role"].count(QUERY) == 36


@pytest.mark.parametrize(("config", "metric"), [("configs/tiny-sts.yaml", "spearman"),
                                                ("configs/tiny-retrieval.yaml", "ndcg_at_5")])
def test_pairs_and_retrieval_run_through_every_stage(tmp_path, config, metric):
    run_cli("run", "all", root=tmp_path, config=config)
    rows = cli_status(tmp_path, config=config)
    bench = json.loads((Path(rows["benchmark"]["path"]) / "benchmark.json").read_text())
    assert bench["primary_metric"] == metric
    for variant in ("teacher-stock-int8", "student-int8"):
        assert -1 <= bench["variants"][variant][metric] <= 1
    teacher = bench["variants"][bench["baseline"]]
    # nDCG is a mean over queries; Spearman is not, so each resample of the pairs is ranked again:
    # either way each variant's gap to the teacher gets an interval
    gap = bench["variants"]["student-int8"]["gap_to_teacher"]
    assert gap["gap"] == pytest.approx(teacher[metric] - bench["variants"]["student-int8"][metric])
    assert gap["low"] <= gap["gap"] <= gap["high"]
    release = json.loads((Path(rows["release"]["path"]) / "manifest.json").read_text())
    assert f"release/runtime_test_{metric}" in release["metrics"]
    distilled = json.loads((Path(rows["distill"]["path"]) / "manifest.json").read_text())["info"]
    if "sts" in config:  # scored pairs: CoSENT beside the embedding MSE
        assert distilled["pair_supervision"]["pairs"] > 0 and distilled["pair_supervision"]["loss"] == "CoSENTLoss"
    if "sts" in config:  # task.output_space: student: a narrower student (16) keeps its own space
        saved = json.loads((Path(rows["distill"]["path"]) / "model" / "config.json").read_text())
        assert (saved["hidden_size"], saved.get("sentence_projection")) == (16, None)
        parity = json.loads((Path(rows["export"]["path"]) / "manifest.json").read_text())["info"]["library_parity"]
        assert parity["student"]["st_min_cosine"] >= 0.9999
        bundle = json.loads((Path(rows["release"]["path"]) / "bundle" / "bundle.json").read_text())
        assert bundle["sentence_embedding"]["dim"] == 16
        assert "mean_cosine" not in bench["variants"]["student-int8"]["agreement_with_teacher"]  # other widths
    if "retrieval" in config:  # questions and their passages: in-batch negatives beside the MSE
        assert distilled["pair_supervision"]["pairs"] == 3 * 3 * 2  # the 3 train articles' questions
        assert distilled["pair_supervision"]["loss"] == "MultipleNegativesRankingLoss"
    if "retrieval" in config:  # a narrower student (16) embeds into the teacher's 32 dimensions
        saved = json.loads((Path(rows["distill"]["path"]) / "model" / "config.json").read_text())
        assert (saved["hidden_size"], saved["sentence_projection"]) == (16, 32)
        parity = json.loads((Path(rows["export"]["path"]) / "manifest.json").read_text())["info"]["library_parity"]
        assert parity["student"]["st_min_cosine"] >= 0.9999  # sentence-transformers reads the Dense module
        bundle = json.loads((Path(rows["release"]["path"]) / "bundle" / "bundle.json").read_text())
        assert bundle["sentence_embedding"]["dim"] == 32
    if "retrieval" in config:  # the service's costs: index of the corpus, encode + search per query
        for variant in ("teacher-stock-int8", "student-int8", "static-model2vec"):
            timing = bench["variants"][variant]["retrieval"]
            assert timing["documents"] == 18 and timing["index_build_s"] > 0 and timing["query_p50_ms"] > 0
        assert "## Retrieval service" in (Path(rows["benchmark"]["path"]) / "results.md").read_text()
    if "retrieval" in config:  # the student's queries over the teacher's documents, from rows already computed
        over = bench["over_teacher_index"]
        assert set(over) >= {"teacher-onnx", "teacher-stock-int8", "student-onnx", "student-int8"}
        assert "static-model2vec" not in over  # another space
        assert over["teacher-onnx"][metric] == pytest.approx(teacher[metric], abs=0.02)
        gap = over["student-int8"]["gap_to_teacher"]
        assert gap["gap"] == pytest.approx(teacher[metric] - over["student-int8"][metric])
        assert "## Queries over the teacher's index" in (Path(rows["benchmark"]["path"]) / "results.md").read_text()
        # Shipped that way: the teacher bundle builds the index, the student's queries search it, torch-free.
        student_bundle, teacher_bundle = (Path(rows["release"]["path"]) / name for name in ("bundle", "bundle-teacher"))
        spaces = {json.loads((b / "bundle.json").read_text())["sentence_embedding"]["space"]
                  for b in (student_bundle, teacher_bundle)}
        assert len(spaces) == 1 and "#sha256:" in spaces.pop()  # the teacher's name and weights
        assert "--bundle <this directory>" in (student_bundle / "README.md").read_text()  # the card says how
        corpus = tmp_path / "corpus.txt"
        corpus.write_text("the river flows north\nthe mountain is tall\na city by the sea\n")
        no_torch("index", str(teacher_bundle), "--input", str(corpus), "--out", str(tmp_path / "idx"))
        [hit] = no_torch_rows("search", str(tmp_path / "idx"), "which way does the river flow", "-k", "1",
                              "--bundle", str(student_bundle))
        assert hit["hits"][0]["rank"] == 1
        refused = subprocess.run([*NO_TORCH, "index", str(student_bundle), "--input", str(corpus), "--out",
                                  str(tmp_path / "idx")], cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert refused.returncode != 0 and "added by the bundle that built it" in refused.stderr
    else:
        assert "over_teacher_index" not in bench


def test_static_tier_is_benchmarked_and_released_for_numpy_alone(rows, tmp_path):
    path, m = stage_manifest(rows, "static")
    report = json.loads((path / "static_report.json").read_text())
    assert report["enabled"] and report["parity_min_cosine"] >= 0.9999  # bertpress.static == model2vec
    assert report["settings"]["dim"] == 16 and (path / "model2vec").is_dir()
    bench, _ = stage_manifest(rows, "benchmark")
    static = json.loads((bench / "benchmark.json").read_text())["variants"]["static-model2vec"]
    assert static["runtime"] == "numpy (bertpress.static)" and 0 <= static["ndcg_at_5"] <= 1
    assert "mean_cosine" not in static["agreement_with_teacher"]  # another space: neighbours only
    bundle = Path(rows["release"]["path"]) / "bundle-static"
    assert {p.name for p in bundle.iterdir()} == {"static.npz", "tokenizer.json", "bundle.json", "README.md",
                                                 "SHA256SUMS"}
    out = json.loads(no_torch("predict", str(bundle), "a great film").stdout)
    assert len(out["embedding"]) == 16 and np.linalg.norm(out["embedding"]) == pytest.approx(1.0, abs=1e-5)
    blocked = subprocess.run([*NO_TORCH, "predict", str(bundle), "x"], cwd=ROOT, capture_output=True, text=True,
                             env={**os.environ, "BERTPRESS_BLOCK_ONNXRUNTIME": "1"}, timeout=120)
    assert blocked.returncode == 0, blocked.stderr  # no onnxruntime session either


def test_the_fine_tuned_teacher_is_the_same_in_every_process(tmp_path):
    """The sentence-embedding teacher stage (random init in tests, pair fine-tuning) is seeded like
    every other: two processes, whatever their hash seeds, write the same teacher weights."""
    weights = []
    for hash_seed in ("1", "2"):
        root = tmp_path / hash_seed
        run_cli("run", "finetune", root=root, config="configs/tiny-sts.yaml", env={"PYTHONHASHSEED": hash_seed})
        [model] = (root / "artifacts").glob("finetune/*/model/model.safetensors")
        weights.append(model.read_bytes())
    assert weights[0] == weights[1]
