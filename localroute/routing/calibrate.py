"""Per local model, an escalation threshold calibrated from this deployment's feedback.

For each confidence signal the rows of that model are ranked (AUROC of "lower signal, stronger model
needed"); the best-separating signal gets an isotonic fit (pool-adjacent-violators) of P(stronger
needed | signal), and the threshold is where that probability falls to `escalate_above`. Pure Python:
a few thousand rows, once at startup.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from localroute.observe.feedback import Labelled
from localroute.routing.confidence import SIGNALS

MIN_EACH = 10  # rows of each outcome (needed / not needed) a model needs besides `min_rows`


@dataclass(frozen=True)
class Calibration:
    """Escalate `model`'s answer when `signal` < `cutoff`; fitted on `rows` rows (AUROC `auroc`)."""

    model: str
    signal: str
    cutoff: float
    auroc: float
    rows: int


def auroc(scores: Sequence[float], labels: Sequence[bool]) -> float:
    """P(a positive scores above a negative), ties counted half (Mann-Whitney). 0.5 when undefined."""
    pos = sum(labels)
    neg = len(labels) - pos
    if not pos or not neg:
        return 0.5
    order = sorted(range(len(scores)), key=lambda i: scores[i])
    ranks = [0.0] * len(scores)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and scores[order[j + 1]] == scores[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    rank_sum = sum(r for r, y in zip(ranks, labels, strict=True) if y)
    return (rank_sum - pos * (pos + 1) / 2) / (pos * neg)


def isotonic(xs: Sequence[float], ys: Sequence[float]) -> list[tuple[float, float]]:
    """The non-decreasing least-squares fit of ys on xs: (x, fitted y) for each x, sorted by x."""
    pairs = sorted(zip(xs, ys, strict=True))
    blocks: list[list[float]] = []  # [sum, count, last x]
    for x, y in pairs:
        blocks.append([y, 1.0, x])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] > blocks[-1][0] / blocks[-1][1]:
            s, n, last = blocks.pop()
            blocks[-1][0] += s
            blocks[-1][1] += n
            blocks[-1][2] = last
    out: list[tuple[float, float]] = []
    it = iter(pairs)
    for s, n, _ in blocks:
        for _ in range(int(n)):
            out.append((next(it)[0], s / n))
    return out


def fit(model: str, rows: Sequence[Labelled], escalate_above: float) -> Calibration | None:
    """The best-separating signal of `model`'s rows and its cutoff; None if no signal separates."""
    best: tuple[float, str] | None = None
    for name in SIGNALS:
        have = [r for r in rows if name in r.signals]
        if len(have) < len(rows):
            continue
        score = auroc([-r.signals[name] for r in have], [r.label >= 0.5 for r in have])
        if best is None or score > best[0]:
            best = (score, name)
    if best is None or best[0] <= 0.5:
        return None
    score, name = best
    # P(needed) rises as the signal falls: fit on -signal, then read the cutoff back in signal units.
    fitted = isotonic([-r.signals[name] for r in rows], [r.label for r in rows])
    sure = [-x for x, p in fitted if p <= escalate_above]
    cutoff = min(sure) if sure else math.inf
    return Calibration(model, name, cutoff, round(score, 4), len(rows))


def calibrate(rows: Iterable[Labelled], min_rows: int, escalate_above: float) -> dict[str, Calibration]:
    """A calibration per local model with at least `min_rows` judged, labelled answers and at least
    `MIN_EACH` of each outcome; models with fewer keep the `[routing.cascade]` thresholds."""
    by_model: dict[str, list[Labelled]] = {}
    for r in rows:
        if r.judged is not None and r.signals:
            by_model.setdefault(r.judged, []).append(r)
    out: dict[str, Calibration] = {}
    for model, have in by_model.items():
        needed = sum(r.label >= 0.5 for r in have)
        if len(have) < min_rows or needed < MIN_EACH or len(have) - needed < MIN_EACH:
            continue
        c = fit(model, have, escalate_above)
        if c is not None:
            out[model] = c
    return out
