"""bench.math_problems: seeded, step counts as stated, answers right by an independent reading of the text."""

from __future__ import annotations

import csv
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bench.math_problems import generate, make_problem

ROOT = Path(__file__).resolve().parents[1]


def solve(text: str) -> tuple[int, int]:
    """Read a problem's sentences and redo its arithmetic: (answer, steps). Knows nothing of the
    generator's code, only the story's wording; sentences that state no operation are distractors."""
    sentences = [s for s in re.split(r"(?<=[.?])\s+", text) if s]
    first = re.search(r"(?:has|starts with) (\d+) ", sentences[0])
    assert first, sentences[0]
    v, steps = int(first.group(1)), 0
    for s in sentences[1:]:
        if not s.startswith(("Then ", "After that, ")):
            continue
        if m := re.search(r" (\d+) \w+(?: \w+)?s with (\d+) .* in each ", s):
            v, steps = v + int(m.group(1)) * int(m.group(2)), steps + 2
        elif m := re.search(r" (\d+) more ", s):
            v, steps = v + int(m.group(1)), steps + 1
        elif m := re.search(r" (\d+) times as many ", s):
            v, steps = v * int(m.group(1)), steps + 1
        elif s.endswith("doubles."):
            v, steps = v * 2, steps + 1
        elif s.endswith("triples."):
            v, steps = v * 3, steps + 1
        elif " half of " in s:
            v, steps = v // 2, steps + 1
        elif m := re.search(r" equally among (\d+) people", s):
            v, steps = v // int(m.group(1)), steps + 1
        elif s.startswith("After that, ") and (m := re.search(r" (\d+) ", s)):
            v, steps = v - int(m.group(1)), steps + 1
        else:
            raise AssertionError(f"an operation the reader does not know: {s!r}")
    return v, steps


def test_same_seed_same_problems_other_seed_others() -> None:
    assert generate(30, 7) == generate(30, 7)
    assert generate(30, 7) != generate(30, 8)


def test_step_counts_cycle_one_to_six() -> None:
    assert [p.steps for p in generate(12, 3)] == [1, 2, 3, 4, 5, 6] * 2


@pytest.mark.parametrize("seed", [0, 1, 16])
def test_answers_and_steps_match_an_independent_reading(seed: int) -> None:
    for p in generate(120, seed):
        assert solve(p.text) == (p.answer, p.steps), p.text
        assert p.answer > 0


def test_a_hand_checked_problem() -> None:
    # 31 liters + 28 more = 59: the first problem of the committed set, checked by hand.
    p = generate(1, 16)[0]
    assert p.text.startswith("Priya has 31 liters of water") and "collects 28 more" in p.text
    assert (p.answer, p.steps) == (59, 1)


def test_the_reader_catches_a_changed_number() -> None:
    p = generate(1, 16)[0]
    assert solve(p.text.replace("collects 28 more", "collects 29 more")) == (60, 1)


def test_steps_out_of_range_are_refused() -> None:
    with pytest.raises(ValueError):
        make_problem(random.Random(0), 7)


def test_committed_csv_is_what_the_command_writes(tmp_path: Path) -> None:
    out = tmp_path / "m.csv"
    cmd = [sys.executable, "-m", "bench.label_math", "--n", "240", "--seed", "16", "--out", str(out)]
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True)
    assert out.read_bytes() == (ROOT / "bench/data/mathword/mathword.csv").read_bytes()
    with out.open(encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert {r["weak"] for r in rows} == {"True", "False"}
    assert all((r["weak"] == "True") == (int(r["steps"]) < 3) for r in rows)


def test_pairwise_pairs_stay_within_groups() -> None:
    from bench.pairwise import pairs

    got = pairs([1, 0, 0, 1, 0], ["a", "a", "a", "b", "c"])
    assert sorted(got) == [(0, 1, "a"), (0, 2, "a")]  # b has no easy prompt, c no hard one


def test_pairwise_fit_learns_the_within_group_order() -> None:
    from bench.pairwise import fit_pairwise

    # Group "a" is easy on average and "b" hard, but within each group x decides: a pointwise fit would
    # lean on the group's base rate, the pairwise one only sees x's within-group order.
    rows = [{"x": float(v), "g": float(g == "b")} for v, g in
            [(0, "a"), (1, "a"), (2, "a"), (3, "a"), (0, "b"), (1, "b"), (2, "b"), (3, "b")]]  # fmt: skip
    y = [0, 0, 0, 1, 0, 1, 1, 1]
    model = fit_pairwise(rows, y, ["a"] * 4 + ["b"] * 4)
    assert model.weights["x"] > 0
    assert model.logit({"x": 3.0, "g": 0.0}) > model.logit({"x": 2.0, "g": 0.0})


def test_narrate_keeps_answers_and_adds_only_story() -> None:
    from bench.math_problems import narrate

    base = generate(60, 16)
    told = narrate(base, seed=1)
    assert told == narrate(base, seed=1)
    assert sum(a.text != b.text for a, b in zip(base, told, strict=True)) > 20
    for p in told:
        assert solve(p.text) == (p.answer, p.steps), p.text
