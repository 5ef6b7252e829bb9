"""How sure a model was of its answer, from the logprobs of the tokens it sampled."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

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
