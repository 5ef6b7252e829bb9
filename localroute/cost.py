"""What a request cost, and what it would have cost on the all-frontier baseline (USD)."""

from __future__ import annotations

from collections.abc import Mapping

from localroute.config import Config, ModelConfig


def request_cost(m: ModelConfig, usage: Mapping[str, int], seconds: float) -> float:
    """Tokens at the rung's per-token prices, plus its per-hour price for the time it was busy."""
    p = m.price
    tokens = (
        usage.get("prompt_tokens", 0) * p.input_per_mtok
        + usage.get("completion_tokens", 0) * p.output_per_mtok
    )
    return tokens / 1e6 + p.per_hour * seconds / 3600


def baseline_model(config: Config) -> ModelConfig:
    """The rung an all-frontier deployment would use: the dearest per output token."""
    return max(config.models, key=lambda m: (m.price.output_per_mtok, m.price.input_per_mtok, m.tier))


def baseline_cost(config: Config, usage: Mapping[str, int]) -> float:
    return request_cost(baseline_model(config), usage, 0.0)
