"""Reading texts for `bertpress predict/embed` (arguments, stdin, CSV/JSONL/TXT) and writing results."""

from __future__ import annotations

import csv
import io
import json
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, TextIO


class InputError(ValueError):
    """Texts could not be read; the message names the file or field and the fix."""


def read_texts(texts: Sequence[str], input_file: Path | None, text_column: str = "text",
               stdin: TextIO | None = None) -> list[str]:
    """Texts from arguments, '-' (stdin, one text per line) or a .csv/.tsv/.jsonl/.txt file."""
    if input_file is not None and texts:
        raise InputError("give texts as arguments or --input FILE, not both")
    if input_file is not None:
        return read_file(Path(input_file), text_column)
    if list(texts) == ["-"]:
        return [line.rstrip("\r\n") for line in (stdin or sys.stdin) if line.strip()]
    if not texts:
        raise InputError("no texts: pass them as arguments, '-' to read lines from stdin, "
                         "or --input FILE (.csv, .tsv, .jsonl or .txt)")
    return list(texts)


def read_file(path: Path, text_column: str) -> list[str]:
    if not path.is_file():
        raise InputError(f"input file {path} does not exist")
    try:
        raw = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{path} is not UTF-8 ({exc.reason} at byte {exc.start}); convert it, "
                         "e.g. iconv -f latin1 -t utf-8") from None
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        reader = csv.DictReader(io.StringIO(raw), delimiter="\t" if suffix == ".tsv" else ",")
        if text_column not in (reader.fieldnames or []):
            raise InputError(f"{path} has no column {text_column!r} (columns: {reader.fieldnames}); "
                             "pass --text-column NAME")
        return [row[text_column] or "" for row in reader]
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
                out.append(record)
            elif isinstance(record, dict) and isinstance(record.get(text_column), str):
                out.append(record[text_column])
            else:
                raise InputError(f"{path}:{number} has no string field {text_column!r}; "
                                 "pass --text-column NAME")
        return out
    if suffix in (".txt", ""):
        return [line for line in raw.splitlines() if line.strip()]
    raise InputError(f"{path}: unsupported input type {suffix!r}; use .csv, .tsv, .jsonl or .txt")


def write_predictions(rows: Iterable[dict[str, Any]], labels: Sequence[str], fmt: str, out: TextIO) -> None:
    if fmt == "jsonl":
        for row in rows:
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
    elif fmt == "csv":
        writer = csv.writer(out)
        writer.writerow(["text", "label", "score", *(f"p_{label}" for label in labels)])
        for row in rows:
            writer.writerow([row["text"], row["label"], f"{row['score']:.6f}",
                             *(f"{row['probabilities'][label]:.6f}" for label in labels)])
    else:
        raise InputError(f"unknown output format {fmt!r}; use jsonl or csv")
