"""A pairwise ranking objective for the learned scorer (an experiment of bench.scorer_search).

Within each group (subject, domain), every prompt the weak model missed is paired with prompts it got
right; the model is fitted so that the missed one scores higher: logistic loss on the score difference
(RankNet's loss for a linear scorer). Per-group APGR rewards exactly this within-group order, which the
pointwise label "weak wrong" only reaches through the group's base rate. Each group's pairs weigh the
same in total (times its source's weight), so a large subject does not dominate; at most `max_pairs`
pairs per group are sampled (seeded). Features as in `routing.fit`: dense standardised, hashed sparse.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence

from localroute.routing.fit import Linear, _numpy

MAX_PAIRS = 1500
STEPS = 300
LEARNING_RATE = 0.05


def pairs(
    y: Sequence[int], groups: Sequence[str], max_pairs: int = MAX_PAIRS, seed: int = 0
) -> list[tuple[int, int, str]]:
    """(hard, easy, group) index pairs: y[hard] == 1, y[easy] == 0, same group."""
    rng = random.Random(seed)
    by: dict[str, tuple[list[int], list[int]]] = {}
    for i, (label, g) in enumerate(zip(y, groups, strict=True)):
        by.setdefault(g, ([], []))[0 if label else 1].append(i)
    out: list[tuple[int, int, str]] = []
    for g in sorted(by):
        hard, easy = by[g]
        every = [(h, e) for h in hard for e in easy]
        if len(every) > max_pairs:
            every = rng.sample(every, max_pairs)
        out.extend((h, e, g) for h, e in every)
    return out


def fit_pairwise(
    rows: Sequence[Mapping[str, float]],
    y: Sequence[int],
    groups: Sequence[str],
    sample_weights: Sequence[float] | None = None,
    l2_dense: float = 1e-2,
    l2_hashed: float = 3e-3,
    max_pairs: int = MAX_PAIRS,
) -> Linear:
    """A linear scorer whose order within each group fits the pairs (no bias: only the order matters).
    Same features as `routing.fit.fit`: dense ones standardised, hashed (`h...`) ones sparse."""
    np = _numpy()
    n = len(rows)
    dense = sorted({k for r in rows for k in r if not k.startswith("h")})
    hashed = sorted({k for r in rows for k in r if k.startswith("h")})
    dcol, hcol = {k: i for i, k in enumerate(dense)}, {k: i for i, k in enumerate(hashed)}
    x = np.zeros((n, len(dense)))
    idx: list[int] = []
    val: list[float] = []
    row_of: list[int] = []
    for i, r in enumerate(rows):
        for k, v in r.items():
            if k in hcol:
                idx.append(hcol[k])
                val.append(v)
                row_of.append(i)
            else:
                x[i, dcol[k]] = v
    hi, hv, ro = np.array(idx, dtype=np.int64), np.array(val), np.array(row_of, dtype=np.int64)
    mu, sd = x.mean(0), x.std(0)
    sd[sd < 1e-9] = 1.0
    z = (x - mu) / sd
    ps = pairs(y, groups, max_pairs)
    if not ps:
        raise ValueError("no group holds both a hard and an easy prompt")
    sw = np.ones(n) if sample_weights is None else np.asarray(sample_weights, dtype=float)
    count: dict[str, int] = {}
    for _, _, g in ps:
        count[g] = count.get(g, 0) + 1
    h = np.array([p[0] for p in ps])
    e = np.array([p[1] for p in ps])
    pw = np.array([sw[a] / count[g] for a, _, g in ps])
    pw = pw / pw.sum()
    theta = [np.zeros(len(dense)), np.zeros(len(hashed))]
    m = [np.zeros_like(t) for t in theta]
    v2 = [np.zeros_like(t) for t in theta]
    b1, b2, eps = 0.9, 0.999, 1e-8
    for t in range(1, STEPS + 1):
        wd, wh = theta
        s = z @ wd + np.bincount(ro, weights=hv * wh[hi], minlength=n)
        coef = -pw / (1.0 + np.exp(s[h] - s[e]))  # d loss / d margin, per pair
        per_row = np.bincount(h, weights=coef, minlength=n) - np.bincount(e, weights=coef, minlength=n)
        gh = np.bincount(hi, weights=hv * per_row[ro], minlength=len(hashed))
        grads = [z.T @ per_row + l2_dense * wd, gh + l2_hashed * wh]
        for j, gr in enumerate(grads):
            m[j] = b1 * m[j] + (1 - b1) * gr
            v2[j] = b2 * v2[j] + (1 - b2) * gr * gr
            theta[j] = theta[j] - LEARNING_RATE * (m[j] / (1 - b1**t)) / (np.sqrt(v2[j] / (1 - b2**t)) + eps)
    wd, wh = theta
    raw = wd / sd
    weights = {k: float(c) for k, c in zip(dense, raw, strict=True)}
    weights.update({k: float(c) for k, c in zip(hashed, wh, strict=True) if abs(c) > 1e-6})
    return Linear(float(-(raw * mu).sum()), weights)
