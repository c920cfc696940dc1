"""`bertpress` pipeline commands: run, status, validate, ui, promote, retrain (training install).

The torch-free commands (predict, embed, serve) live in bertpress.cli and are added here, so
`bertpress --help` lists everything; bertpress.cli.main is the entry point of both.
Exit codes: 0 ok, 1 a stage failed, 2 bad config or input, 3 a quality gate failed.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.table import Table

from pipeline.config import ConfigError, PipelineConfig, load_config
from pipeline.registry import STAGE_NAMES

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__, pretty_exceptions_enable=False)
# Wide enough for the results table when output goes to a file or CI log.
console = Console(width=None if sys.stdout.isatty() else 160)
# soft_wrap: messages name paths and commands; a hard wrap at 80 columns would break them in logs.
err_console = Console(stderr=True, soft_wrap=True)

DEFAULT_CONFIG = Path("configs") / "default.yaml"


def _default_config(value: Path | None) -> Path | None:
    """No --config: the checkout's configs/default.yaml (what `make` runs), else built-in defaults."""
    if value is None and DEFAULT_CONFIG.is_file():
        return DEFAULT_CONFIG
    return value


ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", "-c", callback=_default_config,
                 help="YAML config (configs/*.yaml). Default: configs/default.yaml when it exists "
                 "under the working directory, else the built-in defaults."),
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="Dotted override, repeatable: --set distill.temperature=4"),
]


def _setup_logging(level: str) -> None:
    # Root at WARNING keeps libraries quiet (onnxruntime's quantizer logs every tensor at INFO);
    # our own loggers ("bertpress.*") use the configured level.
    # A terminal gets rich's columns; a file or CI log gets one plain line per record, so a path
    # in a message is never wrapped across lines (rich wraps at 80 columns without a terminal).
    if sys.stderr.isatty():
        handler: logging.Handler = RichHandler(console=err_console, show_path=False, rich_tracebacks=False)
        handler.setFormatter(logging.Formatter("%(message)s", datefmt="[%X]"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("[%(asctime)s] %(levelname)-7s %(message)s", datefmt="%X"))
    logging.basicConfig(level=logging.WARNING, handlers=[handler], force=True)
    logging.getLogger("bertpress").setLevel(level)


def _load(config: Path | None, overrides: list[str] | None) -> PipelineConfig:
    from pipeline.upstream import resolve_teacher

    cfg = resolve_teacher(load_config(config, overrides or []))
    _setup_logging(cfg.runtime.log_level)
    return cfg


def outcomes_table(outcomes, title: str = "bertpress") -> Table:
    table = Table(title=title)
    for col in ("stage", "result", "seconds", "key", "output directory"):
        table.add_column(col)
    for o in outcomes:
        table.add_row(o.name, "cached" if o.cached else "ran", f"{o.seconds:.1f}", o.key, str(o.path))
    return table


@app.command()
def run(
    stage: Annotated[str, typer.Argument(help=f"One of: all, {', '.join(STAGE_NAMES)}")] = "all",
    config: ConfigOpt = None,
    set_: SetOpt = None,
    force: Annotated[bool, typer.Option("--force", help="Rerun the stage(s) even if cached.")] = False,
) -> None:
    """Run a stage (and any missing or stale stage upstream of it), or the whole pipeline."""
    if stage != "all" and stage not in STAGE_NAMES:
        raise ConfigError(f"unknown stage {stage!r}; choose one of: all, {', '.join(STAGE_NAMES)}")
    cfg = _load(config, set_)
    from pipeline.runner import Runner  # after validation: nothing heavy before the config is ok

    outcomes = Runner(cfg, config).run(stage, force=force)
    from pipeline import distributed

    if not distributed.is_main():
        return  # rank 0 reports for everyone
    console.print(outcomes_table(outcomes, f"bertpress {stage}"))
    declared = {name: o.output(name) for o in outcomes for name in o.outputs}
    if declared.get("benchmark_report") is not None:
        from pipeline.report import results_table

        console.print(results_table(declared["benchmark_report"]))
        console.print(f"Full report: {declared['results_table']}, plot: {declared['pareto_plot']}")
    if declared.get("search_result") is not None:
        search = json.loads(declared["search_result"].read_text())
        if search.get("enabled"):
            style = "green" if search["feasible"] else "bold red"
            console.print(f"[{style}]Search:[/{style}] {escape(search['message'])}")
    if declared.get("bundle") is not None:
        console.print(f"Bundle: {declared['bundle']}   try: bertpress predict {declared['bundle']} "
                      "\"a text\"   promote: `make promote`")
    console.print(f"Artifacts: {cfg.runtime.artifacts_dir.resolve()}   MLflow UI: `make ui`")


@app.command()
def status(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Each stage: done / stale / missing, its key, output directory and headline metrics."""
    cfg = _load(config, set_)
    from pipeline.cache import ArtifactStore
    from pipeline.runner import plan

    store = ArtifactStore(cfg.runtime.artifacts_dir)
    rows = [
        {
            "stage": name,
            "status": item.status,
            "key": item.key,
            "path": str(store.path(name, item.key)),
            "metrics": item.artifact.metrics if item.artifact else {},
        }
        for name, item in plan(cfg, store).items()
    ]
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = Table(title="bertpress status")
    for col in ("stage", "status", "key", "output directory", "headline metrics"):
        table.add_column(col)
    colour = {"done": "green", "stale": "yellow", "missing": "red"}
    for r in rows:
        shown = ", ".join(f"{k}={v:.4g}" for k, v in list(r["metrics"].items())[:4])
        table.add_row(r["stage"], f"[{colour[r['status']]}]{r['status']}", r["key"], r["path"], shown)
    console.print(table)


@app.command()
def validate(config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """Check a config (and overrides) without running anything; print the resolved config."""
    import yaml

    cfg = _load(config, set_)
    console.print(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    console.print(f"[green]{config or '(defaults)'} is valid")


@app.command()
def ui(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1.")] = 5000,
) -> None:
    """Open the MLflow UI on 127.0.0.1 for this config's tracking store."""
    cfg = _load(config, set_)
    from pipeline.tracking import resolve_tracking_uri

    uri = resolve_tracking_uri(cfg.runtime.tracking_uri, cfg.runtime.artifacts_dir)
    console.print(f"MLflow UI for {uri} at http://127.0.0.1:{port}")
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri,
           "--host", "127.0.0.1", "--port", str(port)]
    raise typer.Exit(subprocess.call(cmd, env=os.environ.copy()))


# -- release gates --------------------------------------------------------------------------------
GATE_FAILED = 3


def _print_gates(outcome) -> None:
    table = Table(title=f"gates: {outcome.name} v{outcome.version}")
    for col in ("gate", "result", "detail"):
        table.add_column(col)
    for r in outcome.results:
        table.add_row(r.gate, "[green]pass" if r.passed else "[bold red]FAIL", r.detail)
    console.print(table)
    if outcome.already_champion and outcome.promoted:
        console.print(f"v{outcome.version} is already the champion")
    elif outcome.already_champion:
        console.print(f"[bold red]gate failed:[/] v{outcome.version} is the champion but fails the "
                      "floors above; aliases unchanged")
    elif outcome.promoted:
        console.print(f"[green]promoted {outcome.name} v{outcome.version} to alias 'champion'")
    else:
        console.print(f"[bold red]gate failed:[/] {outcome.name} v{outcome.version} stays a candidate; "
                      "the champion is unchanged")
    console.print(f"report: {outcome.report_path}")


@app.command()
def promote(config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """Check the released candidate against the champion and the floors (`gates:` in the config);
    move alias 'champion' to it only if every gate passes. Exit code 3 when a gate fails."""
    cfg = _load(config, set_)
    from pipeline.promote import promote as run_promote

    outcome = run_promote(cfg)
    _print_gates(outcome)
    if not outcome.promoted:
        raise typer.Exit(GATE_FAILED)


@app.command()
def retrain(config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """For CI: run every stage through release (cached where nothing changed), then the gates.
    Exit code: 1 stage failure, 2 config error, 3 gate failed, 0 promoted (or already champion)."""
    cfg = _load(config, set_)
    from pipeline.promote import promote as run_promote
    from pipeline.registry import PRODUCER
    from pipeline.runner import Runner

    outcomes = Runner(cfg, config).run(PRODUCER["bundle"])
    console.print(outcomes_table(outcomes, "bertpress retrain"))
    outcome = run_promote(cfg)
    _print_gates(outcome)
    if not outcome.promoted:
        raise typer.Exit(GATE_FAILED)


def build_app() -> typer.Typer:
    """The full command set (the `bertpress.commands` entry point): pipeline + runtime commands."""
    from bertpress.cli import register

    return register(app)


def main() -> None:
    from bertpress.cli import run_app

    run_app(build_app())


if __name__ == "__main__":
    main()
