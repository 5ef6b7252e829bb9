"""How sure a model was of its answer, from the logprobs of the tokens it sampled."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, get_args

from localroute.config.models import LlamaCppModel, ModelConfig, SignalName
from localroute.config.routing import CascadeConfig


@dataclass(frozen=True)
class Confidence:
    """Mean, minimum and low-tail mean (natural-log probabilities) over `n` sampled tokens."""

    mean: float
    minimum: float
    tail: float
    n: int

    def describe(self) -> str:
        return f"mean {self.mean:.2f}, tail {self.tail:.2f}, min {self.minimum:.2f} over {self.n} tokens"


def measure(logprobs: Sequence[float], tail_fraction: float) -> Confidence | None:
    """None when there is nothing to judge (no tokens)."""
    values = [x for x in logprobs if math.isfinite(x)]
    if not values:
        return None
    k = max(1, math.ceil(len(values) * tail_fraction))
    low = sorted(values)[:k]
    return Confidence(sum(values) / len(values), low[0], sum(low) / k, len(values))


SIGNALS: tuple[str, ...] = get_args(SignalName)


def quantile(ordered: Sequence[float], q: float) -> float:
    """The `q` quantile of sorted values, linearly interpolated (numpy's default)."""
    pos = (len(ordered) - 1) * q
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def signals(logprobs: Sequence[float], tail_fraction: float, margin: float | None) -> dict[str, float]:
    """Every confidence signal of one answer, by name (`SIGNALS`): mean, low-tail mean and minimum of
    the sampled tokens' logprobs, their 10th/25th/50th percentiles, and `margin`, the logprob gap
    between the two likeliest tokens at the first answer token. Empty when there is nothing to judge."""
    values = sorted(x for x in logprobs if math.isfinite(x))
    if not values:
        return {}
    k = max(1, math.ceil(len(values) * tail_fraction))
    out = {"mean": sum(values) / len(values), "tail": sum(values[:k]) / k, "min": values[0]}
    out |= {f"p{round(q * 100)}": quantile(values, q) for q in (0.10, 0.25, 0.5)}
    if margin is not None and math.isfinite(margin):
        out["margin"] = margin
    return {name: round(v, 5) for name, v in out.items()} | {"n": float(len(values))}


def first_margin(choice: Mapping[str, Any]) -> float | None:
    """The gap between the two likeliest tokens at the first sampled token of an OpenAI choice (its
    `logprobs.content[0].top_logprobs`); None when the engine gave fewer than two alternatives."""
    lp = choice.get("logprobs")
    content = lp.get("content") if isinstance(lp, Mapping) else None
    if not isinstance(content, Sequence) or not content or not isinstance(content[0], Mapping):
        return None
    tops = content[0].get("top_logprobs")
    if not isinstance(tops, Sequence):
        return None
    values = sorted(
        (float(t["logprob"]) for t in tops if isinstance(t, Mapping) and "logprob" in t), reverse=True
    )
    return values[0] - values[1] if len(values) >= 2 else None


def too_unsure(c: Confidence | None, cfg: CascadeConfig) -> bool:
    if c is None:
        return False
    return c.mean < cfg.min_mean_logprob or c.tail < cfg.min_tail_logprob


def logprobs_of(choice: Mapping[str, Any]) -> list[float]:
    """The sampled tokens' logprobs from an OpenAI choice (completion or chunk); [] when absent."""
    lp = choice.get("logprobs")
    if not isinstance(lp, Mapping):
        return []
    content = lp.get("content")
    if not isinstance(content, Iterable):
        return []
    return [float(e["logprob"]) for e in content if isinstance(e, Mapping) and "logprob" in e]


def configured(m: ModelConfig) -> tuple[str, float] | None:
    """The rung's own (signal, cutoff) from models.toml (`confidence`, written by `localroute init`)."""
    if isinstance(m, LlamaCppModel) and m.confidence is not None:
        return m.confidence.signal, m.confidence.below
    return None
