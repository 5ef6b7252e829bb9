"""What happened to one request: every rung tried with its outcome, tokens, compute and cost, and who
answered. The router fills it in; the gateway turns it into headers and the request record."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
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
    # The answer came from outside the trusted networks (`x_localroute.untrusted`): not local.
    untrusted: bool = False

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
        compute = (
            _compute_s(result.get("x_localroute")) if m.engine in LOCAL_ENGINES else 0.0
        )  # only our engines measure
        self._charge(m, usage, compute)

    def settle_cut(self, m: ModelConfig, tally: Tally) -> None:
        """Charge the last attempt of `m` for what its stream reported before it was cut (the client
        left, the engine died, the router closed it to escalate): no usage chunk came."""
        usage = tally.usage()
        compute = tally.compute_s() if m.engine in LOCAL_ENGINES else 0.0
        self._charge(m, usage, compute)

    def _charge(self, m: ModelConfig, usage: dict[str, int], compute: float) -> None:
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


class Tally:
    """What a stream has reported on its way: the engine's running accounting (`x_localroute` on
    each chunk: compute and tokens so far) and the chunks that carried text, for a stream that ends
    without its usage chunk."""

    def __init__(self) -> None:
        self.settled = False  # a usage chunk came: the engine's own figures stand
        self.pieces = 0  # chunks that carried text or a tool call: the token count when nothing better
        self._last: Mapping[str, object] = {}

    @classmethod
    def of(cls, chunks: Sequence[ChatCompletionChunk]) -> Tally:
        tally = cls()
        for chunk in chunks:
            tally.feed(chunk)
        return tally

    def feed(self, chunk: ChatCompletionChunk) -> None:
        extra = chunk.get("x_localroute")
        if isinstance(extra, dict):
            self._last = extra
        for ch in chunk.get("choices") or ():
            delta: Mapping[str, object] = ch.get("delta") or {}
            if delta.get("content") or delta.get("tool_calls") or ch.get("text"):
                self.pieces += 1
                break

    def usage(self) -> dict[str, int]:
        counted = _counts(self._last.get("so_far"))
        if counted:
            return counted
        return {"prompt_tokens": 0, "completion_tokens": self.pieces, "total_tokens": self.pieces}

    def compute_s(self) -> float:
        return _compute_s(self._last)


def usage_of(result: ChatCompletion | ChatCompletionChunk) -> dict[str, int]:
    return _counts(result.get("usage"))


def _counts(usage: object) -> dict[str, int]:
    if not isinstance(usage, dict):
        return {}
    # Counts from an engine or a provider: whole, non-negative and sane, or not counted at all.
    return {k: v for k, v in usage.items() if type(v) is int and 0 <= v < 2**31}


def _compute_s(extra: object) -> float:
    """`compute_s` of an engine's `x_localroute` accounting, if it is a plausible figure."""
    value = extra.get("compute_s") if isinstance(extra, Mapping) else None
    if not isinstance(value, int | float) or isinstance(value, bool):
        return 0.0
    return float(value) if 0 <= value < 86_400 * 365 else 0.0  # finite, plausible seconds, or nothing
