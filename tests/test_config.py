"""load_config / apply_overrides / parse_override / build_config, and the CLI's config errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.config import (
    ConfigError,
    PipelineConfig,
    apply_overrides,
    build_config,
    load_config,
    parse_override,
)
from pipeline.registry import STAGE_NAMES

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY = REPO_ROOT / "configs" / "tiny.yaml"


# ---------------------------------------------------------------------------------------------
# Defaults


def test_defaults_are_valid() -> None:
    cfg = load_config(None)
    assert isinstance(cfg, PipelineConfig)
    assert cfg.project.seed == 42
    assert cfg.data.source == "builtin"
    assert cfg.teacher.model == "builtin:minilm-l6"
    assert cfg.teacher.random is None
    assert cfg.distill.student.keep_layers == [0, 2, 4]
    assert cfg.distill.temperature == 2.0
    assert cfg.distill.alpha == 0.5
    assert cfg.runtime.artifacts_dir == Path("artifacts")
    assert cfg.benchmark.seq_lengths == [32, 128]
    # build_config({}) is the same thing as load_config(None).
    assert build_config({}) == cfg


def test_random_teacher_gets_default_shape() -> None:
    cfg = load_config(None, ["teacher.model=random", "distill.student.keep_layers=[0, 3]"])
    assert cfg.teacher.random is not None
    assert cfg.teacher.random.num_hidden_layers == 4
    assert cfg.teacher.random.hidden_size == 64


def test_config_is_frozen() -> None:
    cfg = load_config(None)
    with pytest.raises(ValueError):
        cfg.project.seed = 1  # type: ignore[misc]


# ---------------------------------------------------------------------------------------------
# parse_override


@pytest.mark.parametrize(
    ("item", "parts", "value"),
    [
        ("project.seed=7", ["project", "seed"], 7),
        ("distill.temperature=4.5", ["distill", "temperature"], 4.5),
        ("finetune.learning_rate=2.0e-5", ["finetune", "learning_rate"], 2.0e-5),
        ("export.optimize=false", ["export", "optimize"], False),
        ("quantize.per_channel=true", ["quantize", "per_channel"], True),
        ("benchmark.seq_lengths=[8, 16, 64]", ["benchmark", "seq_lengths"], [8, 16, 64]),
        ("data.max_train_samples=null", ["data", "max_train_samples"], None),
        ("data.max_train_samples=~", ["data", "max_train_samples"], None),
        ("project.name=my-run", ["project", "name"], "my-run"),
        ("project.name='42'", ["project", "name"], "42"),
        ("project.name=", ["project", "name"], ""),
        ("runtime.tracking_uri=sqlite:///x.db", ["runtime", "tracking_uri"], "sqlite:///x.db"),
        ("a.b=c=d", ["a", "b"], "c=d"),  # only the first '=' separates key and value
        (" project.seed =3", ["project", "seed"], 3),
        ("data.hub_splits={train: train, test: validation}", ["data", "hub_splits"],
         {"train": "train", "test": "validation"}),
    ],
)
def test_parse_override_yaml_types(item: str, parts: list[str], value: object) -> None:
    got_parts, got_value = parse_override(item)
    assert got_parts == parts
    assert got_value == value
    assert type(got_value) is type(value)


@pytest.mark.parametrize("item", ["project.seed", "noequals"])
def test_parse_override_needs_equals(item: str) -> None:
    with pytest.raises(ConfigError, match="not of the form"):
        parse_override(item)


@pytest.mark.parametrize("item", ["project..seed=1", ".seed=1", "project.=1", "=1"])
def test_parse_override_empty_segment(item: str) -> None:
    with pytest.raises(ConfigError, match="empty key segment"):
        parse_override(item)


def test_parse_override_invalid_yaml() -> None:
    with pytest.raises(ConfigError, match="not valid YAML"):
        parse_override("benchmark.seq_lengths=[1, 2")


# ---------------------------------------------------------------------------------------------
# apply_overrides


def test_apply_overrides_sets_and_does_not_mutate_input() -> None:
    raw = {"project": {"seed": 1, "name": "x"}, "benchmark": {"seq_lengths": [1, 2]}}
    out = apply_overrides(raw, ["project.seed=9", "benchmark.seq_lengths=[4]"])
    assert out == {"project": {"seed": 9, "name": "x"}, "benchmark": {"seq_lengths": [4]}}
    assert raw == {"project": {"seed": 1, "name": "x"}, "benchmark": {"seq_lengths": [1, 2]}}
    # A deep copy: nested lists are not shared with the input.
    out2 = apply_overrides(raw, [])
    out2["benchmark"]["seq_lengths"].append(3)
    assert raw["benchmark"]["seq_lengths"] == [1, 2]


def test_apply_overrides_creates_nested_dicts() -> None:
    out = apply_overrides({}, ["distill.student.keep_layers=[1, 3]", "teacher.random.hidden_size=16"])
    assert out == {
        "distill": {"student": {"keep_layers": [1, 3]}},
        "teacher": {"random": {"hidden_size": 16}},
    }


def test_apply_overrides_fills_a_null_section() -> None:
    out = apply_overrides({"data": {"files": None}}, ["data.files.train=a.csv"])
    assert out == {"data": {"files": {"train": "a.csv"}}}


def test_apply_overrides_later_wins() -> None:
    out = apply_overrides({}, ["project.seed=1", "project.seed=2"])
    assert out["project"]["seed"] == 2


def test_override_into_scalar_names_it() -> None:
    raw = {"project": {"name": "x"}}
    with pytest.raises(ConfigError) as info:
        apply_overrides(raw, ["project.name.first=1"])
    msg = str(info.value)
    assert "'name'" in msg
    assert "project.name.first=1" in msg


def test_override_into_scalar_via_load_config() -> None:
    with pytest.raises(ConfigError, match="'seed' holds a value"):
        load_config(TINY, ["project.seed.x=1"])


def test_overrides_apply_on_top_of_yaml() -> None:
    cfg = load_config(TINY, ["distill.temperature=4", "finetune.batch_size=8", "export.optimize=false"])
    assert cfg.distill.temperature == 4.0
    assert cfg.finetune.batch_size == 8
    assert cfg.export.optimize is False
    assert cfg.project.seed == 13  # untouched values come from the YAML


def test_exponent_without_dot_still_becomes_a_float() -> None:
    # PyYAML reads 1e-3 as a string; pydantic must still turn it into a float.
    cfg = load_config(None, ["finetune.learning_rate=1e-3"])
    assert cfg.finetune.learning_rate == pytest.approx(1e-3)


# ---------------------------------------------------------------------------------------------
# Validation errors


def test_unknown_key_rejected_with_dotted_path() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(TINY, ["finetune.batchsize=3"])
    msg = str(info.value)
    assert "finetune.batchsize" in msg
    assert "unknown key" in msg


def test_unknown_top_level_section_rejected() -> None:
    with pytest.raises(ConfigError) as info:
        build_config({"trainer": {"epochs": 1}})
    assert "trainer: unknown key" in str(info.value)


def test_unknown_nested_key_rejected_with_dotted_path() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(TINY, ["teacher.random.hidden=3"])
    assert "teacher.random.hidden" in str(info.value)


def test_several_errors_reported_at_once() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(
            TINY,
            ["distill.alpha=1.5", "finetune.batch_size=0", "export.bogus=1", "runtime.device=tpu"],
        )
    msg = str(info.value)
    assert "4 problem(s)" in msg
    for path in ("distill.alpha", "finetune.batch_size", "export.bogus", "runtime.device"):
        assert f"  - {path}:" in msg, f"{path} missing from:\n{msg}"
    assert "less than or equal to 1" in msg
    assert "greater than or equal to 1" in msg


def test_literal_error_lists_allowed_values() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, ["data.source=s3"])
    msg = str(info.value)
    assert "data.source" in msg
    for allowed in ("'builtin'", "'hub'", "'files'"):
        assert allowed in msg
    assert "got 's3'" in msg


def test_wrong_type_reported() -> None:
    with pytest.raises(ConfigError, match="project.seed"):
        load_config(None, ["project.seed=abc"])


def test_files_source_needs_files() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, ["data.source=files"])
    msg = str(info.value)
    assert "data.source=files needs data.files.train" in msg
    assert "  - data:" in msg


def test_files_needs_train() -> None:
    with pytest.raises(ConfigError, match=r"data\.files\.train"):
        load_config(None, ["data.source=files", "data.files.test=x.csv"])


def test_hub_source_needs_hub_name() -> None:
    with pytest.raises(ConfigError, match="hub_name"):
        load_config(None, ["data.source=hub"])


def test_split_sizes_sum_checked() -> None:
    with pytest.raises(ConfigError, match="validation_size \\+ data.test_size"):
        load_config(None, ["data.validation_size=0.3", "data.test_size=0.3"])
    # Just under the bound is fine.
    cfg = load_config(None, ["data.validation_size=0.3", "data.test_size=0.25"])
    assert cfg.data.test_size == 0.25


def test_student_both_keep_layers_and_model() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(TINY, ["distill.student.model=my-org/small-bert"])
    msg = str(info.value)
    assert "exactly one of distill.student.keep_layers or distill.student.model" in msg
    assert "distill.student" in msg


def test_student_neither_keep_layers_nor_model() -> None:
    with pytest.raises(ConfigError, match="exactly one of"):
        load_config(TINY, ["distill.student.keep_layers=null"])


def test_student_model_alone_is_valid() -> None:
    cfg = load_config(TINY, ["distill.student.keep_layers=null", "distill.student.model=some/model"])
    assert cfg.distill.student.model == "some/model"
    assert cfg.distill.student.keep_layers is None


@pytest.mark.parametrize("layers", ["[]", "[0, 0]", "[-1, 1]"])
def test_student_keep_layers_shape(layers: str) -> None:
    with pytest.raises(ConfigError, match="distill.student"):
        load_config(TINY, [f"distill.student.keep_layers={layers}"])


def test_keep_layers_out_of_range_for_random_teacher() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(TINY, ["distill.student.keep_layers=[0, 4, 7]"])
    msg = str(info.value)
    assert "[4, 7]" in msg
    assert "4-layer" in msg
    assert "0..3" in msg


def test_keep_layers_checked_against_default_random_shape() -> None:
    # Default random teacher has 4 layers; the default student keeps [0, 2, 4].
    with pytest.raises(ConfigError, match=r"keep_layers \[4\]"):
        load_config(None, ["teacher.model=random"])


def test_keep_layers_follow_teacher_depth() -> None:
    cfg = load_config(TINY, ["teacher.random.num_hidden_layers=8", "distill.student.keep_layers=[1, 7]"])
    assert cfg.distill.student.keep_layers == [1, 7]


def test_random_section_only_with_random_model() -> None:
    with pytest.raises(ConfigError, match="teacher.random is only used"):
        load_config(None, ["teacher.random.hidden_size=32"])


def test_heads_must_divide_hidden() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(TINY, ["teacher.random.hidden_size=30"])
    msg = str(info.value)
    assert "teacher.random" in msg
    assert "hidden_size (30)" in msg
    assert "num_attention_heads (4)" in msg


def test_benchmark_seq_lengths_range() -> None:
    with pytest.raises(ConfigError, match="seq_lengths"):
        load_config(None, ["benchmark.seq_lengths=[0, 600]"])
    with pytest.raises(ConfigError, match="seq_lengths"):
        load_config(None, ["benchmark.seq_lengths=[]"])


# ---------------------------------------------------------------------------------------------
# Files


def test_missing_config_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(missing)
    assert str(missing) in str(info.value)
    assert "does not exist" in str(info.value)


def test_config_file_must_hold_a_mapping(tmp_path: Path) -> None:
    path = tmp_path / "list.yaml"
    path.write_text("- project\n- data\n")
    with pytest.raises(ConfigError, match="must hold a mapping of sections, got list"):
        load_config(path)


def test_invalid_yaml_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("project: {name: [unclosed\n")
    with pytest.raises(ConfigError, match="is not valid YAML"):
        load_config(path)


def test_empty_config_file_means_defaults(tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("# nothing here\n")
    assert load_config(path) == load_config(None)


def test_errors_in_a_file_report_dotted_paths(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("distill:\n  alpha: 3\n  student:\n    keep_layer: [0]\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    msg = str(info.value)
    assert "distill.alpha" in msg
    assert "distill.student.keep_layer" in msg


# ---------------------------------------------------------------------------------------------
# CLI


def _bertpress(*args: str) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).with_name("bertpress")
    cmd = [str(exe)] if exe.is_file() else [sys.executable, "-m", "pipeline.cli"]
    env = {**os.environ, "COLUMNS": "250", "NO_COLOR": "1"}
    return subprocess.run(
        [*cmd, *args], cwd=REPO_ROOT, capture_output=True, text=True, env=env, timeout=120
    )


def test_cli_validate_reports_every_problem() -> None:
    proc = _bertpress(
        "validate", "-c", "configs/tiny.yaml", "--set", "distill.alpha=2", "--set", "nope.x=1"
    )
    out = " ".join((proc.stdout + proc.stderr).split())
    assert proc.returncode == 2, out
    assert "config error" in out
    assert "2 problem(s)" in out
    assert "distill.alpha" in out
    assert "nope: unknown key" in out


def test_cli_validate_ok() -> None:
    proc = _bertpress("validate", "-c", "configs/tiny.yaml", "--set", "distill.temperature=3")
    assert proc.returncode == 0, proc.stderr
    assert "temperature: 3.0" in proc.stdout
    assert "is valid" in proc.stdout


def test_cli_run_unknown_stage() -> None:
    proc = _bertpress("run", "nosuchstage", "-c", "configs/tiny.yaml")
    out = " ".join((proc.stdout + proc.stderr).split())
    assert proc.returncode == 2, out
    assert "nosuchstage" in out
    for name in ("all", *STAGE_NAMES):
        assert name in out
    assert STAGE_NAMES == ("data", "finetune", "baseline", "static", "search", "distill", "export", "quantize",
                           "benchmark", "release")


# ---------------------------------------------------------------------------------------------
# Release, gates and embedding outputs


@pytest.mark.parametrize(("overrides", "message"), [
    (["export.embedding_outputs=[pooled, pooled]"], "lists an output twice"),
    (["export.embedding_outputs=[cls]"], "export.embedding_outputs.0"),
    (["release.variant=teacher-int8"], "release.variant"),
    (["release.model_name=has space"], "release.model_name"),
    (["project.name=my project"], "set release.model_name"),
    (["gates.max_metric_drop=-0.1"], "gates.max_metric_drop"),
    (["gates.min_metric=1.5"], "gates.min_metric"),
    (["gates.latency_samples=2"], "gates.latency_samples"),
])
def test_release_and_gate_errors_name_the_field(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def test_registered_name_defaults_to_the_project_and_gates_are_not_hashed() -> None:
    from pipeline.cache import ArtifactStore
    from pipeline.runner import plan

    cfg = load_config(None, ["project.name=demo"])
    assert cfg.registered_model_name == "demo"
    assert load_config(None, ["release.model_name=other"]).registered_model_name == "other"
    # A project name with spaces is fine when nothing is registered.
    assert load_config(None, ["project.name=my project", "release.register_model=false"])
    keys = {n: p.key for n, p in plan(cfg, ArtifactStore(Path("/nonexistent"))).items()}
    stricter = load_config(None, ["project.name=demo", "gates.min_metric=0.99"])
    assert {n: p.key for n, p in plan(stricter, ArtifactStore(Path("/nonexistent"))).items()} == keys


# ---------------------------------------------------------------------------------------------
# Vocabulary budget


@pytest.mark.parametrize(("overrides", "message"), [
    (["distill.trim_vocab.enabled=false", "distill.trim_vocab.max_tokens=500"], "enable trimming or drop"),
    (["distill.trim_vocab.max_tokens=500"], "token-level losses"),  # tiny.yaml has layer losses on
    (["distill.trim_vocab.max_tokens=2"], "distill.trim_vocab.max_tokens"),
    (["distill.trim_vocab.share_rows=true"], "share_rows needs distill.trim_vocab.max_tokens"),
])
def test_vocabulary_budget_errors_name_the_fix(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(TINY, overrides)


def test_vocabulary_budget_with_logit_only_distillation_is_valid() -> None:
    cfg = load_config(TINY, ["distill.trim_vocab.max_tokens=500", "distill.intermediate.hidden_weight=0",
                             "distill.intermediate.attention_weight=0"])
    assert cfg.distill.trim_vocab.max_tokens == 500


def test_shared_rows_keep_the_teachers_pieces_so_layer_losses_are_allowed() -> None:
    cfg = load_config(TINY, ["distill.trim_vocab.max_tokens=500", "distill.trim_vocab.share_rows=true"])
    assert cfg.distill.intermediate.enabled and cfg.distill.trim_vocab.share_rows


# ---------------------------------------------------------------------------------------------
# Search


@pytest.mark.parametrize(("overrides", "message"), [
    (["distill.search.enabled=true"], "moved to the top-level `search:` section"),
    (["search.space.layers=[]"], "search.space.layers needs at least one choice"),
    (["search.space.intermediate_size=[4]"], "intermediate_size >= 8"),
    (["search.budget.objective=speed"], "search.budget.objective"),
    (["search.budget.max_metric_drop=-0.01"], "search.budget.max_metric_drop"),
    (["search.cpu_budget=0"], "search.cpu_budget"),
    (["search.proxy_fraction=1.5"], "search.proxy_fraction"),
    (["search.space.depth=[2]"], "search.space.depth"),
])
def test_search_errors_name_the_field(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(TINY, overrides)


def test_a_switched_off_search_does_not_invalidate_the_student() -> None:
    from pipeline.cache import ArtifactStore
    from pipeline.runner import plan

    def keys(*overrides: str) -> dict[str, str]:
        cfg = load_config(TINY, list(overrides))
        return {n: p.key for n, p in plan(cfg, ArtifactStore(Path("/nonexistent"))).items()}

    base = keys()
    assert keys("search.proxy_trials=3") == base  # off: its settings are not part of any key
    on = keys("search.enabled=true")
    assert on["search"] != base["search"] and on["distill"] != base["distill"]
    assert keys("search.enabled=true", "search.proxy_trials=3")["distill"] != on["distill"]


# ---------------------------------------------------------------------------------------------
# `extends`


def test_extends_merges_sections_over_the_base(tmp_path: Path) -> None:
    (tmp_path / "base.yaml").write_text("project: {name: base, seed: 7}\ndistill: {epochs: 5}\n")
    (tmp_path / "child.yaml").write_text("extends: base.yaml\nproject: {name: child}\n")
    cfg = load_config(tmp_path / "child.yaml", ["distill.alpha=0.25"])
    assert (cfg.project.name, cfg.project.seed, cfg.distill.epochs, cfg.distill.alpha) == ("child", 7, 5, 0.25)


def test_extends_errors_name_the_file(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("extends: missing.yaml\n")
    with pytest.raises(ConfigError, match=r"missing.yaml does not exist \(extended by"):
        load_config(tmp_path / "a.yaml")
    (tmp_path / "b.yaml").write_text("extends: c.yaml\n")
    (tmp_path / "c.yaml").write_text("extends: b.yaml\n")
    with pytest.raises(ConfigError, match="loops back"):
        load_config(tmp_path / "b.yaml")


def test_cli_without_config_uses_the_checkouts_default_yaml(tmp_path: Path) -> None:
    proc = _bertpress("validate")  # from the repo root, like `make`
    assert proc.returncode == 0, proc.stderr
    assert "configs/default.yaml is valid" in proc.stdout
    assert "max_tokens: 7000" in proc.stdout
    elsewhere = subprocess.run([sys.executable, "-m", "pipeline.cli", "validate"], cwd=tmp_path,
                               capture_output=True, text=True, timeout=120,
                               env={**os.environ, "PYTHONPATH": str(REPO_ROOT), "NO_COLOR": "1"})
    assert elsewhere.returncode == 0, elsewhere.stderr
    assert "(defaults) is valid" in elsewhere.stdout


# ---------------------------------------------------------------------------------------------
# The task section


NER = ["task.type=token-classification"]


@pytest.mark.parametrize(("overrides", "message"), [
    (["data.builtin=wnut16"], "data.builtin=wnut16 is a token-classification dataset but task.type is "
                              "sequence-classification; set task.type: token-classification"),
    ([*NER], "data.builtin=rotten_tomatoes is a labelled-text dataset"),
    ([*NER, "data.source=files", "data.files.train=x.jsonl"], "needs data.tags_column"),
    ([*NER, "data.source=hub", "data.hub_name=conll2003"], "needs data.tags_column"),
    ([*NER, "data.builtin=wnut16", "task.stride=62", "data.max_length=64"], "task.stride (62) must be below"),
    ([*NER, "data.builtin=wnut16", "export.embedding_outputs=[pooled]"], "'pooled' needs the [CLS] pooler"),
    ([*NER, "data.builtin=wnut16", "distill.augment.enabled=true"], "distill.augment rewrites texts"),
    ([*NER, "data.builtin=wnut16", "data.text_pair_column=b"], "data.text_pair_column is for sequence"),
    ([*NER, "data.builtin=wnut16", "task.aggregation=best"], "task.aggregation: Input should be 'none'"),
    (["task.type=summarization"], "does not match any of the expected tags: 'sequence-classification', "
                                   "'token-classification'"),
    (["task.stride=8"], "task.stride: unknown key for task.type sequence-classification"),
    ([*NER, "data.builtin=wnut16", "data.tag_scheme=bio"], "data.tag_scheme"),
])
def test_the_task_names_what_it_needs(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, overrides)
    assert message in " ".join(str(info.value).split())


def test_token_classification_configs_that_are_complete() -> None:
    wnut = load_config(None, [*NER, "data.builtin=wnut16"])
    assert wnut.task.type == "token-classification" and wnut.task.stride == 32
    conll = load_config(None, [*NER, "data.source=files", "data.files.train=train.conll"])
    assert conll.data.tags_column is None  # a CoNLL file carries its tags
    rows = load_config(None, [*NER, "data.source=files", "data.files.train=train.jsonl", "data.tags_column=ner_tags"])
    assert rows.data.tokens_column == "tokens"


@pytest.mark.parametrize(("old", "new"), [
    ("quantize.max_accuracy_drop=0.01", "quantize.max_metric_drop"),
    ("gates.max_accuracy_drop=0.01", "gates.max_metric_drop"),
    ("gates.min_accuracy=0.8", "gates.min_metric"),
    ("release.max_runtime_accuracy_gap=0.01", "release.max_runtime_metric_gap"),
])
def test_renamed_keys_name_their_new_name(old: str, new: str) -> None:
    with pytest.raises(ConfigError, match=f"renamed to {new}"):
        load_config(None, [old])


def test_the_task_is_part_of_every_key() -> None:
    from pipeline.cache import ArtifactStore
    from pipeline.runner import plan

    def keys(*overrides: str) -> dict[str, str]:
        cfg = load_config(None, ["data.builtin=wnut16", *NER, *overrides])
        return {n: p.key for n, p in plan(cfg, ArtifactStore(Path("/nonexistent"))).items()}

    base = keys()
    assert all(a != b for a, b in zip(base.values(), keys("task.stride=8").values(), strict=True))
    assert keys("task.aggregation=max")["data"] != base["data"]


# ---------------------------------------------------------------------------------------------
# The teacher's sample (finetune.max_train_samples)


def test_teacher_sample_is_the_rows_the_data_stage_sample_would_keep() -> None:
    from datasets import Dataset

    from stages.tasks import get_task

    teacher_sample = get_task(load_config(TINY)).teacher_sample
    train = Dataset.from_dict({"text": [f"t{i}" for i in range(50)], "label": [i % 3 for i in range(50)]})
    sample = teacher_sample(train, 20, seed=7)
    # the same rows as data.max_train_samples' shuffle-and-select: moving the size trains the same teacher
    assert sample["text"] == train.shuffle(seed=7).select(range(20))["text"]
    assert len(set(sample["text"])) == 20
    assert teacher_sample(train, None, seed=7) is train
    assert teacher_sample(train, 50, seed=7) is train


def test_a_cross_encoder_teacher_samples_whole_queries_as_the_data_stage_would() -> None:
    from datasets import Dataset

    from stages.tasks import get_task
    from stages.tasks.rerank_data import query_sample

    task = get_task(load_config(REPO_ROOT / "configs" / "tiny-rerank.yaml"))
    query_ids = [q for q in range(3, 33) for _ in range(4)]  # 30 queries (ids 3..32), 4 pairs each
    train = Dataset.from_dict({"query_id": query_ids, "label": [float(i % 4 == 0) for i in range(len(query_ids))]})
    sample = task.teacher_sample(train, 10, seed=7)
    kept = sorted(set(sample["query_id"]))
    # the queries at the positions data.max_train_samples' sample takes, each with all 4 of its pairs
    assert kept == [3 + i for i in query_sample(30, 10, 7, "train")]
    assert len(sample) == 40 and all(sample["query_id"].count(q) == 4 for q in kept)
    assert task.sample_units(sample) == 10
    assert task.teacher_sample(train, 30, seed=7) is train


def test_query_samples_are_seeded_per_split() -> None:
    from stages.tasks.rerank_data import query_sample

    assert query_sample(100, None, 7, "train") is None and query_sample(100, 100, 7, "train") is None
    train = query_sample(100, 20, 7, "train")
    assert train == query_sample(100, 20, 7, "train") and train == sorted(set(train)) and len(train) == 20
    # a split's sample is its own: the same cap draws differently per split and per seed
    assert train != query_sample(100, 20, 7, "test") and train != query_sample(100, 20, 8, "train")


def test_teacher_sample_is_refused_where_the_teacher_trains_on_pairs_of_its_own() -> None:
    with pytest.raises(ConfigError, match="data.max_train_samples"):
        load_config(REPO_ROOT / "configs" / "tiny-embeddings.yaml", ["finetune.max_train_samples=10"])
    assert load_config(TINY, ["finetune.max_train_samples=10"]).finetune.max_train_samples == 10


# ---------------------------------------------------------------------------------------------
# 4-bit embedding tables in the INT8 candidates


def test_four_bit_tables_name_their_recipe_and_build_their_own_graph() -> None:
    cfg = load_config(None, ["quantize.candidates=[{method: dynamic}, {method: dynamic, embedding_bits: 4}, "
                             "{method: dynamic, embedding_bits: 4, embedding_block_size: 64}]"])
    names = [c.name for c in cfg.quantize.candidates]
    assert names == ["dynamic", "dynamic-emb4", "dynamic-emb4-block64"]
    assert [c.source_graph for c in cfg.quantize.candidates] == ["fused", "fused_gather", "fused_gather"]


@pytest.mark.parametrize(("candidate", "message"), [
    ("{method: static, embedding_bits: 4}", "needs method: dynamic"),
    ("{method: dynamic, embedding_bits: 4, graph: fused}", "needs method: dynamic and graph: auto"),
    ("{method: dynamic, embedding_bits: 4, embedding_block_size: 48}", "power of two"),
    ("{method: dynamic, embedding_bits: 2}", "embedding_bits"),
])
def test_four_bit_tables_refuse_what_cannot_be_built(candidate: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(None, [f"quantize.candidates=[{candidate}]"])


def test_a_teacher_bundle_needs_a_student_in_the_teacher_space() -> None:
    with pytest.raises(ConfigError, match="release.teacher_bundle .* task.type: sentence-embedding"):
        load_config(TINY, ["release.teacher_bundle=true"])
    with pytest.raises(ConfigError, match="task.output_space: teacher"):
        load_config(REPO_ROOT / "configs" / "tiny-embeddings.yaml",
                    ["release.teacher_bundle=true", "task.output_space=student"])
    assert load_config(REPO_ROOT / "configs" / "tiny-retrieval.yaml").release.teacher_bundle
