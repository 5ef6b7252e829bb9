"""The `[routing]` section of models.toml: policy weights, keyword signals and cascade thresholds."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

_FORBID = ConfigDict(extra="forbid", frozen=True)


def check_regex(pattern: str, label: str) -> None:
    """Raise a config-friendly ValueError when `pattern` does not compile."""
    try:
        re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"{label} {pattern!r} is not a valid regular expression: {exc}") from None


def _compiles(patterns: list[str]) -> list[str]:
    for p in patterns:
        check_regex(p, "pattern")
    return patterns


class Signal(BaseModel):
    """Words, phrases and patterns; each hit moves the difficulty score by `weight` (negative: down).

    `words` match whole words case-insensitively (a trailing `*` matches a prefix: `analy*`); entries
    with a space are phrases. `patterns` are regular expressions, for what words cannot say.
    """

    model_config = _FORBID
    name: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,31}$")]
    weight: Annotated[float, Field(ge=-3.0, le=3.0)]
    words: list[Annotated[str, Field(min_length=1, max_length=64)]] = []
    patterns: Annotated[list[str], AfterValidator(_compiles)] = []
    # Matches beyond this count add nothing: one legal term is a signal, ten are not ten signals.
    max_hits: Annotated[int, Field(ge=1, le=20)] = 2

    @model_validator(mode="after")
    def _not_empty(self) -> Signal:
        if not self.words and not self.patterns:
            raise ValueError(f"signal '{self.name}' needs `words` or `patterns`")
        return self


class CascadeConfig(BaseModel):
    """When a local answer is judged too unsure, re-ask the next rung up."""

    model_config = _FORBID
    enabled: bool = True
    # Confidence is read from the sampled tokens' logprobs (natural log).
    min_mean_logprob: Annotated[float, Field(le=0)] = -1.2
    min_tail_logprob: Annotated[float, Field(le=0)] = -4.5
    tail_fraction: Annotated[float, Field(gt=0, le=1)] = 0.1
    # An answer the engine cut off (context full) before this many tokens is escalated too; a cut-off
    # caused by the client's own smaller max_tokens is not.
    min_length_tokens: Annotated[int, Field(ge=0)] = 32
    # Streaming: tokens buffered and judged before the first byte goes out; then the rung is committed.
    buffer_tokens: Annotated[int, Field(ge=1, le=512)] = 16


class RoutingConfig(BaseModel):
    model_config = _FORBID
    # Logistic difficulty score: sigmoid(bias + length + depth + keyword signals).
    bias: Annotated[float, Field(ge=-10, le=10)] = -0.6
    # Length contributes length_weight * log2(tokens / length_pivot_tokens), clipped to ±length_cap.
    length_weight: Annotated[float, Field(ge=0, le=5)] = 0.35
    length_pivot_tokens: Annotated[int, Field(ge=1)] = 120
    length_cap: Annotated[float, Field(ge=0, le=10)] = 1.5
    depth_weight: Annotated[float, Field(ge=0, le=5)] = 0.15
    signals: list[Signal] = []
    replace_default_signals: bool = False
    cascade: CascadeConfig = CascadeConfig()
    # Which difficulty score the policy uses: "heuristic" (the logistic above), "learned" (the scorer
    # shipped in the package) or a path to a `localroute train` artifact (relative to models.toml).
    scorer: Annotated[str, Field(min_length=1, max_length=4096)] = "heuristic"
    # Optional pin: the artifact's sha256 must be this one, or the gateway refuses to start.
    scorer_sha256: Annotated[str | None, Field(pattern=r"^[0-9a-f]{64}$")] = None
    # Conversations remembered (by a digest of each answer the gateway returned) so that a follow-up
    # is never sent to a lower rung than the one that answered before; 0: no stickiness.
    sticky_conversations: Annotated[int, Field(ge=0, le=10_000_000)] = 20_000
