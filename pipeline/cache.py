"""Content-addressed stage outputs: ``<root>/<stage>/<key>/`` with ``manifest.json`` written last.

A directory holding a manifest is complete; anything else (``.tmp-*``) is an interrupted attempt and
is never read. Keys chain: a stage's key hashes its own config, its code, and its upstream keys, so a
change invalidates that stage and everything after it, nothing before it (Olive's chained ids).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bertpress.bundle import file_sha256
from bertpress.errors import BertpressError

MANIFEST = "manifest.json"
KEY_LENGTH = 16


def stable_hash(payload: Any) -> str:
    """sha256 of a JSON-serialisable payload with sorted keys (stable across runs and machines)."""
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def stage_key(
    stage: str,
    config: Mapping[str, Any],
    upstream: Mapping[str, str],
    code_version: str,
    fingerprint: str | None = None,
) -> str:
    """The cache key of one stage run; `fingerprint` is the content hash of external input data."""
    payload = {
        "stage": stage,
        "config": config,
        "upstream": dict(sorted(upstream.items())),
        "code": code_version,
        "fingerprint": fingerprint,
    }
    return stable_hash(payload)[:KEY_LENGTH]


class CorruptArtifactError(BertpressError):
    """A finished stage output no longer matches the checksum its manifest recorded."""


def content_digest(folder: Path) -> str:
    """sha256 over every file of a stage output (names and contents, manifest excluded): what a
    downstream stage was built from. A rerun that writes different files changes it, and every
    stage built from the old content is then out of date."""
    digest = hashlib.sha256()
    for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        if rel.startswith(MANIFEST):
            continue
        digest.update(f"{rel}\0{file_sha256(path)}\n".encode())
    return digest.hexdigest()


def output_checksums(out: Path, outputs: Mapping[str, str]) -> dict[str, str]:
    """sha256 of every declared output that is a file (models, reports), for later verification."""
    return {rel: file_sha256(out / rel) for rel in sorted(set(outputs.values())) if (out / rel).is_file()}


@dataclass(frozen=True)
class Artifact:
    """A finished stage output directory and its manifest."""

    stage: str
    key: str
    path: Path
    manifest: dict[str, Any]

    def output(self, name: str) -> Path:
        """Absolute path of an output the stage declared in its manifest."""
        outputs = self.manifest.get("outputs", {})
        if name not in outputs:
            raise KeyError(
                f"stage {self.stage!r} ({self.path}) declares no output {name!r}; "
                f"it has: {sorted(outputs)}"
            )
        path = self.path / outputs[name]
        expected = self.manifest.get("output_sha256", {}).get(outputs[name])
        if expected is not None and file_sha256(path) != expected:
            raise CorruptArtifactError(
                f"{path} does not match the sha256 in {self.path / MANIFEST}: the file was changed "
                f"or damaged after the {self.stage} stage wrote it. Rebuild it with "
                f"`bertpress run {self.stage} --force` (same --config/--set as before)"
            )
        return path

    @property
    def metrics(self) -> dict[str, float]:
        return self.manifest.get("metrics", {})

    @property
    def content(self) -> str | None:
        return self.manifest.get("content_sha256")

    def built_from(self, upstream: Mapping[str, Artifact]) -> bool:
        """Whether this output was built from exactly these upstream outputs (their content)."""
        recorded = self.manifest.get("inputs", {})
        return all(name in recorded and art.content is not None
                   and recorded[name].get("content_sha256") == art.content
                   for name, art in upstream.items())


class ArtifactStore:
    def __init__(self, root: Path):
        self.root = Path(root)

    def stage_dir(self, stage: str) -> Path:
        return self.root / stage

    def path(self, stage: str, key: str) -> Path:
        return self.stage_dir(stage) / key

    def get(self, stage: str, key: str) -> Artifact | None:
        """The finished artifact for (stage, key), or None when absent or incomplete."""
        path = self.path(stage, key)
        manifest_path = path / MANIFEST
        if not manifest_path.is_file():
            return None
        try:
            manifest = json.loads(manifest_path.read_text())
        except (OSError, json.JSONDecodeError):
            return None
        return Artifact(stage=stage, key=key, path=path, manifest=manifest)

    def finished_keys(self, stage: str) -> list[str]:
        """Keys of every finished output of a stage, newest first."""
        base = self.stage_dir(stage)
        if not base.is_dir():
            return []
        found = [p for p in base.iterdir()
                 if p.is_dir() and not p.name.startswith(".") and (p / MANIFEST).is_file()]
        found.sort(key=lambda p: (p / MANIFEST).stat().st_mtime, reverse=True)
        return [p.name for p in found]

    def begin(self, stage: str, key: str) -> Path:
        """A fresh temporary directory to write a stage's outputs into."""
        tmp = self.stage_dir(stage) / f".tmp-{key}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir(parents=True)
        return tmp

    def commit(self, tmp: Path, stage: str, key: str, manifest: dict[str, Any]) -> Artifact:
        """Write the manifest last, then move the directory into place in one rename."""
        manifest = {**manifest, "stage": stage, "key": key, "committed_at": time.time(),
                    "content_sha256": content_digest(tmp)}
        part = tmp / (MANIFEST + ".part")
        part.write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str))
        os.replace(part, tmp / MANIFEST)
        final = self.path(stage, key)
        if final.exists():
            # --force over an existing result: swap it out, then delete the old one.
            trash = final.with_name(f".trash-{key}-{uuid.uuid4().hex[:8]}")
            os.replace(final, trash)
            os.replace(tmp, final)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, final)
        return Artifact(stage=stage, key=key, path=final, manifest=manifest)

    def scratch(self, stage: str, key: str) -> Path:
        """Working space kept across attempts of one (stage, key), e.g. training checkpoints."""
        path = self.stage_dir(stage) / f".work-{key}"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def drop_scratch(self, stage: str, key: str) -> None:
        shutil.rmtree(self.stage_dir(stage) / f".work-{key}", ignore_errors=True)

    def clear_interrupted(self, stage: str, key: str) -> list[Path]:
        """Delete half-written outputs of earlier, interrupted attempts at (stage, key). Call only
        while holding that key's lock: then no live process can be writing them."""
        base = self.stage_dir(stage)
        stale = sorted(base.glob(f".tmp-{key}-*")) + sorted(base.glob(f".trash-{key}-*")) if base.is_dir() else []
        for path in stale:
            shutil.rmtree(path, ignore_errors=True)
        return stale

    def abort(self, tmp: Path) -> None:
        shutil.rmtree(tmp, ignore_errors=True)

    def garbage(self) -> list[Path]:
        """Leftovers of interrupted runs (safe to delete when no run is in progress)."""
        if not self.root.is_dir():
            return []
        return sorted(
            p
            for stage in self.root.iterdir()
            if stage.is_dir()
            for p in stage.iterdir()
            if p.name.startswith((".tmp-", ".trash-"))
        )
