"""Writes tests/data/tiny_ner.conll: a small synthetic NER set (person, location, organization)
whose tags follow from cue words, so a tiny random BERT can learn it in seconds. Some sentences
join several clauses and run past the tiny configs' max_length, so long-sentence windows are
exercised. Deterministic: `python tests/data/make_tiny_ner.py` rewrites the same file."""

from __future__ import annotations

import random
from pathlib import Path

PEOPLE = [["Alice"], ["Bob", "Stone"], ["Carla", "Diaz"], ["Dev"], ["Erin", "Mae", "Holt"], ["Farid"]]
PLACES = [["Paris"], ["New", "York"], ["Lagos"], ["Oslo"], ["San", "Jose"], ["Kyoto"]]
ORGS = [["Acme"], ["Globex", "Corp"], ["Initech"], ["Umbrella", "Labs"], ["Hooli"]]
CLAUSES = [
    ("{P} visited {L} yesterday", "P L"),
    ("{O} hired {P} last week", "O P"),
    ("{P} moved from {L} to {L}", "P L L"),
    ("the office of {O} in {L} is closed", "O L"),
    ("{P} and {P} met at {O}", "P P O"),
    ("nothing happened today", ""),
    ("we heard that {P} likes {L}", "P L"),
]
KINDS = {"P": (PEOPLE, "person"), "L": (PLACES, "location"), "O": (ORGS, "organization")}


def clause(rng: random.Random) -> list[tuple[str, str]]:
    template, _ = rng.choice(CLAUSES)
    out: list[tuple[str, str]] = []
    for word in template.split():
        if word.startswith("{"):
            names, kind = KINDS[word[1]]
            entity = rng.choice(names)
            out += [(w, ("B-" if i == 0 else "I-") + kind) for i, w in enumerate(entity)]
        else:
            out.append((word, "O"))
    return out


def main() -> None:
    rng = random.Random(7)
    lines = []
    for n in range(420):
        words = clause(rng)
        if n % 12 == 0:  # long: 4-5 clauses joined, past max_length 32 of the tiny configs
            for _ in range(rng.randint(3, 4)):
                words += [(",", "O")] + clause(rng)
        words.append((".", "O"))
        lines += [f"{w}\t{t}" for w, t in words] + [""]
    Path(__file__).with_name("tiny_ner.conll").write_text("\n".join(lines))


if __name__ == "__main__":
    main()
