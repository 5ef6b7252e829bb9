"""A small seeded set of questions whose answers can be checked exactly (arithmetic, comparisons,
sequences, capitals): `localroute init` asks each local rung these to calibrate its confidence
threshold on this box, and bench/cascade_signals.py ranks the cascade signals on them."""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

SYSTEM = "Reply with the answer only: a number or a name, no explanation."
# Two worked turns, so that a small model answers at once (its first token is the answer's).
SHOTS = [
    {"role": "user", "content": "What is 2 + 3?"},
    {"role": "assistant", "content": "5"},
    {"role": "user", "content": "What is the capital of Spain?"},
    {"role": "assistant", "content": "Madrid"},
]
KINDS = ("add", "sub", "mul", "larger", "next", "capital")
CAPITALS = [("France", "Paris"), ("Japan", "Tokyo"), ("Italy", "Rome"), ("Germany", "Berlin"),
            ("Canada", "Ottawa"), ("Australia", "Canberra"), ("Egypt", "Cairo"),
            ("Russia", "Moscow"), ("China", "Beijing"), ("Kenya", "Nairobi"), ("Norway", "Oslo"),
            ("Peru", "Lima"), ("Turkey", "Ankara"), ("Poland", "Warsaw"), ("Greece", "Athens"),
            ("Portugal", "Lisbon"), ("Sweden", "Stockholm"), ("Ireland", "Dublin"), ("Thailand", "Bangkok"),
            ("Vietnam", "Hanoi"), ("Chile", "Santiago"), ("Cuba", "Havana"), ("Austria", "Vienna"),
            ("Hungary", "Budapest"), ("Finland", "Helsinki"), ("Denmark", "Copenhagen"),
            ("Mexico", "Mexico City"), ("Switzerland", "Bern"), ("Nigeria", "Abuja")]  # fmt: skip


@dataclass(frozen=True)
class Question:
    kind: str
    prompt: str
    answer: str


def questions(n: int, seed: int) -> list[Question]:
    """`n` questions, the kinds in turn, numbers drawn from `seed`."""
    rng = random.Random(seed)
    out: list[Question] = []
    for i in range(n):
        kind = KINDS[i % len(KINDS)]
        if kind == "add":
            a, b = rng.randint(1, 99), rng.randint(1, 99)
            out.append(Question(kind, f"What is {a} + {b}?", str(a + b)))
        elif kind == "sub":
            a = rng.randint(10, 99)
            b = rng.randint(1, a - 1)
            out.append(Question(kind, f"What is {a} - {b}?", str(a - b)))
        elif kind == "mul":
            a, b = rng.randint(2, 12), rng.randint(2, 12)
            out.append(Question(kind, f"What is {a} times {b}?", str(a * b)))
        elif kind == "larger":
            a, b = rng.sample(range(100, 1000), 2)
            out.append(Question(kind, f"Which number is larger, {a} or {b}?", str(max(a, b))))
        elif kind == "next":
            start, step = rng.randint(1, 20), rng.randint(2, 9)
            seq = ", ".join(str(start + step * k) for k in range(4))
            out.append(Question(kind, f"What number comes next: {seq}, ...?", str(start + step * 4)))
        else:
            country, capital = rng.choice(CAPITALS)
            out.append(Question(kind, f"What is the capital of {country}?", capital))
    rng.shuffle(out)
    return out


def messages(q: Question) -> list[dict[str, str]]:
    """The chat messages `q` is asked with: the system line, the two worked turns, the question."""
    return [{"role": "system", "content": SYSTEM}, *SHOTS, {"role": "user", "content": q.prompt}]


def is_right(q: Question, text: str) -> bool:
    """The capital among the first words; the larger number first ("475 is larger than 457", not an
    echo "475 or 457"); else the last number ("23 + 48 = 71", "The answer is 71.")."""
    if q.kind == "capital":
        head = " ".join(re.findall(r"[\w]+", text.casefold())[:6])
        return q.answer.casefold() in head
    numbers: list[str] = re.findall(r"-?\d+", text.replace(",", ""))
    if not numbers:
        return False
    if q.kind == "larger":  # "873 or 197" echoes the question: not an answer
        return numbers[0] == q.answer and " or " not in text.split("\n", 1)[0]
    return numbers[-1] == q.answer


@dataclass(frozen=True)
class ProbeAnswer:
    """One probe answer of a rung: whether it was right, its sampled tokens' logprobs (end of
    generation excluded) and the top-2 logprob gap at its first token; no text."""

    right: bool
    logprobs: tuple[float, ...]
    margin: float | None
