"""`bertpress` command line: run, status, validate, ui."""

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
from rich.table import Table

from pipeline.config import ConfigError, PipelineConfig, load_config
from pipeline.registry import STAGE_NAMES
from pipeline.stage import StageError

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__, pretty_exceptions_enable=False)
# Wide enough for the results table when output goes to a file or CI log.
console = Console(width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True)

ConfigOpt = Annotated[
    Path | None, typer.Option("--config", "-c", help="YAML config (configs/*.yaml).")
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="Dotted override, repeatable: --set distill.temperature=4"),
]


def _setup_logging(level: str) -> None:
    # Root at WARNING keeps libraries quiet (onnxruntime's quantizer logs every tensor at INFO);
    # our own loggers ("bertpress.*") use the configured level.
    logging.basicConfig(
        level=logging.WARNING,
        format="%(message)s",
        datefmt="[%X]",
        handlers=[RichHandler(console=err_console, show_path=False, rich_tracebacks=False)],
        force=True,
    )
    logging.getLogger("bertpress").setLevel(level)


def _load(config: Path | None, overrides: list[str] | None) -> PipelineConfig:
    cfg = load_config(config, overrides or [])
    _setup_logging(cfg.runtime.log_level)
    return cfg


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
    table = Table(title=f"bertpress {stage}")
    for col in ("stage", "result", "seconds", "key", "output directory"):
        table.add_column(col)
    for o in outcomes:
        table.add_row(o.name, "cached" if o.cached else "ran", f"{o.seconds:.1f}", o.key, str(o.path))
    console.print(table)
    bench = next((o for o in outcomes if o.name == "benchmark"), None)
    if bench is not None and (bench.path / "benchmark.json").is_file():
        from pipeline.report import results_table

        console.print(results_table(bench.path / "benchmark.json"))
        console.print(f"Full report: {bench.path / 'results.md'}, plot: {bench.path / 'accuracy_vs_latency.png'}")
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


def main() -> None:
    try:
        app(standalone_mode=False)
    except ConfigError as exc:
        err_console.print(f"[bold red]config error:[/] {exc}")
        sys.exit(2)
    except StageError as exc:
        err_console.print(f"[bold red]stage failed:[/] {exc}")
        sys.exit(1)
    except (typer.Exit, SystemExit) as exc:
        code = getattr(exc, "exit_code", getattr(exc, "code", 0))
        sys.exit(code or 0)
    except typer.Abort:
        sys.exit(130)
    except Exception as exc:  # click usage errors come through here in non-standalone mode
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        raise


if __name__ == "__main__":
    main()
