"""What a request cost, and what it would have cost on the all-frontier baseline (USD).

Remote rungs cost their token prices. Local rungs cost the compute they really used, measured per
request (see `Price`): CPU-seconds reported by the llama.cpp worker, a share of GPU time for vLLM.
"""

from __future__ import annotations

from collections.abc import Mapping

from localroute.config.models import ModelConfig
from localroute.config.schema import Config


def attempt_cost(m: ModelConfig, usage: Mapping[str, int], compute_s: float) -> float:
    """One rung's call: tokens at its per-token prices plus its compute at its per-hour price."""
    p = m.price
    tokens = (
        usage.get("prompt_tokens", 0) * p.input_per_mtok
        + usage.get("completion_tokens", 0) * p.output_per_mtok
    )
    return tokens / 1e6 + p.compute_per_hour() * compute_s / 3600


def baseline_model(config: Config) -> ModelConfig:
    """The rung an all-frontier deployment would use: `[cost] baseline`, else the dearest per output
    token."""
    if config.cost.baseline is not None:
        named = config.model(config.cost.baseline)
        if named is not None:
            return named
    return max(config.ladder(), key=lambda m: (m.price.output_per_mtok, m.price.input_per_mtok, m.tier))


def baseline_cost(baseline: ModelConfig, usage: Mapping[str, int]) -> float:
    """The same tokens on the baseline model (`baseline_model`, resolved once by the caller). Token
    counts come from the rung that answered; the baseline's tokenizer would count somewhat
    differently, which is the estimate's known error."""
    return attempt_cost(baseline, usage, 0.0)


def savings_pct(cost: float, baseline: float) -> float | None:
    """Share of the baseline saved, in percent; None without a baseline to compare against."""
    return None if baseline <= 0 else 100.0 * (baseline - cost) / baseline
