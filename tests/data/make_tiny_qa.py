"""Writes tiny_qa.json: a small SQuAD-format file a tiny random BERT can learn from in seconds.

Each paragraph states where someone lives and what they work as, among filler sentences; the
questions ask for the city or the job. Every third article (the test articles, index % 3 == 2)
ends with paragraphs longer than 64 tokens whose facts sit past the first window.
Run: python tests/data/make_tiny_qa.py
"""

import json
import random
from pathlib import Path

NAMES = ["anna", "bruno", "chen", "dara", "emil", "fatima", "goran", "hana", "ivan", "jonas", "kofi", "lena",
         "marco", "nina", "omar", "petra", "quinn", "rosa", "sami", "tara"]
CITIES = ["paris", "lagos", "oslo", "lima", "cairo", "tokyo", "quito", "dublin", "hanoi", "perth", "kyiv", "porto"]
JOBS = ["baker", "doctor", "pilot", "farmer", "teacher", "painter", "sailor", "writer", "nurse", "chef"]
FILLER = ["the weather was mild that year .", "the market opened early on monday .",
          "many people walked along the river .", "a new bridge was built near the station ."]


def paragraph(rng: random.Random, article: int, p: int, long: bool) -> dict:
    name, city, job = rng.choice(NAMES), rng.choice(CITIES), rng.choice(JOBS)
    before = [rng.choice(FILLER) for _ in range(12 if long else rng.randint(0, 2))]
    facts = [f"{name} lives in {city} .", f"{name} works as a {job} ."]
    rng.shuffle(facts)
    context = " ".join([*before, *facts, rng.choice(FILLER)])
    qas = []
    for kind, question, answer in (("city", f"where does {name} live ?", city),
                                   ("job", f"what does {name} work as ?", job)):
        start = context.index(f" {answer} ") + 1  # every answer stands between spaces
        qas.append({"id": f"a{article}-p{p}-{kind}", "question": question,
                    "answers": [{"text": answer, "answer_start": start}]})
    return {"context": context, "qas": qas}


def main() -> None:
    rng = random.Random(7)
    data = []
    for article in range(30):
        long = article % 3 == 2 and article >= 24  # the last three test articles: long paragraphs
        data.append({"title": f"town {article}",
                     "paragraphs": [paragraph(rng, article, p, long) for p in range(3)]})
    path = Path(__file__).with_name("tiny_qa.json")
    path.write_text(json.dumps({"version": "tiny-qa", "data": data}, indent=1) + "\n")


if __name__ == "__main__":
    main()
