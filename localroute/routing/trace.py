"""What happened to one request: every rung tried with its outcome, tokens, compute and cost, and who
answered. The router fills it in; the gateway turns it into headers and the request record."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from localroute.config.models import LOCAL_ENGINES, ModelConfig
from localroute.observe import tracing
from localroute.observe.cost import attempt_cost
from localroute.protocol.records import Attempt, Outcome
from localroute.protocol.wire import ChatCompletion, ChatCompletionChunk
from localroute.routing.policy import Decision


@dataclass
class Trace:
    """What happened to one request: every rung tried, and who answered. Feeds headers and logs."""

    decision: Decision
    route: str
    model: str = ""
    tier: int = 0
    escalations: int = 0
    attempts: list[Attempt] = field(default_factory=list)
    usage: dict[str, int] = field(default_factory=dict)
    moves: list[str] = field(default_factory=list)  # each escalation or fallback, by route
    cost_usd: float = 0.0  # every rung tried, escalated ones included
    compute_s: float = 0.0  # local compute measured by the engines (CPU- or GPU-seconds)
    output_valid: bool | None = None  # the answer kept the JSON / tool-call contract; None: none asked
    baseline_usd: float | None = None  # set by a router whose baseline is not the chat one (embeddings)
    # Each local answer judged by the cascade: model -> its confidence signals (`confidence.SIGNALS`).
    judgements: dict[str, dict[str, float]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        tracing.mark("decide", time.monotonic())

    def attempt(
        self,
        m: ModelConfig,
        outcome: Outcome,
        reason: str | None,
        t0: float,
        result: ChatCompletion | ChatCompletionChunk | None = None,
    ) -> None:
        """Record a rung's call; `result` (its answer, or its last stream chunk) carries what it used."""
        ms = round((time.monotonic() - t0) * 1000, 1)
        remote = m.engine not in LOCAL_ENGINES
        tracing.mark("attempt", t0, getattr(m, "model", None) if remote else None)
        self.attempts.append(
            {"model": m.name, "outcome": outcome, "reason": reason, "ms": ms, "remote": remote,
             "tokens": {"prompt": 0, "completion": 0}, "compute_s": 0.0, "cost_usd": 0.0}
        )  # fmt: skip
        if result is not None:
            self.settle(m, result)

    def settle(self, m: ModelConfig, result: ChatCompletion | ChatCompletionChunk) -> None:
        """Charge the last attempt for the tokens and compute that `result` reports (a stream's
        usage arrives in its last chunk, after the attempt was recorded)."""
        usage = usage_of(result)
        compute = _compute_s(result) if m.engine in LOCAL_ENGINES else 0.0  # only our engines measure
        cost = attempt_cost(m, usage, compute)
        a = next((a for a in reversed(self.attempts) if a["model"] == m.name), None)
        if a is None:
            return
        self.cost_usd += cost - a["cost_usd"]
        self.compute_s += compute - a["compute_s"]
        a.update(
            {
                "tokens": {
                    "prompt": usage.get("prompt_tokens", 0),
                    "completion": usage.get("completion_tokens", 0),
                },
                "compute_s": round(compute, 6),
                "cost_usd": round(cost, 10),
            }
        )

    def moved(self, route: str) -> None:
        tracing.mark("move", time.monotonic(), route)
        self.route = route
        self.escalations += 1
        self.moves.append(route)

    def headers(self) -> dict[str, str]:
        return {
            "x-localroute-model": self.model,
            "x-localroute-tier": str(self.tier),
            "x-localroute-route": self.route,
            "x-localroute-escalations": str(self.escalations),
        } | self._confidence_header()

    def _confidence_header(self) -> dict[str, str]:
        """The first judged answer's signals, `model; mean=-0.41; p10=-1.9; margin=2.3; ...`."""
        if not self.judgements:
            return {}
        model, judged = next(iter(self.judgements.items()))
        parts = [f"{k}={v:g}" for k, v in judged.items()]
        return {"x-localroute-confidence": "; ".join([model, *parts])}


def usage_of(result: ChatCompletion | ChatCompletionChunk) -> dict[str, int]:
    usage = result.get("usage")
    if not isinstance(usage, dict):
        return {}
    # Counts from an engine or a provider: whole, non-negative and sane, or not counted at all.
    return {k: v for k, v in usage.items() if type(v) is int and 0 <= v < 2**31}


def _compute_s(result: ChatCompletion | ChatCompletionChunk) -> float:
    extra = result.get("x_localroute")
    value = extra.get("compute_s") if isinstance(extra, dict) else None
    if not isinstance(value, int | float) or isinstance(value, bool):
        return 0.0
    return float(value) if 0 <= value < 86_400 * 365 else 0.0  # finite, plausible seconds, or nothing
