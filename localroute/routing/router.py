"""Executes a routing decision: call the rung, judge the answer, escalate or fall back, and record
what happened. The decision itself is the pure policy's (`policy.py`)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncGenerator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio

from localroute.config.models import LOCAL_ENGINES, ModelConfig, RemoteModel
from localroute.config.schema import Config
from localroute.errors import APIError, EngineUnavailableError
from localroute.privacy.detect import Detector
from localroute.privacy.guard import Privacy, PrivacyViolationError, redact_body
from localroute.privacy.trust import untrusted
from localroute.protocol.backend import Backend
from localroute.protocol.chat import ChatCompletionRequest
from localroute.protocol.records import Attempt
from localroute.protocol.wire import ChatCompletion, ChatCompletionChunk
from localroute.routing.confidence import configured, first_margin, logprobs_of, measure, signals, too_unsure
from localroute.routing.contract import Assembler, broken, has_contract
from localroute.routing.deciding import decide
from localroute.routing.failures import before, fail_closed, failure_route, outcome
from localroute.routing.policy import NO_HINTS, Cold, Decision, Hints, Policy
from localroute.routing.sticky import Conversations
from localroute.routing.trace import Tally, Trace, usage_of

Chunks = AsyncGenerator[ChatCompletionChunk, None]
Answer = TypeVar("Answer", ChatCompletion, ChatCompletionChunk)


@dataclass
class _Held:
    """A local stream judged too unsure, kept open in case every rung above it fails."""

    model: ModelConfig
    chunks: Chunks
    buffered: list[ChatCompletionChunk]
    done: bool


class Router:
    def __init__(
        self,
        config: Config,
        backends: Mapping[str, Backend],
        detector: Detector,
        policy: Policy | None = None,
        thresholds: Mapping[str, tuple[str, float]] | None = None,
    ):
        self.config = config
        self.backends = backends
        self.detector = detector  # the app's one Detector: it redacts what a public override sends
        self.policy = policy or Policy(config)
        self.cascade = config.routing.cascade
        self.conversations = Conversations(config.routing.sticky_conversations)
        # Per local model, a threshold calibrated from feedback: escalate when `signal` < `cutoff`.
        self.thresholds: Mapping[str, tuple[str, float]] = thresholds or {}

    def _rungs(self) -> tuple[set[str], dict[str, Cold]]:
        """Rungs that cannot run here, and local rungs not loaded now with what their last load took
        (the policy's availability and warm/cold inputs)."""
        unavailable: set[str] = set()
        cold: dict[str, Cold] = {}
        for n, b in self.backends.items():
            brief = b.brief()
            if brief.state == "unavailable":
                unavailable.add(n)
            elif brief.local and brief.state != "ready":
                cold[n] = Cold(brief.load_seconds)
        return unavailable, cold

    def decide(self, req: ChatCompletionRequest, hints: Hints = NO_HINTS, private: bool = False,
               caller: str = "", touch: bool = True) -> Decision:  # fmt: skip
        """The policy's decision; for a private request remote rungs do not exist. `caller` keys the
        conversation stickiness; `touch=False` (explain) leaves its map as it was."""
        unavailable, cold = self._rungs()
        floor = self.conversations.floor(req, caller, touch) if req.model == "auto" else None
        return decide(self.config, self.policy, req, hints, private, unavailable, cold, floor)

    def _chain(self, d: Decision, req: ChatCompletionRequest, private: bool) -> list[ModelConfig]:
        names = [d.model, *d.escalation] if req.model == "auto" else [d.model]
        chain = [m for n in names if (m := self.config.model(n)) is not None]
        return [m for m in chain if m.engine in LOCAL_ENGINES] if private else chain

    def _judges(self, m: ModelConfig, has_next: bool) -> bool:
        return self.cascade.enabled and has_next and m.engine in LOCAL_ENGINES

    def _body(
        self, req: ChatCompletionRequest, m: ModelConfig, judge: bool, privacy: Privacy | None = None
    ) -> dict[str, Any]:
        if isinstance(m, RemoteModel):  # as the client sent it: no limit the client did not set
            body = req.remote_body(m.name, m.max_tokens_param)
        else:
            # A limit past the model's whole context can never be reached: clamp it (the engine stops
            # when the context is full, `finish_reason: length`) rather than pass a number it may refuse.
            body = req.engine_body(m.name, min(req.output_limit() or m.default_max_tokens, m.n_ctx))
        # `redact`: a request made public over detected data (the only public one that carries any)
        # goes remote with typed placeholders in place of the data. Private ones never go remote.
        overridden = privacy is not None and privacy.reason == "override" and not privacy.private
        if overridden and self.config.privacy.redact and m.engine not in LOCAL_ENGINES:
            redact_body(body, self.detector)
        if judge:  # two alternatives at least: the first token's top-2 margin is a signal
            body["logprobs"] = True
            body["top_logprobs"] = max(2, req.top_logprobs or 0)
        if req.stream:  # always ask for usage: the audit log counts tokens; the client gets it if asked
            # A provider gets the client's other stream options too; a local engine has no use for them.
            kept = body.get("stream_options", {}) if isinstance(m, RemoteModel) else {}
            body["stream_options"] = {**kept, "include_usage": True}
        return body

    def _verdict(
        self,
        m: ModelConfig,
        logprobs: list[float],
        margin: float | None,
        finish: str | None,
        tokens: int,
        asked: int,
        trace: Trace,
    ) -> str | None:
        judged = signals(logprobs, self.cascade.tail_fraction, margin)
        trace.judgements[m.name] = judged
        # Cut off early by the engine's context, not by the client's own max_tokens.
        if finish == "length" and tokens < min(self.cascade.min_length_tokens, asked):
            return "length"
        calibrated = self.thresholds.get(m.name) or configured(m)
        if calibrated is not None and calibrated[0] in judged:  # from feedback, else from init
            return "low_confidence" if judged[calibrated[0]] < calibrated[1] else None
        if too_unsure(measure(logprobs, self.cascade.tail_fraction), self.cascade):
            return "low_confidence"
        return None

    def _finish(self, item: Answer, m: ModelConfig, req: ChatCompletionRequest) -> Answer:
        item["model"] = m.name
        item.pop("x_localroute", None)  # engine accounting, not for the client
        keep = req.top_logprobs or 0
        for ch in item.get("choices") or ():
            if not req.logprobs:
                ch.pop("logprobs", None)
            elif isinstance(lp := ch.get("logprobs"), dict):  # the cascade's alternatives trimmed off
                for e in lp.get("content") or ():
                    if isinstance(e, dict) and len(e.get("top_logprobs") or ()) > keep:
                        e["top_logprobs"] = e["top_logprobs"][:keep]
        return item

    # -- non-streaming ---------------------------------------------------------------------------

    async def complete(
        self,
        req: ChatCompletionRequest,
        hints: Hints = NO_HINTS,
        privacy: Privacy | None = None,
        attempts: list[Attempt] | None = None,
        deadline: float | None = None,
        caller: str = "",
    ) -> tuple[ChatCompletion, Trace]:
        """Serve `req`. Every rung tried is appended to `attempts` too: the caller's record of them
        when this raises (the audit log lists the rungs a failed request tried)."""
        private = privacy is not None and privacy.private
        if req.model == "auto":
            await self.conversations.prefetch(req, caller)  # what other replicas answered ([state] url)
        d = self.decide(req, hints, private, caller)
        trace = Trace(d, d.route, attempts=[] if attempts is None else attempts)
        chain = self._chain(d, req, private)
        contract = has_contract(req)
        end = len(chain) - 1  # the last rung proper; a retry for a broken contract may follow it
        if contract and chain[-1].engine in LOCAL_ENGINES:
            chain.append(chain[-1])  # one local retry before an answer that breaks the contract stands
        kept: tuple[ChatCompletion, ModelConfig] | None = None
        for i, m in enumerate(chain):
            last = i >= end
            judge = self._judges(m, not last)
            t0 = time.monotonic()
            try:
                call = self.backends[m.name].complete(self._body(req, m, judge, privacy))
                result = await (before(call, deadline) if kept is not None else call)
            except APIError as exc:
                route = failure_route(exc)
                trace.attempt(m, outcome(exc), exc.code or exc.type, t0)
                if route is None or last:
                    if kept is not None:  # whatever failed above, the local answer stands
                        trace.route = "kept:escalation_failed"
                        return self._answer(kept[0], kept[1], req, trace)
                    if private and route is not None:
                        raise fail_closed(exc) from None
                    raise
                trace.moved(route)
                continue
            choices: Sequence[Mapping[str, Any]] = result.get("choices") or [{}]  # an engine may send none
            choice0 = choices[0]
            if contract and choice0.get("finish_reason") != "length":  # cut short by the client's limit
                why = broken(req, choice0.get("message") or {})
                trace.output_valid = why is None
                if why is not None and i < len(chain) - 1:  # never kept: not what the client asked for
                    trace.attempt(m, "escalated", "invalid_output", t0, result)
                    trace.moved("retried:invalid_output" if chain[i + 1] is m else "escalated:invalid_output")
                    continue
                if why is not None and private:
                    trace.attempt(m, "error", "invalid_output", t0, result)
                    raise PrivacyViolationError(
                        f"No local model produced an answer in the requested format ({why}); this "
                        "request is private, so it is not sent off this machine."
                    )
            if judge:
                choice = result["choices"][0]
                usage: Mapping[str, Any] = result.get("usage") or {}  # ... or `"usage": null`
                tokens = int(usage.get("completion_tokens", 0))
                asked = req.output_limit() or m.default_max_tokens
                why = self._verdict(
                    m,
                    logprobs_of(choice),
                    first_margin(choice),
                    choice.get("finish_reason"),
                    tokens,
                    asked,
                    trace,
                )
                if why is not None:
                    trace.attempt(m, "escalated", why, t0, result)
                    trace.moved(f"escalated:{why}")
                    kept = (result, m)
                    continue
            trace.attempt(m, "ok", None, t0, result)
            return self._answer(result, m, req, trace)
        raise EngineUnavailableError("No model could serve this request.")  # unreachable: chain ≥ 1

    def _answer(
        self, result: ChatCompletion, m: ModelConfig, req: ChatCompletionRequest, trace: Trace
    ) -> tuple[ChatCompletion, Trace]:
        trace.model, trace.tier = m.name, m.tier
        trace.usage = usage_of(result)
        trace.untrusted = untrusted(result)
        return self._finish(result, m, req), trace

    # -- streaming -------------------------------------------------------------------------------

    async def stream(
        self,
        req: ChatCompletionRequest,
        hints: Hints = NO_HINTS,
        privacy: Privacy | None = None,
        attempts: list[Attempt] | None = None,
        deadline: float | None = None,
        caller: str = "",
    ) -> tuple[Chunks, Trace]:
        """Open a stream on the first rung that commits. Judgement and fallback happen before the
        first byte reaches the client; after that the rung is committed and chunks flow through.
        `attempts` as for `complete`."""
        private = privacy is not None and privacy.private
        if req.model == "auto":
            await self.conversations.prefetch(req, caller)  # what other replicas answered ([state] url)
        d = self.decide(req, hints, private, caller)
        trace = Trace(d, d.route, attempts=[] if attempts is None else attempts)
        chain = self._chain(d, req, private)
        held: _Held | None = None
        error: APIError | None = None
        try:
            for i, m in enumerate(chain):
                last = i == len(chain) - 1
                judge = self._judges(m, not last)
                t0 = time.monotonic()
                chunks = self.backends[m.name].stream(self._body(req, m, judge, privacy))
                try:
                    opening = self._prefetch(chunks, judge)
                    buffered, logprobs, margin, finish, done = await (
                        before(opening, deadline) if held is not None else opening
                    )
                except APIError as exc:
                    await _close(chunks)
                    route = failure_route(exc)
                    trace.attempt(m, outcome(exc), exc.code or exc.type, t0)
                    if route is None and held is None:
                        raise
                    error = exc
                    if route is None:  # a held local answer stands; nothing above will do better
                        break
                    if not last:
                        trace.moved(route)
                    continue
                if judge:
                    asked = req.output_limit() or m.default_max_tokens
                    why = self._verdict(m, logprobs, margin, finish, len(logprobs), asked, trace)
                    if why is not None:
                        trace.attempt(m, "escalated", why, t0)
                        trace.settle_cut(m, Tally.of(buffered))  # the tokens judged were computed
                        trace.moved(f"escalated:{why}")
                        if held is not None:
                            await _close(held.chunks)
                        held = _Held(m, chunks, buffered, done)
                        continue
                trace.attempt(m, "ok", None, t0)
                if held is not None:
                    await _close(held.chunks)
                    held = None
                return self._relay(m, chunks, buffered, done, req, trace), trace
            if held is not None and error is not None:
                trace.route = "kept:escalation_failed"
                h, held = held, None
                return self._relay(h.model, h.chunks, h.buffered, h.done, req, trace), trace
            assert error is not None
            raise fail_closed(error) if private else error
        finally:
            if held is not None:
                await _close(held.chunks)

    async def _prefetch(
        self, chunks: Chunks, judge: bool
    ) -> tuple[list[ChatCompletionChunk], list[float], float | None, str | None, bool]:
        """Read the first chunk, or the first `buffer_tokens` tokens when judging (their logprobs, and
        the first token's top-2 margin)."""
        buffered: list[ChatCompletionChunk] = []
        logprobs: list[float] = []
        margin: float | None = None
        finish: str | None = None
        async for chunk in chunks:
            buffered.append(chunk)
            for ch in chunk.get("choices") or ():
                if not logprobs:
                    margin = first_margin(ch)
                logprobs += logprobs_of(ch)
                finish = ch.get("finish_reason") or finish
            if not judge or finish or len(logprobs) >= self.cascade.buffer_tokens:
                return buffered, logprobs, margin, finish, False
        return buffered, logprobs, margin, finish, True

    def _relay(
        self,
        m: ModelConfig,
        chunks: Chunks,
        buffered: list[ChatCompletionChunk],
        done: bool,
        req: ChatCompletionRequest,
        trace: Trace,
    ) -> Chunks:
        # Set now, not in the generator: the response headers are built before its first chunk.
        trace.model, trace.tier = m.name, m.tier
        trace.untrusted = any(untrusted(c) for c in buffered)
        return self._flow(m, chunks, buffered, done, req, trace)

    async def _flow(
        self,
        m: ModelConfig,
        chunks: Chunks,
        buffered: list[ChatCompletionChunk],
        done: bool,
        req: ChatCompletionRequest,
        trace: Trace,
    ) -> Chunks:
        wants_usage = req.stream_options is not None and req.stream_options.include_usage
        seen = Assembler() if has_contract(req) else None  # the answer, to judge its contract at the end
        tally = Tally()  # what the engine reported so far, should the stream end without its usage
        try:
            for chunk in buffered:
                if seen is not None:
                    seen.feed(chunk)
                if self._keep(chunk, m, trace, wants_usage, tally):
                    yield self._finish(chunk, m, req)
            if not done:
                async for chunk in chunks:
                    if seen is not None:
                        seen.feed(chunk)
                    if self._keep(chunk, m, trace, wants_usage, tally):
                        yield self._finish(chunk, m, req)
            if seen is not None:
                trace.output_valid = broken(req, seen.message()) is None
        finally:
            await _close(chunks)
            if not tally.settled:  # cut: the client left or the engine died before the usage chunk
                trace.settle_cut(m, tally)
                trace.usage = tally.usage()

    @staticmethod
    def _keep(
        chunk: ChatCompletionChunk, m: ModelConfig, trace: Trace, wants_usage: bool, tally: Tally
    ) -> bool:
        """Record a usage chunk; pass it on only if the client asked for one."""
        tally.feed(chunk)
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            tally.settled = True
            trace.usage = usage_of(chunk)
            trace.settle(m, chunk)
            if not chunk.get("choices"):
                return wants_usage
            if not wants_usage:
                chunk.pop("usage", None)
        return True


async def _close(chunks: Chunks) -> None:
    # Shielded: the client may have gone and cancelled us, but the engine slot must be freed now.
    with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
        await chunks.aclose()
