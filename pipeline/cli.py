"""`bertpress` command line.

Pipeline: run, status, validate, ui, promote, retrain (training install).
Inference, torch-free (onnxruntime + tokenizers + numpy): predict, embed, serve.
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
from rich.table import Table

from pipeline.config import ConfigError, PipelineConfig, load_config
from pipeline.registry import STAGE_NAMES
from pipeline.stage import StageError

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__, pretty_exceptions_enable=False)
# Wide enough for the results table when output goes to a file or CI log.
console = Console(width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True)

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
    bench = next((o for o in outcomes if o.name == "benchmark"), None)
    if bench is not None and (bench.path / "benchmark.json").is_file():
        from pipeline.report import results_table

        console.print(results_table(bench.path / "benchmark.json"))
        console.print(f"Full report: {bench.path / 'results.md'}, plot: {bench.path / 'accuracy_vs_latency.png'}")
    release = next((o for o in outcomes if o.name == "release"), None)
    if release is not None:
        console.print(f"Bundle: {release.path / 'bundle'}   try: bertpress predict {release.path / 'bundle'} "
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
    from pipeline.runner import Runner

    outcomes = Runner(cfg, config).run("release")
    console.print(outcomes_table(outcomes, "bertpress retrain"))
    outcome = run_promote(cfg)
    _print_gates(outcome)
    if not outcome.promoted:
        raise typer.Exit(GATE_FAILED)


# -- inference (torch-free) -----------------------------------------------------------------------
SourceArg = Annotated[str, typer.Argument(help="Bundle directory or registry URI (models:/name@champion).")]
TextsArg = Annotated[list[str] | None, typer.Argument(help="Texts; '-' reads one text per line from stdin.")]
InputOpt = Annotated[Path | None, typer.Option("--input", "-i", help="A .csv/.tsv/.jsonl/.txt file of texts.")]
ColumnOpt = Annotated[str, typer.Option(help="Text column (CSV) or field (JSONL) in --input.")]
OutputOpt = Annotated[Path | None, typer.Option("--output", "-o", help="Write here instead of stdout.")]
BatchOpt = Annotated[int, typer.Option(min=1, help="Texts per onnxruntime call.")]
ThreadsOpt = Annotated[int, typer.Option(min=0, help="onnxruntime intra-op threads; 0 = all cores.")]
TrackingOpt = Annotated[str | None, typer.Option(
    help="Registry for models:/ sources. Default: $MLFLOW_TRACKING_URI, else the pipeline's "
         "store artifacts/mlflow.db when it exists.")]


def _open_model(source: str, threads: int, tracking_uri: str | None = None):
    from bertpress.runtime import Model

    if source.startswith("models:/") and not tracking_uri and not os.environ.get("MLFLOW_TRACKING_URI"):
        local = Path("artifacts") / "mlflow.db"
        if local.is_file():
            tracking_uri = f"sqlite:///{local.resolve()}"
    return Model.load(source, tracking_uri=tracking_uri, threads=threads)


@app.command()
def predict(
    source: SourceArg,
    texts: TextsArg = None,
    input_file: InputOpt = None,
    text_column: ColumnOpt = "text",
    output: OutputOpt = None,
    fmt: Annotated[str, typer.Option("--format", help="jsonl or csv.")] = "jsonl",
    batch_size: BatchOpt = 32,
    threads: ThreadsOpt = 0,
    tracking_uri: TrackingOpt = None,
) -> None:
    """Label texts with a released model: one JSONL line (or CSV row) per text with the label,
    its probability and every label's probability."""
    from bertpress.textio import InputError, read_texts, write_predictions

    if fmt not in ("jsonl", "csv"):
        raise InputError(f"--format {fmt!r}: use jsonl or csv")
    items = read_texts(texts or [], input_file, text_column)
    model = _open_model(source, threads, tracking_uri)
    rows = [{"text": t} | p for t, p in zip(items, model.predict(items, batch_size), strict=True)]
    with _output(output) as out:
        write_predictions(rows, model.labels, fmt, out)


@app.command()
def embed(
    source: SourceArg,
    texts: TextsArg = None,
    input_file: InputOpt = None,
    text_column: ColumnOpt = "text",
    kind: Annotated[str, typer.Option(help="mean, pooled, sequence or hidden_states.")] = "mean",
    normalize: Annotated[bool, typer.Option(help="L2-normalize each vector.")] = False,
    output: OutputOpt = None,
    fmt: Annotated[str, typer.Option("--format", help="jsonl, or npy (mean/pooled only; needs --output).")] = "jsonl",
    batch_size: BatchOpt = 32,
    threads: ThreadsOpt = 0,
    tracking_uri: TrackingOpt = None,
) -> None:
    """Embed texts with a released model: pooled ([CLS] after the pooler), mean (masked mean of
    the sequence output), sequence (per token) or hidden_states (every layer, per token)."""
    import numpy as np

    from bertpress.embeddings import EMBEDDING_KINDS
    from bertpress.textio import InputError, read_texts

    if kind not in EMBEDDING_KINDS:
        raise InputError(f"unknown embedding kind {kind!r}; choose one of {', '.join(EMBEDDING_KINDS)}")
    if fmt not in ("jsonl", "npy"):
        raise InputError(f"--format {fmt!r}: use jsonl or npy")
    if fmt == "npy" and (kind not in ("mean", "pooled") or output is None):
        raise InputError("--format npy needs --kind mean or pooled (one vector per text) and --output FILE")
    items = read_texts(texts or [], input_file, text_column)
    vectors = _open_model(source, threads, tracking_uri).embed(items, kind=kind, batch_size=batch_size, normalize=normalize)
    if fmt == "npy":
        np.save(output, vectors)
        err_console.print(f"{len(items)} x {vectors.shape[1]} {kind} embeddings -> {output}")
        return
    with _output(output) as out:
        for text, vector in zip(items, vectors, strict=True):
            out.write(json.dumps({"text": text, "kind": kind, "embedding": vector.tolist()}) + "\n")


@app.command()
def serve(
    source: SourceArg,
    host: Annotated[str, typer.Option(help="Interface to bind; 127.0.0.1 keeps it local.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535)] = 8000,
    max_batch: Annotated[int, typer.Option(min=1, help="Most texts per request.")] = 64,
    max_text_chars: Annotated[int, typer.Option(min=1, help="Longest text accepted.")] = 10_000,
    max_body_bytes: Annotated[int, typer.Option(min=1, help="Largest request body.")] = 1_000_000,
    threads: ThreadsOpt = 0,
    tracking_uri: TrackingOpt = None,
) -> None:
    """Serve a released model over HTTP: /predict, /embed, /health, /metadata."""
    from bertpress.serve import Limits
    from bertpress.serve import serve as run_server

    model = _open_model(source, threads, tracking_uri)
    version = model.path.parent.name.removeprefix("v") if source.startswith("models:/") else None
    err_console.print(f"serving {model.path} on http://{host}:{port} (POST /predict, /embed)")
    run_server(model, host, port, Limits(max_batch, max_text_chars, max_body_bytes), version)


class _output:
    """stdout, or a file written whole (a failed run leaves no half-written results file)."""

    def __init__(self, path: Path | None):
        self.path = path

    def __enter__(self):
        import io

        self.buffer = sys.stdout if self.path is None else io.StringIO()
        return self.buffer

    def __exit__(self, exc_type, *_):
        if self.path is not None and exc_type is None:
            tmp = self.path.with_name(f".{self.path.name}.tmp")
            tmp.write_text(self.buffer.getvalue())
            tmp.replace(self.path)
            err_console.print(f"wrote {self.path}")
        return False


def main() -> None:
    try:
        # Without standalone mode click returns (not raises) the code of a typer.Exit.
        code = app(standalone_mode=False)
        if isinstance(code, int) and code:
            sys.exit(code)
    except ConfigError as exc:
        err_console.print(f"[bold red]config error:[/] {exc}")
        sys.exit(2)
    except StageError as exc:
        err_console.print(f"[bold red]stage failed:[/] {exc}")
        sys.exit(1)
    except ValueError as exc:
        # Bad input to predict/embed/serve: a missing bundle, an unreadable file, a wrong kind.
        from bertpress.bundle import BundleError
        from bertpress.textio import InputError

        if not isinstance(exc, BundleError | InputError):
            raise
        err_console.print(f"[bold red]error:[/] {exc}")
        sys.exit(2)
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
