"""`bertpress` command line: the torch-free commands, and the entry point of all of them.

predict, embed and serve need only the runtime (onnxruntime + tokenizers + numpy). The pipeline's
commands (run, status, promote, ...) come from the training install, which registers them under
the `bertpress.commands` entry point; they are loaded only when one of them is asked for, so a
runtime command never imports training code.
Exit codes: 0 ok, 1 a stage failed, 2 bad config or input, 3 a quality gate failed.
"""

from __future__ import annotations

import json
import os
import sys
from importlib.metadata import entry_points
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from bertpress.errors import BertpressError, InputError

RUNTIME_COMMANDS = ("predict", "embed", "index", "search", "rerank", "serve")
# What only the training install has: a pipeline command run without it names the extras to add.
TRAINING_MODULES = {"torch", "transformers", "datasets", "mlflow", "optimum", "optuna", "onnx", "accelerate",
                    "seqeval", "matplotlib"}
# soft_wrap: messages name paths and commands; a hard wrap at 80 columns would break them in logs.
err_console = Console(stderr=True, soft_wrap=True)

SourceArg = Annotated[str, typer.Argument(help="Bundle directory or registry URI (models:/name@champion).")]
TextsArg = Annotated[list[str] | None, typer.Argument(help="Texts; '-' reads one text per line from stdin.")]
InputOpt = Annotated[Path | None, typer.Option("--input", "-i", help="A .csv/.tsv/.jsonl/.txt file of inputs.")]
ColumnOpt = Annotated[str, typer.Option(help="Text column (CSV) or field (JSONL) in --input; in JSONL it "
                                             "may hold a list of words (entity recognition).")]
OutputOpt = Annotated[Path | None, typer.Option("--output", "-o", help="Write here instead of stdout.")]
BatchOpt = Annotated[int, typer.Option(min=1, help="Inputs per onnxruntime call.")]
ThreadsOpt = Annotated[int, typer.Option(min=0, help="onnxruntime intra-op threads; 0 = all cores.")]
TrackingOpt = Annotated[str | None, typer.Option(
    help="Registry for models:/ sources. Default: $MLFLOW_TRACKING_URI, else the pipeline's "
         "store artifacts/mlflow.db when it exists.")]


def open_model(source: str, threads: int, tracking_uri: str | None = None):
    from bertpress.runtime import Model

    if source.startswith("models:/") and not tracking_uri and not os.environ.get("MLFLOW_TRACKING_URI"):
        local = Path("artifacts") / "mlflow.db"
        if local.is_file():
            tracking_uri = f"sqlite:///{local.resolve()}"
    return Model.load(source, tracking_uri=tracking_uri, threads=threads)


def predict(
    source: SourceArg,
    texts: TextsArg = None,
    input_file: InputOpt = None,
    text_column: ColumnOpt = "text",
    pair: Annotated[list[str] | None, typer.Option(
        help="Text-pair models: the second text of each argument text, repeated in order.")] = None,
    pair_column: Annotated[str | None, typer.Option(
        help="Text-pair models: the second text's column/field in --input.")] = None,
    words: Annotated[bool, typer.Option(
        "--words", help="Entity recognition: the inputs are pre-split on whitespace into words.")] = False,
    aggregation: Annotated[str | None, typer.Option(
        help="Entity recognition: none, simple, first, average or max (default: the bundle's).")] = None,
    question: Annotated[str | None, typer.Option(
        help="Question answering: the question (with --context); files: a 'question' and a "
        "'context' field per row (--text-column / --pair-column rename them).")] = None,
    context: Annotated[str | None, typer.Option(help="Question answering: the passage to answer from.")] = None,
    top_k: Annotated[int, typer.Option(min=1, help="Question answering: answers per question.")] = 1,
    max_answer_length: Annotated[int | None, typer.Option(
        min=1, help="Question answering: longest answer in tokens (default: the bundle's).")] = None,
    output: OutputOpt = None,
    fmt: Annotated[str, typer.Option("--format", help="jsonl or csv.")] = "jsonl",
    batch_size: BatchOpt = 32,
    threads: ThreadsOpt = 0,
    tracking_uri: TrackingOpt = None,
) -> None:
    """Predict with a released model, one JSONL line (or CSV row) per input: the label and
    probabilities (classification), the entities with character offsets (entity recognition), or
    the answer span with character offsets into the context (question answering)."""
    from bertpress.textio import read_inputs, write_answers, write_predictions

    if fmt not in ("jsonl", "csv"):
        raise InputError(f"--format {fmt!r}: use jsonl or csv")
    model = open_model(source, threads, tracking_uri)
    if fmt == "csv" and model.task == "sentence-embedding":
        raise InputError("--format csv has no room for vectors: use --format jsonl (or Model.encode in Python)")
    if model.task == "question-answering":
        items = _questions(texts, input_file, text_column, pair_column, question, context)
        options = {"top_k": top_k} | ({"max_answer_length": max_answer_length} if max_answer_length else {})
        predictions = model.predict(items, batch_size, **options)
        with _output(output) as out:
            write_answers([{"question": q} | p for (q, _), p in zip(items, predictions, strict=True)], fmt, out)
        return
    if question is not None or context is not None:
        raise InputError(f"--question / --context are for question-answering bundles; this one is {model.task}")
    if pair_column is None and not pair and (model.metadata.get("text_pair") or model.task == "cross-encoder"):
        pair_column = "text_pair"
    items = read_inputs(texts or [], input_file, text_column, pairs=pair, pair_column=pair_column,
                        split_words=words)
    options = {"aggregation": aggregation} if aggregation else {}
    if options and model.task != "token-classification":
        raise InputError(f"--aggregation applies to entity recognition bundles; this one is {model.task}")
    predictions = model.predict(items, batch_size, **options)
    rows = [{"text": list(t) if not isinstance(t, str) else t} | p
            for t, p in zip(items, predictions, strict=True)]
    with _output(output) as out:
        write_predictions(rows, model.labels, fmt, out)


def _questions(texts: list[str] | None, input_file: Path | None, text_column: str, pair_column: str | None,
               question: str | None, context: str | None) -> list[tuple[str, str]]:
    """(question, context) pairs from --question/--context, or from a file's rows."""
    from bertpress.textio import read_inputs

    if question is not None or context is not None:
        if question is None or context is None or texts or input_file is not None:
            raise InputError("give --question and --context together (or --input FILE with question "
                             "and context fields), not with other inputs")
        return [(question, context)]
    if texts:
        raise InputError("a question-answering bundle reads --question Q --context C, or --input FILE "
                         "(.jsonl/.csv rows with 'question' and 'context')")
    column = "question" if text_column == "text" else text_column
    return read_inputs([], input_file, column, pair_column=pair_column or "context")


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
    from bertpress.textio import read_texts

    if kind not in EMBEDDING_KINDS:
        raise InputError(f"unknown embedding kind {kind!r}; choose one of {', '.join(EMBEDDING_KINDS)}")
    if fmt not in ("jsonl", "npy"):
        raise InputError(f"--format {fmt!r}: use jsonl or npy")
    if fmt == "npy" and (kind not in ("mean", "pooled") or output is None):
        raise InputError("--format npy needs --kind mean or pooled (one vector per text) and --output FILE")
    items = read_texts(texts or [], input_file, text_column)
    vectors = open_model(source, threads, tracking_uri).embed(items, kind=kind, batch_size=batch_size,
                                                              normalize=normalize)
    if fmt == "npy":
        np.save(output, vectors)
        err_console.print(f"{len(items)} x {vectors.shape[1]} {kind} embeddings -> {output}")
        return
    with _output(output) as out:
        for text, vector in zip(items, vectors, strict=True):
            out.write(json.dumps({"text": text, "kind": kind, "embedding": vector.tolist()}) + "\n")


def index(
    source: SourceArg,
    out: Annotated[Path, typer.Option("--out", help="Index directory: created, or added to when it holds one.")],
    input_file: InputOpt = None,
    text_column: ColumnOpt = "text",
    id_column: Annotated[str, typer.Option(help="Document id field/column (missing: FILE-STEM:ROW).")] = "id",
    rebuild: Annotated[bool, typer.Option("--rebuild", help="Re-embed the documents the index holds with "
                                          "this bundle (after a new release); --input then adds more.")] = False,
    hnsw: Annotated[bool, typer.Option("--hnsw", help="Approximate HNSW graph instead of the exact inner "
                                       "product (for millions of documents).")] = False,
    batch_size: BatchOpt = 64,
    threads: ThreadsOpt = 0,
    tracking_uri: TrackingOpt = None,
) -> None:
    """Embed a corpus (.jsonl/.csv/.tsv/.txt) with a bundle into a FAISS index that stores ids,
    texts and metadata beside the vectors; run again with more documents to add them."""
    from bertpress import index as vindex

    exists = (out / vindex.META_FILE).is_file()
    if not exists and out.exists() and any(out.iterdir()):
        raise InputError(f"{out} exists and is not a bertpress index: choose a new --out directory")
    if input_file is None and not rebuild:
        raise InputError("nothing to index: give --input CORPUS (.jsonl, .csv, .tsv or .txt), or "
                         "--rebuild to re-embed an existing index's documents")
    documents = vindex.read_documents(input_file, text_column, id_column) if input_file else []
    model = open_model(source, threads, tracking_uri)
    if rebuild:
        if not exists:
            raise InputError(f"--rebuild needs an existing index at {out}")
        built, seconds = vindex.rebuild(model, out, batch_size, kind="hnsw" if hnsw else None)
        err_console.print(f"re-embedded {len(built)} documents with {model.path} in {seconds:.1f} s")
    elif exists:
        built = vindex.VectorIndex.open(out)
        if hnsw and built.meta["kind"] != "hnsw":
            raise InputError(f"{out} is an exact index; --hnsw applies when it is built: add --rebuild")
    else:
        built, seconds = vindex.build(model, documents, out, "hnsw" if hnsw else "exact", batch_size)
        err_console.print(f"indexed {len(built)} documents in {seconds:.1f} s -> {out} "
                          f"({built.meta['kind']}, {built.meta['dim']}-d)")
        return
    if documents:
        seconds = built.add(model, documents, batch_size)
        built.save()
        err_console.print(f"added {len(documents)} documents in {seconds:.1f} s -> {out} ({len(built)} in all)")
    elif rebuild:
        built.save()


def search(
    index_dir: Annotated[Path, typer.Argument(help="An index made by `bertpress index`.")],
    queries: TextsArg = None,
    k: Annotated[int, typer.Option("-k", "--top-k", min=1, help="Hits per query.")] = 10,
    bundle: Annotated[str | None, typer.Option(help="The bundle that embeds queries (default: the one "
                                               "that built the index, where it was; or one that shares its "
                                               "embedding space: a student over its teacher's index).")] = None,
    input_file: InputOpt = None,
    text_column: ColumnOpt = "text",
    rerank: Annotated[str | None, typer.Option(help="A cross-encoder bundle that re-ranks the retrieved "
                                               "candidates (score = its relevance score).")] = None,
    rerank_depth: Annotated[int | None, typer.Option(min=1, help="Candidates retrieved for the re-ranker "
                                                     "(default: the re-ranker's rerank_depth, else 50).")] = None,
    output: OutputOpt = None,
    threads: ThreadsOpt = 0,
    tracking_uri: TrackingOpt = None,
) -> None:
    """Top-k documents of an index for each query: one JSONL line per query with its hits
    (rank, id, score = cosine, text, metadata). With --rerank, the retriever's top candidates are
    re-ordered by a cross-encoder (score = its score; retriever_rank / retriever_score kept)."""
    from bertpress.index import VectorIndex
    from bertpress.textio import read_texts

    found = VectorIndex.open(index_dir)
    items = read_texts(queries or [], input_file, text_column)
    model = open_model(bundle or found.meta["bundle"]["path"], threads, tracking_uri)
    if rerank is None:
        if rerank_depth is not None:
            raise InputError("--rerank-depth goes with --rerank BUNDLE (a cross-encoder)")
        hits = found.search(model, items, k)
    else:
        from bertpress.tasks.cross_encoder import rerank_hits

        reranker = open_model(rerank, threads, tracking_uri)
        depth = max(k, rerank_depth or int(reranker.metadata.get("rerank_depth", 50)))
        hits = [rerank_hits(reranker, query, row, k) for query, row in zip(items, found.search(model, items, depth),
                                                                           strict=True)]
    with _output(output) as out:
        for query, row in zip(items, hits, strict=True):
            out.write(json.dumps({"query": query, "hits": row}, ensure_ascii=False) + "\n")


def rerank(
    source: SourceArg,
    passages: Annotated[list[str] | None, typer.Argument(help="Candidate passages (or --input FILE).")] = None,
    query: Annotated[str | None, typer.Option(help="The query to order the candidates for.")] = None,
    input_file: Annotated[Path | None, typer.Option("--input", "-i", help="Candidates: .jsonl/.csv/.tsv rows "
                                                    "(other fields are kept) or .txt (one per line).")] = None,
    text_column: ColumnOpt = "text",
    top_k: Annotated[int | None, typer.Option(min=1, help="Keep the best k (default: all).")] = None,
    retriever_field: Annotated[str, typer.Option(help="The candidates' field holding the first-stage "
                                                 "retriever's score (as `search` writes it), fused with the "
                                                 "cross-encoder's when the bundle was trained so; '' to "
                                                 "ignore it.")] = "score",
    output: OutputOpt = None,
    batch_size: BatchOpt = 32,
    threads: ThreadsOpt = 0,
    tracking_uri: TrackingOpt = None,
) -> None:
    """Re-rank candidate passages for a query with a cross-encoder bundle: one JSONL line per
    candidate, best first (rank, score, the candidate's fields)."""
    from bertpress.textio import read_records

    if query is None:
        raise InputError("rerank needs --query QUERY (the text the candidates are ordered for)")
    if input_file is not None and passages:
        raise InputError("give the candidates as arguments or --input FILE, not both")
    if input_file is None and not passages:
        raise InputError("no candidates: pass passages as arguments or --input FILE (.jsonl, .csv, .tsv, .txt)")
    records = read_records(input_file, text_column) if input_file else [{text_column: p} for p in passages or []]
    texts = []
    for number, record in enumerate(records, 1):
        if not isinstance(record.get(text_column), str):
            raise InputError(f"candidate {number} has no text field {text_column!r} (fields: {sorted(record)}); "
                             "pass --text-column NAME")
        texts.append(record[text_column])
    model = open_model(source, threads, tracking_uri)
    if model.task != "cross-encoder":
        raise InputError(f"rerank needs a cross-encoder bundle; {model.path} is {model.task}")
    retriever_scores = _retriever_scores(records, retriever_field)
    ranked = model.head.rerank(query, texts, top_k=top_k, batch_size=batch_size, retriever_scores=retriever_scores)
    with _output(output) as out:
        for r in ranked:
            record = records[r["index"]]
            row = {k: v for k, v in r.items() if k not in ("index", "text")}  # rank, score (, fused_score)
            if retriever_scores:
                row["retriever_score"] = record[retriever_field]
            # row holds rank and score already: a candidate's own score never overwrites them
            row |= {k: v for k, v in record.items() if k not in row and not (retriever_scores and k == retriever_field)}
            out.write(json.dumps(row, ensure_ascii=False) + "\n")


def _retriever_scores(records: list[dict], field: str) -> list[float] | None:
    """The candidates' first-stage scores from `field`, or None when no candidate has one; a field
    that only some candidates carry, or that is not a number, cannot be fused and is an error."""
    if not field:
        return None
    if not any(field in r for r in records):
        return None
    for number, record in enumerate(records, 1):
        value = record.get(field)
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise InputError(f"candidate {number}: {field!r} is {value!r}, not the retriever's score that other "
                             f"candidates carry. Give every candidate a numeric {field!r}, name the score field "
                             "with --retriever-field NAME, or ignore it with --retriever-field ''")
    return [float(r[field]) for r in records]


def serve(
    source: SourceArg,
    host: Annotated[str, typer.Option(help="Interface to bind; 127.0.0.1 keeps it local.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535)] = 8000,
    max_batch: Annotated[int, typer.Option(min=1, help="Most inputs per request.")] = 64,
    max_text_chars: Annotated[int, typer.Option(min=1, help="Longest text accepted.")] = 10_000,
    max_body_bytes: Annotated[int, typer.Option(min=1, help="Largest request body.")] = 1_000_000,
    index_dir: Annotated[Path | None, typer.Option("--index", help="Also answer POST /search from this "
                                                   "index (built with this bundle, or with a bundle of its embedding space: the teacher of a student).")] = None,
    threads: ThreadsOpt = 0,
    tracking_uri: TrackingOpt = None,
) -> None:
    """Serve a released model over HTTP: /predict, /embed, /health, /metadata, /rerank for a
    cross-encoder, and /search with --index."""
    from bertpress.serve import Limits
    from bertpress.serve import serve as run_server

    model = open_model(source, threads, tracking_uri)
    found = None
    if index_dir is not None:
        from bertpress.index import VectorIndex

        found = VectorIndex.open(index_dir)
        found.check_bundle(model, queries=True)
    version = model.path.parent.name.removeprefix("v") if source.startswith("models:/") else None
    routes = "/predict, /embed" + (", /rerank" if model.task == "cross-encoder" else "") + (", /search" if found else "")
    err_console.print(f"serving {model.path} ({model.task}) on http://{host}:{port} (POST {routes})")
    run_server(model, host, port, Limits(max_batch, max_text_chars, max_body_bytes), version, found)


def register(app: typer.Typer) -> typer.Typer:
    """Add the runtime commands to `app` (the runtime's own, or the pipeline's full one)."""
    for command in (predict, embed, index, search, rerank, serve):
        app.command()(command)
    return app


def runtime_app() -> typer.Typer:
    return register(typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__,
                                pretty_exceptions_enable=False))


def full_app() -> typer.Typer:
    """Every command: the training install's (which include the runtime's), else the runtime's."""
    for entry in entry_points(group="bertpress.commands"):
        try:
            return entry.load()()
        except ImportError as exc:
            err_console.print(f"[yellow]the pipeline commands are unavailable ({exc}); install "
                              "the training extras: pip install 'bertpress\\[train]'")  # \\[ keeps rich from eating [train]
    return runtime_app()


def _command(argv: list[str]) -> str | None:
    return next((a for a in argv if not a.startswith("-")), None)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    run_app(runtime_app() if _command(argv) in RUNTIME_COMMANDS else full_app(), argv)


def run_app(app: typer.Typer, argv: list[str] | None = None) -> None:
    """Run a command; our errors become one line on stderr and their exit code, no traceback."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        # Without standalone mode click returns (not raises) the code of a typer.Exit.
        code = app(args=argv, prog_name="bertpress", standalone_mode=False)
        if isinstance(code, int) and code:
            sys.exit(code)
    except BertpressError as exc:
        err_console.print(f"[bold red]{exc.label}:[/] {exc}", highlight=False)
        sys.exit(exc.exit_code)
    except (typer.Exit, SystemExit) as exc:
        code = getattr(exc, "exit_code", getattr(exc, "code", 0))
        sys.exit(code or 0)
    except typer.Abort:
        sys.exit(130)
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] not in TRAINING_MODULES:
            raise
        err_console.print(f"[bold red]error:[/] this command needs the training install (no module "
                          f"{exc.name!r} here): pip install 'bertpress\\[train]'", highlight=False)
        sys.exit(2)
    except Exception as exc:  # click usage errors come through here in non-standalone mode
        if _is_click_error(exc):
            exc.show()
            sys.exit(exc.exit_code)
        raise


def _is_click_error(exc: Exception) -> bool:
    """A click usage error (unknown option, missing argument...). typer 0.29 vendors click as
    typer._click, whose classes are not click's: match either by name, not by import."""
    return any(cls.__name__ == "ClickException" for cls in type(exc).__mro__)


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


if __name__ == "__main__":
    main()
