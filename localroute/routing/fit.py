"""Fit the learned scorer: L2-regularised logistic regression on pre-featurised rows (numpy, training only).

Rows are the `dict[str, float]` that `features.Featuriser.featurise` returns, so a store that keeps
features and no prompt text can be trained on. Hashed columns (`h<bucket>`) stay sparse; the other
columns are standardised for the fit and the scaling is folded back into the weights, so the saved
model applies to raw features.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

L2_DENSE = 1e-2
L2_HASHED = 3e-3
STEPS = 300
LEARNING_RATE = 0.05


@dataclass(frozen=True)
class Linear:
    """A logistic model on named features: logit = bias + sum(weights[k] * x[k])."""

    bias: float
    weights: Mapping[str, float]

    def logit(self, row: Mapping[str, float]) -> float:
        w = self.weights
        return self.bias + sum(w.get(k, 0.0) * v for k, v in row.items())


def _numpy() -> Any:
    try:
        import numpy as np
    except ImportError:
        from localroute.errors import ConfigError

        raise ConfigError("training a scorer needs numpy: pip install 'localroute[train]'") from None
    return np


def fit(
    rows: Sequence[Mapping[str, float]],
    labels: Sequence[int],
    sample_weights: Sequence[float] | None = None,
    l2_dense: float = L2_DENSE,
    l2_hashed: float = L2_HASHED,
    steps: int = STEPS,
    groups: Sequence[str] | None = None,
) -> Linear:
    """Fit on rows labelled 1 (needs the stronger model) or 0. Deterministic (full-batch Adam).

    With `groups`, each group gets its own intercept during the fit (dropped from the model: the bias
    becomes their weighted mean): the features then learn what is hard *within* a group, not which
    groups are hard, which is what transfers to a group never seen."""
    np = _numpy()
    if len(rows) != len(labels) or not rows:
        raise ValueError("rows and labels must be non-empty and of equal length")
    dense = sorted({k for r in rows for k in r if not k.startswith("h")})
    hashed = sorted({k for r in rows for k in r if k.startswith("h")})
    dcol = {k: i for i, k in enumerate(dense)}
    hcol = {k: i for i, k in enumerate(hashed)}
    n = len(rows)
    xd = np.zeros((n, len(dense)))
    idx: list[int] = []
    val: list[float] = []
    ptr = [0]
    for i, r in enumerate(rows):
        for k, v in r.items():
            if k in hcol:
                idx.append(hcol[k])
                val.append(v)
            else:
                xd[i, dcol[k]] = v
        ptr.append(len(idx))
    hi, hv = np.array(idx, dtype=np.int64), np.array(val)
    row_of = np.repeat(np.arange(n), np.diff(np.array(ptr)))
    mu, sd = xd.mean(0), xd.std(0)
    sd[sd < 1e-9] = 1.0
    z = (xd - mu) / sd
    names = sorted(set(groups)) if groups is not None else []
    if groups is not None:
        gcol = {g: i for i, g in enumerate(names)}
        onehot = np.zeros((n, len(names)))
        onehot[np.arange(n), [gcol[g] for g in groups]] = 1.0
        z = np.hstack([z, onehot])
    y = np.asarray(labels, dtype=float)
    sw = np.ones(n) if sample_weights is None else np.asarray(sample_weights, dtype=float)
    sw = sw / sw.sum()
    p0 = float(np.clip((y * sw).sum(), 1e-3, 1 - 1e-3))
    theta = [np.array([np.log(p0 / (1 - p0))]), np.zeros(z.shape[1]), np.zeros(len(hashed))]
    m = [np.zeros_like(t) for t in theta]
    v2 = [np.zeros_like(t) for t in theta]
    b1, b2, eps = 0.9, 0.999, 1e-8
    for t in range(1, steps + 1):
        b, wd, wh = theta
        logit = b[0] + z @ wd + np.bincount(row_of, weights=hv * wh[hi], minlength=n)
        g = (1.0 / (1.0 + np.exp(-logit)) - y) * sw
        grads = [
            np.array([g.sum()]),
            z.T @ g + l2_dense * wd,
            np.bincount(hi, weights=hv * g[row_of], minlength=len(hashed)) + l2_hashed * wh,
        ]
        for j, gr in enumerate(grads):
            m[j] = b1 * m[j] + (1 - b1) * gr
            v2[j] = b2 * v2[j] + (1 - b2) * gr * gr
            mhat, vhat = m[j] / (1 - b1**t), v2[j] / (1 - b2**t)
            theta[j] = theta[j] - LEARNING_RATE * mhat / (np.sqrt(vhat) + eps)
    b, wd, wh = theta
    if names:
        share = np.bincount([gcol[g] for g in groups or ()], weights=sw, minlength=len(names))
        b = b + float((wd[len(dense) :] * share).sum())
        wd = wd[: len(dense)]
    raw = wd / sd
    weights = {k: float(w) for k, w in zip(dense, raw, strict=True)}
    weights.update({k: float(w) for k, w in zip(hashed, wh, strict=True) if abs(w) > 1e-6})
    return Linear(float(b[0] - (raw * mu).sum()), weights)
