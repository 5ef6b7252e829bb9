"""Structural features of a request: how it is built, not what it is about.

Subject words (hashed n-grams, word vectors) learn which subjects are hard; that does not transfer to
a subject never seen. These features describe the shape of the question, which does: how much of it
is numbers and arithmetic, whether it asks for the exception ("Which is NOT..."), whether it weighs two
statements, how long and how alike its options are, how many sentences (steps) it states, units,
code, formulas. All read the same bounded window the heuristic scans. An experiment of
`bench.scorer_search`, not part of the scorer's recipe: they did not beat length on held-out MMLU
subjects (docs/routing.md) and cost ~190 µs at 2,000 tokens as written.
"""

from __future__ import annotations

import itertools
import math

HEAD_CHARS, TAIL_CHARS = 800, 400
_OPTION_MARKS = ("A.", "B.", "C.", "D.", "A)", "B)", "C)", "D)")
_NEGATIONS = (" NOT ", " EXCEPT", " LEAST ", " FALSE", " INCORRECT", " NEVER ")
_UNITS = frozenset(
    "m s kg g mg km cm mm ms ns hz khz mhz ghz j kj ev mev n pa kpa atm k mol l ml v w kw a ohm c f "
    "mph kmh ft lb lbs oz in yd mi sec min hr hrs % $ usd eur".split()
)
_OPS = frozenset("=+*/^<>")
_CODE = ("def ", "return ", "{", "}", "();", "==", "!=", "int ", "print(", "```", "->", "#include", "[i]")
_DIGITS = frozenset("0123456789")
NAMES = ("x:digits", "x:nums", "x:ops", "x:neg", "x:stmt", "x:opts", "x:optlen", "x:optspread",
         "x:optnum", "x:optshare", "x:sent", "x:units", "x:code", "x:above")  # fmt: skip


def raw_window(text: str) -> str:
    if len(text) > HEAD_CHARS + TAIL_CHARS:
        return text[:HEAD_CHARS] + "\n" + text[-TAIL_CHARS:]
    return text


def _numeric(s: str) -> bool:
    t = s.replace(",", "").replace(".", "").replace("-", "").replace(" ", "").replace("/", "")
    return bool(t) and sum(c in _DIGITS for c in t) * 2 >= len(t)


def structural(text: str) -> dict[str, float]:
    """The structural features of one (last user) message."""
    w = raw_window(text)
    n = max(len(w), 1)
    digits = sum(map(w.count, "0123456789"))
    toks = w.split()
    nums = sum(1 for t in toks if t[:1] in _DIGITS or (t[:1] in "-$" and t[1:2] in _DIGITS))
    ops = sum(1 for t in toks if len(t) == 1 and t in _OPS) + w.count("^") + w.count("\\")
    # A unit counts right after a number ("3 kg", "12 m/s"): alone, "a", "in" and "m" are words.
    units = sum(
        1 for p, t in itertools.pairwise(toks) if p[:1] in _DIGITS and t.strip(".,;:()?").lower() in _UNITS
    )
    padded = f" {w} "
    neg = any(k in padded for k in _NEGATIONS)
    stmt = "Statement 1" in w or "statement 1" in w or ("I." in w and "II." in w)
    opts: list[str] = []
    stem_lines: list[str] = []
    for line in w.splitlines():
        s = line.strip()
        if s[:2] in _OPTION_MARKS:
            opts.append(s[2:].strip())
        elif s and s != "Answer:":
            stem_lines.append(s)
    stem = " ".join(stem_lines)
    out = {
        "x:digits": digits / n,
        "x:nums": math.log1p(nums),
        "x:ops": math.log1p(ops),
        "x:neg": float(neg),
        "x:stmt": float(stmt),
        "x:sent": math.log1p(stem.count(". ") + stem.count("? ") + stem.count("; ")),
        "x:units": math.log1p(units),
        "x:code": float(sum(1 for c in _CODE if c in w) >= 2),
        "x:above": float("of the above" in w or "both " in w.lower()[-TAIL_CHARS:]),
        "x:opts": float(len(opts) >= 2),
    }
    if len(opts) >= 2:
        lens = [len(o) for o in opts]
        mean = sum(lens) / len(lens)
        sd = math.sqrt(sum((x - mean) ** 2 for x in lens) / len(lens))
        sets = [set(o.lower().split()) for o in opts]
        common = set.intersection(*sets) if all(sets) else set()
        union = set.union(*sets)
        out["x:optlen"] = math.log1p(mean)
        out["x:optspread"] = sd / (mean + 1.0)
        out["x:optnum"] = sum(map(_numeric, opts)) / len(opts)
        out["x:optshare"] = len(common) / len(union) if union else 0.0
    return out
