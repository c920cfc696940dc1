"""`teacher.model: finetuned:<config>`: a run starts from the teacher another config fine-tuned
(the re-ranker from the QA teacher), resolved through that config's cache before any work."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import REPO_ROOT, TINY_RERANK, cli_status, run_cli
from pipeline.config import ConfigError, load_config
from pipeline.upstream import resolve_teacher


def upstream_config(tmp_path: Path, artifacts: Path, name: str = "upstream.yaml") -> Path:
    """tiny-rerank.yaml with its artifacts where a run of it left them."""
    path = tmp_path / name
    path.write_text(f"extends: {REPO_ROOT / TINY_RERANK}\nruntime:\n  artifacts_dir: {artifacts}\n")
    return path


def referring(path: Path):
    return load_config(REPO_ROOT / TINY_RERANK, [f"teacher.model=finetuned:{path}", "teacher.random=null"])


def test_other_teachers_are_left_as_they_are() -> None:
    cfg = load_config(REPO_ROOT / TINY_RERANK)
    assert resolve_teacher(cfg) is cfg


def test_a_missing_config_is_named(tmp_path) -> None:
    with pytest.raises(ConfigError, match=r"config file .*nowhere\.yaml does not exist"):
        resolve_teacher(referring(tmp_path / "nowhere.yaml"))


def test_an_unfinished_teacher_names_the_command_that_makes_it(tmp_path) -> None:
    path = upstream_config(tmp_path, tmp_path / "empty-artifacts")
    with pytest.raises(ConfigError, match=rf"not trained yet .*make finetune CONFIG={path}"):
        resolve_teacher(referring(path))


def test_references_that_loop_back_are_refused(tmp_path) -> None:
    """a.yaml starts from b.yaml's teacher and b.yaml from a.yaml's: no teacher to start from."""
    for name, other in (("a.yaml", "b.yaml"), ("b.yaml", "a.yaml")):
        (tmp_path / name).write_text(f"extends: {REPO_ROOT / TINY_RERANK}\nteacher:\n"
                                     f"  model: finetuned:{tmp_path / other}\n  random: null\n")
    with pytest.raises(ConfigError, match=r"loop back to .*a\.yaml"):
        resolve_teacher(referring(tmp_path / "a.yaml"))


def test_a_finished_teacher_resolves_to_its_model_directory(tiny_rerank_run, tmp_path) -> None:
    finetune = cli_status(tiny_rerank_run, config=TINY_RERANK)["finetune"]
    path = upstream_config(tmp_path, tiny_rerank_run / "artifacts")
    resolved = resolve_teacher(referring(path))
    assert Path(resolved.teacher.model) == Path(finetune["path"]) / "model"
    assert (Path(resolved.teacher.model) / "config.json").is_file()
    # through the CLI, before any stage: the data stage plans with the resolved teacher
    rows = cli_status(tmp_path / "downstream", "--set", f"teacher.model=finetuned:{path}", "--set",
                      "teacher.random=null", config=TINY_RERANK)
    assert rows["data"]["status"] == "missing"


def test_an_unfinished_teacher_stops_the_cli_before_any_work(tmp_path) -> None:
    path = upstream_config(tmp_path, tmp_path / "empty-artifacts")
    proc = run_cli("run", "data", "--set", f"teacher.model=finetuned:{path}", "--set", "teacher.random=null",
                   root=tmp_path / "downstream", config=TINY_RERANK, check=False)
    assert proc.returncode != 0
    said = "".join((proc.stdout + proc.stderr).split())  # the console wraps long lines
    assert "Fine-tuneitfirst:makefinetuneCONFIG=" in said and "nottrainedyet" in said
    assert not (tmp_path / "downstream" / "artifacts").exists()
