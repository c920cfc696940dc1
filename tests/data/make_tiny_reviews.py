"""Regenerate tiny_reviews.csv: a small, seeded, 3-class review set that tiny models can learn.

Run: python tests/data/make_tiny_reviews.py
"""

import csv
import random
from pathlib import Path

WORDS = {
    "positive": ["wonderful", "moving", "brilliant", "charming", "funny", "gripping", "superb", "delightful"],
    "negative": ["dull", "tedious", "awful", "clumsy", "boring", "messy", "lifeless", "dreadful"],
    "neutral": ["long", "french", "animated", "quiet", "black-and-white", "recent", "sequel", "period"],
}
SUBJECTS = ["the film", "this movie", "the plot", "the cast", "the script", "the ending", "the score", "it"]
TEMPLATES = [
    "{s} is {a}.",
    "{s} was {a} and {b}.",
    "honestly, {s} felt {a}, even {b} at times.",
    "a {a} piece of work; {s} is {b}.",
    "{s} turned out {a}, which i did not expect.",
]


def main(n: int = 600, seed: int = 7) -> None:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = list(WORDS)[i % 3]
        a, b = rng.sample(WORDS[label], 2)
        text = rng.choice(TEMPLATES).format(s=rng.choice(SUBJECTS), a=a, b=b)
        rows.append({"review": text[0].upper() + text[1:], "sentiment": label})
    out = Path(__file__).with_name("tiny_reviews.csv")
    with out.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["review", "sentiment"])
        writer.writeheader()
        writer.writerows(rows)


if __name__ == "__main__":
    main()
