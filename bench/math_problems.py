"""Grade-school math word problems of our own: seeded templates with a known answer and step count.

    python -m bench.math_problems --n 240 --seed 16      # prints a few; bench.label_math labels them

Written for this project (no dataset copied or paraphrased). A problem is a chain of 1-6 arithmetic
operations on one quantity, told as a story in one of several settings (who, what, which unit), with
varied verbs for each operation, optional distractor sentences (numbers that play no part) and varied
question wording. `steps` counts the arithmetic operations needed; every intermediate value is a
positive integer and every division is exact, so the answer is one integer.
"""

from __future__ import annotations

import argparse
import random
from collections.abc import Callable
from dataclasses import dataclass

NAMES = (
    "Ana",
    "Ben",
    "Chloe",
    "Dev",
    "Emre",
    "Fatima",
    "Gus",
    "Hana",
    "Ivan",
    "Jade",
    "Kofi",
    "Lena",
    "Mateo",
    "Nia",
    "Omar",
    "Priya",
    "Quinn",
    "Rosa",
    "Sami",
    "Tomas",
    "Uma",
    "Victor",
    "Wen",
    "Yusuf",
)


@dataclass(frozen=True)
class Setting:
    """Who holds what: the item, its container, and verbs for gaining and losing some."""

    item: str  # plural noun, or a unit phrase ("dollars", "liters of water")
    box: str  # a container of the item
    gain: tuple[str, ...]  # "{n} {item}" follows
    lose: tuple[str, ...]
    place: str


SETTINGS = (
    Setting(
        "marbles", "bag", ("finds", "wins", "is given"), ("loses", "gives away", "trades away"), "at school"
    ),
    Setting(
        "stickers",
        "sheet",
        ("buys", "gets", "is given"),
        ("uses", "gives away", "sticks on a card"),
        "at home",
    ),
    Setting(
        "apples",
        "crate",
        ("picks", "buys", "collects"),
        ("eats", "sells", "bakes into pies"),
        "at the orchard",
    ),
    Setting(
        "dollars", "envelope", ("earns", "saves", "is paid"), ("spends", "pays out", "donates"), "this month"
    ),
    Setting(
        "stamps",
        "album page",
        ("collects", "buys", "is sent"),
        ("trades away", "gives away", "sells"),
        "this week",
    ),
    Setting(
        "liters of water",
        "tank",
        ("pumps in", "adds", "collects"),
        ("uses", "drains", "pours out"),
        "on the farm",
    ),
    Setting("eggs", "carton", ("collects", "buys", "gathers"), ("cracks", "sells", "uses"), "at the market"),
    Setting(
        "coins", "jar", ("finds", "saves", "is given"), ("spends", "loses", "gives away"), "in the piggy bank"
    ),
    Setting(
        "cookies", "tray", ("bakes", "buys", "makes"), ("eats", "shares out", "packs away"), "for the fair"
    ),
    Setting(
        "books", "shelf", ("buys", "borrows", "receives"), ("donates", "lends out", "sells"), "at the library"
    ),
)

DISTRACTORS = (
    "{o} is {k} years old.",
    "The weather {p} was {k} degrees.",
    "{o} has {k} cousins who live far away.",
    "It took {k} minutes to get there.",
    "{o} once had {k} goldfish.",
    "The bus {p} holds {k} people.",
    "{o}'s house number is {k}.",
)
QUESTIONS = (
    "How many {item} does {n} have now?",
    "How many {item} does {n} end up with?",
    "What is the number of {item} {n} has at the end?",
    "After all this, how many {item} are left with {n}?",
    "How many {item} does {n} have in the end?",
)


@dataclass(frozen=True)
class Problem:
    text: str
    answer: int
    steps: int
    setting: str


Op = Callable[[random.Random, int, str, Setting], tuple[str, int] | None]


def _add(rng: random.Random, v: int, n: str, s: Setting) -> tuple[str, int]:
    k = rng.randint(2, 40)
    return f"Then {n} {rng.choice(s.gain)} {k} more {s.item}.", v + k


def _sub(rng: random.Random, v: int, n: str, s: Setting) -> tuple[str, int] | None:
    if v < 3:
        return None
    k = rng.randint(1, v - 1)
    return f"After that, {n} {rng.choice(s.lose)} {k} {s.item}.", v - k


def _mul(rng: random.Random, v: int, n: str, s: Setting) -> tuple[str, int] | None:
    if v > 60:
        return None
    k = rng.choice((2, 2, 3, 3, 4, 5))
    words = {2: "doubles", 3: "triples"}
    if k in words and rng.random() < 0.5:
        return f"Then the number of {s.item} {n} has {words[k]}.", v * k
    return f"Then {n} ends up with {k} times as many {s.item} as before.", v * k


def _div(rng: random.Random, v: int, n: str, s: Setting) -> tuple[str, int] | None:
    ks = [k for k in (2, 3, 4, 5) if v % k == 0 and v // k >= 2]
    if not ks:
        return None
    k = rng.choice(ks)
    if k == 2 and rng.random() < 0.5:
        return f"Then {n} gives half of the {s.item} to a friend.", v // 2
    return (
        f"Then {n} shares the {s.item} equally among {k} people, {n} included, and keeps one share.",
        v // k,
    )


def _boxes(rng: random.Random, v: int, n: str, s: Setting) -> tuple[str, int]:
    b, k = rng.randint(2, 6), rng.randint(2, 12)
    return f"Then {n} {rng.choice(s.gain)} {b} {s.box}s with {k} {s.item} in each {s.box}.", v + b * k


OPS: tuple[Op, ...] = (_add, _sub, _mul, _div)
# _boxes is two operations (a product and a sum): counted as 2 steps.


def make_problem(rng: random.Random, steps: int) -> Problem:
    """One problem of exactly `steps` arithmetic operations (1-6)."""
    if not 1 <= steps <= 6:
        raise ValueError("steps must be 1..6")
    s = rng.choice(SETTINGS)
    n, o = rng.sample(NAMES, 2)
    while True:
        v = rng.randint(5, 60)
        start = rng.choice(
            ("{n} has {v} {i} {p}.", "{n} starts with {v} {i} {p}.", "At first, {n} has {v} {i} {p}.")
        )
        lines = [start.format(n=n, v=v, i=s.item, p=s.place)]
        left = steps
        while left:
            if left >= 2 and rng.random() < 0.25:
                line, v = _boxes(rng, v, n, s)
                left -= 2
            else:
                out = rng.choice(OPS)(rng, v, n, s)
                if out is None:
                    continue
                line, v = out
                left -= 1
            lines.append(line)
        if v > 0:
            break
    for _ in range(rng.choice((0, 0, 1, 1, 2))):
        d = rng.choice(DISTRACTORS).format(o=o, p=s.place, k=rng.randint(3, 90))
        lines.insert(rng.randint(1, len(lines)), d)
    lines.append(rng.choice(QUESTIONS).format(item=s.item, n=n))
    return Problem(" ".join(lines), v, steps, s.item)


def generate(n: int, seed: int) -> list[Problem]:
    """`n` problems, step counts 1-6 in turn, the same for the same seed."""
    rng = random.Random(seed)
    return [make_problem(rng, 1 + i % 6) for i in range(n)]


# Ordinary story sentences that happen to hold words the heuristic's signals list for other reasons
# ("not", "class", "plan", "again", "both", "program", "why", "thanks"), and two that hold none.
NARRATIVE = (
    "{o} did not come along this time.",
    "{o} could not decide what to do first.",
    "It was the last day before the class trip.",
    "{o} plans to do the same again next year.",
    "Both of them were in the after-school program.",
    "{o} never keeps count.",
    "Everyone wanted to know why.",
    "{o} said thanks.",
    "It was a sunny afternoon.",
    "Everybody was in a good mood.",
)


def narrate(problems: list[Problem], seed: int) -> list[Problem]:
    """A stress variant: one NARRATIVE sentence in 6 of 10 problems, drawn independently of the step
    count (its own seeded draw; the problems and answers are unchanged)."""
    rng = random.Random(seed)
    out = []
    for p in problems:
        if rng.random() < 0.6:
            parts = p.text.split(". ")
            at = rng.randint(1, len(parts) - 1)
            line = rng.choice(NARRATIVE).format(o=rng.choice(NAMES))[:-1]
            p = Problem(". ".join([*parts[:at], line, *parts[at:]]), p.answer, p.steps, p.setting)
        out.append(p)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=12)
    ap.add_argument("--seed", type=int, default=16)
    args = ap.parse_args()
    for p in generate(args.n, args.seed):
        print(f"[{p.steps} steps, answer {p.answer}] {p.text}")


if __name__ == "__main__":
    main()
