"""Writes tiny_rerank.json: a small SQuAD-format file for the tiny re-ranking pipeline.

Every paragraph is about one person named by a first name and a surname, no two paragraphs about
the same person, but first names and surnames recur: a question ("where does anna diaz live ?")
is answered by the one paragraph holding both names, and paragraphs sharing one of them are the
hard negatives a retriever returns. A tiny random cross-encoder can learn to match both names.
Run: python tests/data/make_tiny_rerank.py
"""

import itertools
import json
import random
from pathlib import Path

FIRST = ["anna", "bruno", "chen", "dara", "emil", "fatima", "goran", "hana", "ivan", "jonas", "kofi", "lena"]
LAST = ["diaz", "okafor", "berg", "silva", "novak", "tanaka", "costa", "haddad", "kowal", "moreau"]
CITIES = ["paris", "lagos", "oslo", "lima", "cairo", "tokyo", "quito", "dublin", "hanoi", "perth", "kyiv", "porto"]
JOBS = ["baker", "doctor", "pilot", "farmer", "teacher", "painter", "sailor", "writer", "nurse", "chef"]
FILLER = ["the weather was mild that year .", "the market opened early on monday .",
          "many people walked along the river .", "a new bridge was built near the station ."]


def main() -> None:
    rng = random.Random(11)
    people = list(itertools.product(FIRST, LAST))
    rng.shuffle(people)
    data = []
    for article in range(30):
        paragraphs = []
        for p in range(3):
            first, last = people.pop()
            name, city, job = f"{first} {last}", rng.choice(CITIES), rng.choice(JOBS)
            facts = [f"{name} lives in {city} .", f"{name} works as a {job} ."]
            rng.shuffle(facts)
            context = " ".join([rng.choice(FILLER), *facts])
            qas = []
            for kind, question, answer in (("city", f"where does {name} live ?", city),
                                           ("job", f"what does {name} work as ?", job)):
                qas.append({"id": f"a{article}-p{p}-{kind}", "question": question,
                            "answers": [{"text": answer, "answer_start": context.index(f" {answer} ") + 1}]})
            paragraphs.append({"context": context, "qas": qas})
        data.append({"title": f"people {article}", "paragraphs": paragraphs})
    path = Path(__file__).with_name("tiny_rerank.json")
    path.write_text(json.dumps({"version": "tiny-rerank", "data": data}, indent=1) + "\n")


if __name__ == "__main__":
    main()
