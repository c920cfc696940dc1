"""Content-addressed stage keys, the artifact store, and runner.plan()'s chained invalidation."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from pipeline.cache import KEY_LENGTH, MANIFEST, ArtifactStore, stable_hash, stage_key
from pipeline.registry import STAGE_NAMES, STAGES
from pipeline.runner import code_version, plan, section_values
from pipeline.stage import StageResult, StageSpec

TINY_CSV = Path(__file__).resolve().parent / "data" / "tiny_reviews.csv"

# ---------------------------------------------------------------------------------------------
# stable_hash / stage_key


def test_stable_hash_ignores_key_order() -> None:
    a = {"x": 1, "y": {"b": [1, 2], "a": None}}
    b = {"y": {"a": None, "b": [1, 2]}, "x": 1}
    assert stable_hash(a) == stable_hash(b)
    assert len(stable_hash(a)) == 64
    int(stable_hash(a), 16)  # hex


def test_stable_hash_sees_values_and_list_order() -> None:
    assert stable_hash({"x": 1}) != stable_hash({"x": 2})
    assert stable_hash({"x": [1, 2]}) != stable_hash({"x": [2, 1]})
    assert stable_hash({"x": 1}) != stable_hash({"x": "1"})
    assert stable_hash({"x": 1}) != stable_hash({"y": 1})


def test_stable_hash_known_value() -> None:
    # Pinned: a silent change of the serialisation would orphan every existing cache entry.
    import hashlib

    assert stable_hash({"b": 1, "a": [1, "x"]}) == hashlib.sha256(b'{"a":[1,"x"],"b":1}').hexdigest()


BASE = {"stage": "distill", "config": {"distill": {"temperature": 2.0}}, "upstream": {"data": "k1"},
        "code_version": "c1", "fingerprint": None}


def _key(**changes) -> str:
    args = {**BASE, **changes}
    return stage_key(args["stage"], args["config"], args["upstream"], args["code_version"], args["fingerprint"])


def test_stage_key_deterministic_and_short() -> None:
    key = _key()
    assert key == _key()
    assert len(key) == KEY_LENGTH
    int(key, 16)


@pytest.mark.parametrize(
    "change",
    [
        {"stage": "export"},
        {"config": {"distill": {"temperature": 4.0}}},
        {"config": {"distill": {"temperature": 2.0, "alpha": 0.5}}},
        {"upstream": {"data": "k2"}},
        {"upstream": {"data": "k1", "finetune": "k3"}},
        {"code_version": "c2"},
        {"fingerprint": "files:abc"},
    ],
    ids=["stage", "config", "config-extra-key", "upstream-key", "upstream-added", "code", "fingerprint"],
)
def test_stage_key_changes(change: dict) -> None:
    assert _key(**change) != _key()


def test_stage_key_fingerprint_values_differ() -> None:
    assert _key(fingerprint="files:a") != _key(fingerprint="files:b")


def test_stage_key_ignores_upstream_order() -> None:
    a = _key(upstream={"data": "1", "finetune": "2"})
    b = _key(upstream={"finetune": "2", "data": "1"})
    assert a == b


def test_code_version_tracks_file_content(tmp_path: Path) -> None:
    src = tmp_path / "stage.py"
    src.write_text("x = 1\n")

    def spec() -> StageSpec:
        return StageSpec(name="s", run=lambda ctx: StageResult(), consumes=(), produces=(), upstream=(),
                         config_sections=(), code_files=(src,), description="test stage")

    v1 = code_version(spec(), "sequence-classification")
    assert v1 == code_version(spec(), "sequence-classification")
    src.write_text("x = 2\n")
    assert code_version(spec(), "sequence-classification") != v1
    # The configured task's module is part of every stage's version.
    assert code_version(spec(), "token-classification") != code_version(spec(), "sequence-classification")


def test_every_stage_hashes_its_own_file_and_the_helpers_it_uses() -> None:
    for spec in STAGES:
        names = [p.name for p in spec.code_files]
        assert names[0] == f"{spec.name}.py"
        assert "_hf.py" in names  # every stage uses the shared HF helpers
        assert ("_losses.py" in names) == (spec.name in ("distill", "search"))  # search distills too
        assert all(p.is_file() for p in spec.code_files)


# ---------------------------------------------------------------------------------------------
# ArtifactStore


def _commit(store: ArtifactStore, stage: str, key: str, payload: str = "hello", **manifest):
    tmp = store.begin(stage, key)
    (tmp / "out.txt").write_text(payload)
    return store.commit(tmp, stage, key, {"outputs": {"out": "out.txt"}, **manifest})


def test_begin_commit_get(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "arts")
    tmp = store.begin("data", "abc")
    assert tmp.is_dir()
    assert tmp.parent == tmp_path / "arts" / "data"
    assert tmp.name.startswith(".tmp-abc-")
    assert store.get("data", "abc") is None  # not committed yet
    (tmp / "out.txt").write_text("hello")
    art = store.commit(tmp, "data", "abc", {"outputs": {"out": "out.txt"}, "metrics": {"m": 1.5}})
    assert not tmp.exists()
    assert art.path == tmp_path / "arts" / "data" / "abc"
    assert (art.path / MANIFEST).is_file()
    assert not (art.path / (MANIFEST + ".part")).exists()
    on_disk = json.loads((art.path / MANIFEST).read_text())
    assert on_disk["stage"] == "data" and on_disk["key"] == "abc"
    assert on_disk["metrics"] == {"m": 1.5}
    assert "committed_at" in on_disk

    got = store.get("data", "abc")
    assert got is not None
    assert got.path == art.path
    assert got.metrics == {"m": 1.5}
    assert got.output("out").read_text() == "hello"
    with pytest.raises(KeyError, match="declares no output 'nope'"):
        got.output("nope")
    assert store.finished_keys("data") == ["abc"]
    assert store.garbage() == []


def test_get_none_without_manifest(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    (tmp_path / "data" / "k1").mkdir(parents=True)
    (tmp_path / "data" / "k1" / "out.txt").write_text("partial")
    assert store.get("data", "k1") is None
    assert store.get("data", "never") is None
    assert store.get("nostage", "k1") is None
    assert store.finished_keys("data") == []
    assert store.finished_keys("nostage") == []


def test_get_none_for_corrupt_manifest(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    (tmp_path / "data" / "k1").mkdir(parents=True)
    (tmp_path / "data" / "k1" / MANIFEST).write_text("{not json")
    assert store.get("data", "k1") is None


def test_tmp_dir_is_not_an_artifact(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    tmp = store.begin("data", "k1")
    (tmp / "out.txt").write_text("half")
    assert store.get("data", "k1") is None
    assert store.get("data", tmp.name) is None
    assert store.finished_keys("data") == []
    assert store.garbage() == [tmp]


def test_interrupted_commit_is_not_a_finished_key(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    tmp = store.begin("data", "k1")
    # commit() writes the manifest into the tmp dir first; a kill before the rename leaves this:
    (tmp / MANIFEST).write_text(json.dumps({"stage": "data", "key": "k1"}))
    assert store.get("data", "k1") is None
    assert store.finished_keys("data") == []


def test_commit_over_existing_key_replaces_it(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    _commit(store, "data", "k1", payload="old", metrics={"v": 1})
    (store.path("data", "k1") / "stale_extra.txt").write_text("from the old run")
    art = _commit(store, "data", "k1", payload="new", metrics={"v": 2})
    assert art.output("out").read_text() == "new"
    assert not (art.path / "stale_extra.txt").exists()
    got = store.get("data", "k1")
    assert got is not None and got.metrics == {"v": 2}
    assert store.finished_keys("data") == ["k1"]
    assert store.garbage() == []  # the swapped-out old output was deleted
    assert sorted(p.name for p in store.stage_dir("data").iterdir()) == ["k1"]


def test_abort_removes_tmp(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    tmp = store.begin("data", "k1")
    (tmp / "sub").mkdir()
    (tmp / "sub" / "f").write_text("x")
    store.abort(tmp)
    assert not tmp.exists()
    assert store.garbage() == []
    store.abort(tmp)  # idempotent


def test_begin_gives_distinct_dirs(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    assert store.begin("data", "k") != store.begin("data", "k")


def test_garbage_lists_leftovers(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    _commit(store, "data", "done1")
    t1 = store.begin("data", "k2")
    t2 = store.begin("finetune", "k3")
    trash = store.stage_dir("finetune") / ".trash-k3-deadbeef"
    trash.mkdir()
    store.scratch("finetune", "k3")  # scratch is kept on purpose: not garbage
    (tmp_path / "mlflow.db").write_text("")  # a file at the root is ignored
    assert store.garbage() == sorted([t1, t2, trash])
    assert ArtifactStore(tmp_path / "absent").garbage() == []


def test_scratch_and_drop_scratch(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    scratch = store.scratch("finetune", "k1")
    assert scratch == tmp_path / "finetune" / ".work-k1"
    assert scratch.is_dir()
    (scratch / "checkpoint").write_text("step 10")
    # A second attempt gets the same directory back, contents intact.
    assert store.scratch("finetune", "k1") == scratch
    assert (scratch / "checkpoint").read_text() == "step 10"
    assert store.get("finetune", "k1") is None
    assert store.finished_keys("finetune") == []
    store.drop_scratch("finetune", "k1")
    assert not scratch.exists()
    store.drop_scratch("finetune", "k1")  # idempotent


def test_finished_keys_newest_first(tmp_path: Path) -> None:
    import os

    store = ArtifactStore(tmp_path)
    for i, key in enumerate(["a", "b", "c"]):
        art = _commit(store, "data", key)
        os.utime(art.path / MANIFEST, (1000 + i, 1000 + [5, 1, 9][i]))
    assert store.finished_keys("data") == ["c", "a", "b"]


# ---------------------------------------------------------------------------------------------
# runner.plan()


def test_section_values(tiny_cfg) -> None:
    values = section_values(tiny_cfg, ("project.seed", "distill", "teacher.random.hidden_size"))
    assert values["project.seed"] == 13
    assert values["distill"]["temperature"] == 2.0
    assert values["distill"]["student"]["keep_layers"] == [0, 2]
    assert values["teacher.random.hidden_size"] == 32


def test_no_stage_hashes_runtime() -> None:
    for spec in STAGES:
        assert not any(s.split(".")[0] == "runtime" for s in spec.config_sections), spec.name


def _keys(cfg) -> dict[str, str]:
    store = ArtifactStore(cfg.runtime.artifacts_dir)
    return {name: item.key for name, item in plan(cfg, store).items()}


def test_plan_initially_missing(tiny_cfg) -> None:
    planned = plan(tiny_cfg, ArtifactStore(tiny_cfg.runtime.artifacts_dir))
    assert tuple(planned) == STAGE_NAMES
    assert all(item.status == "missing" for item in planned.values())
    assert all(item.artifact is None and item.stale_keys == [] for item in planned.values())
    keys = [item.key for item in planned.values()]
    assert len(set(keys)) == len(keys)
    assert all(len(k) == KEY_LENGTH for k in keys)
    assert not tiny_cfg.runtime.artifacts_dir.exists()  # planning writes nothing


def test_plan_is_deterministic(load_tiny) -> None:
    assert _keys(load_tiny()) == _keys(load_tiny())


def test_plan_chained_invalidation(load_tiny) -> None:
    before = _keys(load_tiny())
    after = _keys(load_tiny("distill.temperature=4"))
    changed = {name for name in STAGE_NAMES if before[name] != after[name]}
    assert changed == {"distill", "export", "quantize", "benchmark", "release"}


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("finetune.learning_rate=2.0e-3",
         {"finetune", "baseline", "static", "search", "distill", "export", "quantize", "benchmark", "release"}),
        ("search.proxy_trials=3", set()),  # the search is off in tiny.yaml: its settings are not keyed
        ("data.max_length=16", set(STAGE_NAMES)),
        ("project.seed=1", set(STAGE_NAMES)),
        ("export.opset=18", {"export", "quantize", "benchmark", "release"}),
        ("quantize.max_metric_drop=0.02", {"quantize", "benchmark", "release"}),
        ("benchmark.iterations=3", {"benchmark", "release"}),
        ("release.model_name=other", {"release"}),
        ("gates.min_metric=0.9", set()),
    ],
)
def test_plan_invalidates_downstream_only(load_tiny, override: str, expected: set[str]) -> None:
    before = _keys(load_tiny())
    after = _keys(load_tiny(override))
    assert {n for n in STAGE_NAMES if before[n] != after[n]} == expected


@pytest.mark.parametrize(
    "override",
    ["runtime.threads=3", "runtime.device=cpu", "runtime.log_level=DEBUG"],
)
def test_runtime_changes_no_key(load_tiny, override: str) -> None:
    assert _keys(load_tiny(override)) == _keys(load_tiny())


def test_artifacts_dir_changes_no_key(load_tiny, tmp_path: Path) -> None:
    a = _keys(load_tiny())
    b = _keys(load_tiny(f"runtime.artifacts_dir={tmp_path / 'elsewhere'}", "runtime.tracking_uri=null"))
    assert a == b


def test_editing_the_data_file_changes_every_key(load_tiny, tmp_path: Path) -> None:
    copy = tmp_path / "reviews.csv"
    shutil.copyfile(TINY_CSV, copy)
    cfg = load_tiny(f"data.files.train={copy}")
    before = _keys(cfg)
    assert before == _keys(load_tiny(f"data.files.train={copy}"))
    with copy.open("a") as fh:
        fh.write("A brand new review that nobody wrote before.,positive\n")
    after = _keys(cfg)
    assert all(before[n] != after[n] for n in STAGE_NAMES), (before, after)


def test_plan_done_and_stale(load_tiny) -> None:
    cfg = load_tiny()
    store = ArtifactStore(cfg.runtime.artifacts_dir)
    planned = plan(cfg, store)
    data_key = planned["data"].key
    _commit(store, "data", data_key, metrics={"data/train_examples": 10.0})
    planned = plan(cfg, store)
    assert planned["data"].status == "done"
    assert planned["data"].artifact is not None
    assert planned["data"].artifact.metrics == {"data/train_examples": 10.0}
    assert planned["finetune"].status == "missing"
    # Another seed: data's finished output is now stale, not done.
    other = plan(load_tiny("project.seed=99"), store)
    assert other["data"].status == "stale"
    assert other["data"].stale_keys == [data_key]
    assert other["data"].key != data_key


def test_code_version_covers_only_the_helpers_a_stage_imports():
    from pipeline.registry import code_files

    names = {stage: {p.name for p in code_files(stage)} for stage in ("data", "finetune", "export")}
    assert names["data"] == {"data.py", "_hf.py", "_sources.py", "_tables.py", "__init__.py", "base.py", "bundle.py",
                             "errors.py"}
    assert "_train.py" in names["finetune"] and "_onnx.py" not in names["finetune"]
    assert "_onnx.py" in names["export"] and "_train.py" not in names["export"]


def test_a_task_module_versions_only_its_own_task():
    """Editing the entity-recognition task must not invalidate cached classification models."""
    from pipeline.registry import REPO_DIR, task_code_files

    def files(paths) -> set[str]:
        return {str(p.relative_to(REPO_DIR)) for p in paths}

    classification = files(task_code_files("sequence-classification"))
    entities = files(task_code_files("token-classification"))
    assert {"stages/tasks/sequence_classification.py", "bertpress/tasks/sequence_classification.py"} <= classification
    assert {"stages/tasks/token_classification.py", "stages/tasks/ner_data.py", "bertpress/tasks/windows.py",
            "bertpress/tasks/token_classification.py", "bertpress/tasks/entities.py"} <= entities
    assert not {p for p in classification if "token_classification" in p or "ner_data" in p or "entities" in p}
    assert not {p for p in entities if "sequence_classification" in p}
    for spec in STAGES:  # the stages' own files never pull a task module in
        assert not {p for p in files(spec.code_files) if p.endswith(("_classification.py", "ner_data.py"))}


def test_stages_meet_only_through_declared_outputs():
    from pipeline.registry import PRODUCER

    for spec in STAGES:
        assert set(spec.upstream) == {PRODUCER[name] for name in spec.consumes}, spec.name
        assert set(spec.produces).isdisjoint({n for other in STAGES if other is not spec for n in other.produces})
    assert PRODUCER["bundle"] == "release" and PRODUCER["dataset"] == "data"


def _commit_built_from(store: ArtifactStore, stage: str, key: str, payload: str, upstream: dict) -> None:
    tmp = store.begin(stage, key)
    (tmp / "out.txt").write_text(payload)
    inputs = {name: {"key": a.key, "content_sha256": a.content} for name, a in upstream.items()}
    store.commit(tmp, stage, key, {"inputs": inputs, "outputs": {"out": "out.txt"}})


def test_an_upstream_rerun_with_other_output_makes_what_follows_stale(load_tiny) -> None:
    """`run quantize --force` picking another recipe must not leave benchmark and release 'done'."""
    cfg = load_tiny()
    store = ArtifactStore(cfg.runtime.artifacts_dir)
    keys = _keys(cfg)
    _commit_built_from(store, "data", keys["data"], "v1", {})
    data = store.get("data", keys["data"])
    _commit_built_from(store, "finetune", keys["finetune"], "teacher", {"data": data})
    assert plan(cfg, store)["finetune"].status == "done"
    # The same content again (a deterministic rerun): what follows stays valid.
    _commit_built_from(store, "data", keys["data"], "v1", {})
    assert plan(cfg, store)["finetune"].status == "done"
    # Different content under the same key (a forced rerun that changed its output).
    _commit_built_from(store, "data", keys["data"], "v2", {})
    planned = plan(cfg, store)
    assert planned["data"].status == "done"
    assert planned["finetune"].status == "stale" and planned["finetune"].artifact is None
    assert keys["finetune"] in planned["finetune"].stale_keys  # same key, rebuilt on the next run


def test_sentence_embeddings_are_versioned_with_the_classification_readers_they_reuse():
    from pipeline.registry import REPO_DIR, task_code_files

    files = {str(p.relative_to(REPO_DIR)) for p in task_code_files("sentence-embedding")}
    assert {"stages/tasks/sentence_embedding.py", "stages/tasks/sequence_classification.py", "stages/_sentence.py",
            "bertpress/tasks/sentence_embedding.py"} <= files
    assert not {p for p in files if "token_classification" in p}
