"""Reading inputs for `bertpress predict/embed` (arguments, stdin, CSV/JSONL/TXT) and writing results."""

from __future__ import annotations

import csv
import io
import json
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, TextIO

from bertpress.errors import InputError

__all__ = ["InputError", "read_inputs", "read_records", "read_texts", "write_predictions"]


def read_inputs(texts: Sequence[str], input_file: Path | None, text_column: str = "text", *,
                pairs: Sequence[str] | None = None, pair_column: str | None = None,
                split_words: bool = False, stdin: TextIO | None = None) -> list[Any]:
    """Model inputs from arguments, '-' (stdin, one per line) or a .csv/.tsv/.jsonl/.txt file:
    texts; [text, text_pair] pairs (`pairs` beside argument texts, or `pair_column` in a file);
    or word lists (a JSON list in the text field, or `split_words`: split texts on whitespace)."""
    if input_file is not None and texts:
        raise InputError("give texts as arguments or --input FILE, not both")
    if input_file is not None:
        records = read_records(Path(input_file), text_column)
        where = str(input_file)
    elif list(texts) == ["-"]:
        records = [{text_column: line.rstrip("\r\n")} for line in (stdin or sys.stdin) if line.strip()]
        where = "stdin"
    elif texts:
        records = [{text_column: t} for t in texts]
        where = "the arguments"
    else:
        raise InputError("no texts: pass them as arguments, '-' to read lines from stdin, "
                         "or --input FILE (.csv, .tsv, .jsonl or .txt)")
    if pairs:
        if input_file is not None or len(pairs) != len(records):
            raise InputError(f"--pair was given {len(pairs)} time(s) for {len(records)} argument "
                             "text(s): give one --pair per text (or a file with --pair-column)")
        records = [r | {"__pair__": p} for r, p in zip(records, pairs, strict=True)]
        pair_column = "__pair__"
    return [_input(r, i, text_column, pair_column, split_words, where) for i, r in enumerate(records)]


def _input(record: dict[str, Any], i: int, text_column: str, pair_column: str | None,
           split_words: bool, where: str) -> Any:
    if text_column not in record:
        raise InputError(f"{where}: row {i + 1} has no field {text_column!r} (fields: "
                         f"{sorted(record)}); pass --text-column NAME")
    value = record[text_column]
    if isinstance(value, list) and all(isinstance(w, str) for w in value):
        return value  # pre-split words
    if not isinstance(value, str):
        raise InputError(f"{where}: row {i + 1} field {text_column!r} is not a string")
    if split_words:
        return value.split()
    if pair_column is None:
        return value
    pair = record.get(pair_column)
    if not isinstance(pair, str):
        raise InputError(f"{where}: row {i + 1} has no string field {pair_column!r} for the "
                         "second text; pass --pair-column NAME")
    return (value, pair)


def read_texts(texts: Sequence[str], input_file: Path | None, text_column: str = "text",
               stdin: TextIO | None = None) -> list[str]:
    """Single texts only (for `embed`): see read_inputs."""
    items = read_inputs(texts, input_file, text_column, stdin=stdin)
    if any(not isinstance(t, str) for t in items):
        raise InputError(f"{text_column!r} must hold texts, not word lists")
    return items


def read_records(path: Path, text_column: str = "text") -> list[dict[str, Any]]:
    """Rows of a .csv/.tsv (header), .jsonl (objects, or bare strings) or .txt (one text per line)
    file; a bare string or a line is the row's `text_column`."""
    if not path.is_file():
        raise InputError(f"input file {path} does not exist")
    try:
        raw = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{path} is not UTF-8 ({exc.reason} at byte {exc.start}); convert it, "
                         "e.g. iconv -f latin1 -t utf-8") from None
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        return list(csv.DictReader(io.StringIO(raw), delimiter="\t" if suffix == ".tsv" else ","))
    if suffix in (".jsonl", ".ndjson"):
        out = []
        for number, line in enumerate(raw.splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InputError(f"{path}:{number} is not valid JSON ({exc.msg})") from None
            if isinstance(record, str):
                record = {text_column: record}
            if not isinstance(record, dict):
                raise InputError(f"{path}:{number} is neither a JSON object nor a string")
            out.append(record)
        return out
    if suffix in (".txt", ""):
        return [{text_column: line} for line in raw.splitlines() if line.strip()]
    raise InputError(f"{path}: unsupported input type {suffix!r}; use .csv, .tsv, .jsonl or .txt")


def write_answers(rows: Iterable[dict[str, Any]], fmt: str, out: TextIO) -> None:
    """Question answering: JSONL (a line per question), or CSV with a row per answer (top-k)."""
    if fmt == "jsonl":
        for row in rows:
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
        return
    writer = csv.writer(out)
    writer.writerow(["input", "question", "rank", "answer", "start", "end", "score"])
    for n, row in enumerate(rows):
        for rank, a in enumerate(row.get("answers", [row]), 1):
            writer.writerow([n, row["question"], rank, a["answer"], a["start"], a["end"], f"{a['score']:.6f}"])


def write_predictions(rows: Iterable[dict[str, Any]], labels: Sequence[str], fmt: str, out: TextIO) -> None:
    """JSONL (every task), or CSV: one row per input with label probabilities (classification),
    one row per entity (entity recognition)."""
    if fmt == "jsonl":
        for row in rows:
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
    elif fmt == "csv":
        writer = csv.writer(out)
        rows = list(rows)
        if rows and "entities" in rows[0]:
            writer.writerow(["input", "type", "text", "start", "end", "score"])
            for n, row in enumerate(rows):
                for e in row["entities"]:
                    writer.writerow([n, e["type"], e["text"], e["start"], e["end"], f"{e['score']:.6f}"])
            return
        if rows and "label" not in rows[0]:  # relevance scores of (query, passage) pairs
            writer.writerow(["text", "text_pair", "score", "probability"])
            for row in rows:
                writer.writerow([*row["text"], f"{row['score']:.6f}", f"{row['probability']:.6f}"])
            return
        writer.writerow(["text", "label", "score", *(f"p_{label}" for label in labels)])
        for row in rows:
            text = row["text"] if isinstance(row["text"], str) else " ||| ".join(row["text"])
            writer.writerow([text, row["label"], f"{row['score']:.6f}",
                             *(f"{row['probabilities'][label]:.6f}" for label in labels)])
    else:
        raise InputError(f"unknown output format {fmt!r}; use jsonl or csv")
