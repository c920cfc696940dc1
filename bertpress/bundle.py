"""The release bundle: a directory that holds everything needed to run the model, and nothing else.

    model.onnx          the released ONNX graph (inputs input_ids/attention_mask/token_type_ids)
    tokenizer.json      the model's own fast tokenizer (a vocabulary-trimmed student has its own ids)
    bundle.json         labels, inference settings (max length, truncation), outputs, provenance
    README.md           the model card
    SHA256SUMS          sha256 of every other file (`sha256sum -c SHA256SUMS` checks it too)

Torch-free: the standard library only.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from bertpress.errors import BundleError

FORMAT = "bertpress-bundle/1"
MODEL_FILE = "model.onnx"
TOKENIZER_FILE = "tokenizer.json"
METADATA_FILE = "bundle.json"
CARD_FILE = "README.md"
CHECKSUMS_FILE = "SHA256SUMS"


__all__ = ["BundleError", "file_sha256", "read_metadata", "verify", "write_checksums"]


def file_sha256(path: Path) -> str:
    """sha256 of a file, read in 1 MiB blocks (the one hashing helper of the project)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_checksums(bundle: Path) -> dict[str, str]:
    """Hash every file in the bundle (written last: it seals the bundle)."""
    sums = {
        str(path.relative_to(bundle)): file_sha256(path)
        for path in sorted(bundle.rglob("*"))
        if path.is_file() and path.name != CHECKSUMS_FILE
    }
    (bundle / CHECKSUMS_FILE).write_text("".join(f"{h}  {name}\n" for name, h in sums.items()))
    return sums


def read_checksums(bundle: Path) -> dict[str, str]:
    path = bundle / CHECKSUMS_FILE
    if not path.is_file():
        raise BundleError(f"{bundle} has no {CHECKSUMS_FILE}: not a finished bertpress bundle "
                          "(make one with `make release`)")
    sums = {}
    for line in path.read_text().splitlines():
        digest, _, name = line.partition("  ")
        if not name:
            raise BundleError(f"{path}: malformed line {line!r}")
        sums[name] = digest
    return sums


def verify(bundle: Path) -> None:
    """Fail if a listed file is missing or differs from its checksum (a truncated copy, an edit)."""
    for name, expected in read_checksums(bundle).items():
        path = bundle / name
        if not path.is_file():
            raise BundleError(f"bundle file {path} is missing (listed in {CHECKSUMS_FILE})")
        if file_sha256(path) != expected:
            raise BundleError(f"bundle file {path} does not match its sha256 in {CHECKSUMS_FILE}: "
                              "the bundle is corrupted or was edited; copy it again from the release")


def read_metadata(bundle: Path) -> dict[str, Any]:
    bundle = Path(bundle)
    if not bundle.is_dir():
        raise BundleError(f"bundle directory {bundle} does not exist")
    path = bundle / METADATA_FILE
    if not path.is_file():
        raise BundleError(f"{bundle} has no {METADATA_FILE}: not a bertpress bundle (make one with "
                          "`make release`; the release stage writes artifacts/release/<key>/bundle)")
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise BundleError(f"{path} is not valid JSON: {exc}") from None
    if meta.get("format") != FORMAT:
        raise BundleError(f"{path}: format {meta.get('format')!r}, this bertpress reads {FORMAT!r}")
    return meta
