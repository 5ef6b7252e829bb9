"""Scoring helpers for bench.cascade_quality: routed quality and cost curves, AUROC, binomial tests.

Curves reuse localroute.routing.evaluate (RouteLLM's APGR and CPT, ties routed fractionally). Two ways to pay:
a *cascade* runs the local model on every request and pays the remote rung on top for those it
escalates; a *pre-router* (policy, length, random) decides first and pays one rung per request.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

from localroute.routing.evaluate import (
    QUALITY_TARGET,
    apgr,
    first_share,
    pgr_curve,
    quality_curve,
    routed_sums,
)

PERMUTATIONS = 20


@dataclass(frozen=True)
class Costs:
    local: tuple[float, ...]  # USD per request on the local rung
    remote: tuple[float, ...]  # USD per request on the remote rung


@dataclass(frozen=True)
class Row:
    name: str
    apgr: float
    cpt50: float | None
    cpt80: float | None
    local_at_95: float  # share served locally at the smallest escalation reaching 95 % of q_strong
    saved_at_95: float  # 1 - cost there / cost of sending everything to the remote rung
    auroc: float | None  # of the router's "easy for the local model" ranking vs local correctness
    quality: tuple[float, ...]


def auroc(conf: Sequence[float], correct: Sequence[bool]) -> float:
    """P(a right answer's confidence > a wrong one's), ties counted 1/2 (Mann-Whitney U)."""
    order = sorted(range(len(conf)), key=lambda i: conf[i])
    ranks = [0.0] * len(conf)
    i = 0
    while i < len(order):
        j = i
        while j < len(order) and conf[order[j]] == conf[order[i]]:
            j += 1
        for k in range(i, j):
            ranks[order[k]] = (i + j + 1) / 2  # mean 1-based rank of the tie group
        i = j
    pos = sum(correct)
    neg = len(correct) - pos
    if pos == 0 or neg == 0:
        return float("nan")
    u = sum(r for r, c in zip(ranks, correct, strict=True) if c) - pos * (pos + 1) / 2
    return u / (pos * neg)


def auroc_ci(
    conf: Sequence[float], correct: Sequence[bool], seed: int, reps: int = 1000
) -> tuple[float, float]:
    """Percentile bootstrap 95 % interval of the AUROC."""
    rng = random.Random(seed)
    n, vals = len(conf), []
    for _ in range(reps):
        idx = [rng.randrange(n) for _ in range(n)]
        v = auroc([conf[i] for i in idx], [correct[i] for i in idx])
        if not math.isnan(v):
            vals.append(v)
    vals.sort()
    return vals[int(0.025 * len(vals))], vals[int(0.975 * len(vals)) - 1]


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    p = k / n
    mid = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return mid - half, mid + half


def binom_sf(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p): one-sided p-value of doing better than chance."""
    return sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k, n + 1))


def _curves(
    scores: Sequence[float], weak: Sequence[bool], strong: Sequence[bool], costs: Costs, cascade: bool
) -> tuple[list[float], list[float]]:
    delta = list(costs.remote) if cascade else [r - x for r, x in zip(costs.remote, costs.local, strict=True)]
    base = sum(costs.local)
    return quality_curve(scores, weak, strong), [base + d for d in routed_sums(scores, delta)]


def route(
    name: str,
    scores: Sequence[float],
    weak: Sequence[bool],
    strong: Sequence[bool],
    costs: Costs,
    *,
    cascade: bool,
    seed: int = 0,
) -> Row:
    """Metrics of sending the highest-`scores` requests to the strong rung first.

    name "random" ignores `scores` and averages PERMUTATIONS seeded orders, as `localroute eval` does.
    """
    n = len(weak)
    if name == "random":
        runs = [
            _curves(random.Random(seed + i).sample(range(n), n), weak, strong, costs, cascade)
            for i in range(PERMUTATIONS)
        ]
        q = [sum(v) / len(runs) for v in zip(*(r[0] for r in runs), strict=True)]
        c = [sum(v) / len(runs) for v in zip(*(r[1] for r in runs), strict=True)]
    else:
        q, c = _curves(scores, weak, strong, costs, cascade)
    q_weak, q_strong = q[0], sum(strong) / n
    pgr = pgr_curve(q, q_weak, q_strong)
    share = first_share(q, QUALITY_TARGET * q_strong)
    x = 1.0 if share is None else share
    saved = 1 - c[round(x * n)] / sum(costs.remote)
    roc = None if name in ("random", "oracle") else auroc([-s for s in scores], weak)
    return Row(name, apgr(pgr), first_share(pgr, 0.5), first_share(pgr, 0.8), 1 - x, saved, roc, tuple(q))


def pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"
