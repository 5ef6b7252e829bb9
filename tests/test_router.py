"""The router on its own, as tables: each rung is a scripted fake Backend (the way httpx's MockTransport
fakes a transport) that answers, streams or fails as told and records every body it was sent. Escalation,
fallback, the kept local answer, failing closed for private requests, the deadline and a client that goes
away, each for `complete` and for `stream`. Timing is driven by events the test sets, never by sleeps."""

from __future__ import annotations

import asyncio
import copy
import time
from collections.abc import AsyncGenerator, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import pytest

from localroute.config.schema import parse_config
from localroute.errors import (
    APIError,
    ContextLengthExceededError,
    EngineUnavailableError,
    InvalidRequestError,
    OverloadedError,
    UpstreamError,
)
from localroute.privacy.detect import Detector
from localroute.privacy.guard import Privacy, PrivacyViolationError
from localroute.protocol.backend import Backend, Brief
from localroute.protocol.chat import ChatCompletionRequest
from localroute.routing.policy import Hints
from localroute.routing.router import Router, Trace

# A free local rung that admits every ordinary prompt, under a priced remote one. Streams are judged on
# their first 4 tokens.
CONFIG = """
[[models]]
name = "small"
engine = "llama_cpp"
source = { kind = "path", path = "small.gguf" }
n_ctx = 2048
default_max_tokens = 256
max_score = 0.9

[[models]]
name = "top"
engine = "remote"
tier = 10
base_url = "https://api.example.com/v1"
model = "top-1"
price = { input_per_mtok = 2.5, output_per_mtok = 10.0 }

[routing.cascade]
min_mean_logprob = -1.0
min_tail_logprob = -4.0
min_length_tokens = 32
buffer_tokens = 4
"""
POLICY_ROUTE = "policy:score<=0.90"
SURE = (-0.05,) * 6
UNSURE = (-3.0,) * 6
PRIVATE = Privacy(True, "header")
MODES = ["complete", "stream"]


@dataclass(frozen=True)
class Reply:
    """What a fake rung does with each call: one token per logprob, then `finish`; or raise `error`
    (a stream raises before its first chunk). `hang_after`: wait for the fake's `release` event after
    that many tokens (0: before answering at all)."""

    logprobs: tuple[float, ...] = SURE
    finish: str = "stop"
    error: type[APIError] | None = None
    hang_after: int | None = None


def tokens(name: str, n: int) -> list[str]:
    return [f"{name}{i} " for i in range(n)]


def text_of(name: str, reply: Reply = Reply()) -> str:
    return "".join(tokens(name, len(reply.logprobs)))


class FakeBackend:
    """A scripted rung: implements the Backend protocol without a process or a socket."""

    def __init__(self, name: str, reply: Reply, *, local: bool) -> None:
        self.name = name
        self.reply = reply
        self.local = local
        self.bodies: list[dict[str, Any]] = []
        self.closed = 0  # streams closed by the caller before their end
        self.cancelled = 0  # calls cancelled while they waited
        self.waiting = asyncio.Event()  # set when a call starts to wait for `release`
        self.release = asyncio.Event()

    async def start(self) -> None:
        pass

    async def _hang(self) -> None:
        self.waiting.set()
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise

    def _fail(self) -> None:
        if self.reply.error is not None:
            raise self.reply.error(f"{self.name} failed (scripted)")

    @staticmethod
    def _logprobs(body: dict[str, Any], toks: list[str], lps: tuple[float, ...]) -> dict[str, Any] | None:
        """The choice's `logprobs`, only when the body asked for them (as an engine does)."""
        if not body.get("logprobs"):
            return None
        return {"content": [{"token": t, "logprob": lp} for t, lp in zip(toks, lps, strict=True)]}

    def _usage(self, n: int) -> dict[str, int]:
        return {"prompt_tokens": 7, "completion_tokens": n, "total_tokens": 7 + n}

    async def complete(self, body: dict[str, Any]) -> dict[str, Any]:
        self.bodies.append(copy.deepcopy(body))
        if self.reply.hang_after is not None:
            await self._hang()
        self._fail()
        toks = tokens(self.name, len(self.reply.logprobs))
        choice: dict[str, Any] = {
            "index": 0,
            "message": {"role": "assistant", "content": "".join(toks)},
            "finish_reason": self.reply.finish,
        }
        if (lp := self._logprobs(body, toks, self.reply.logprobs)) is not None:
            choice["logprobs"] = lp
        return {"id": "c1", "object": "chat.completion", "model": body["model"], "choices": [choice],
                "usage": self._usage(len(toks))}  # fmt: skip

    async def stream(self, body: dict[str, Any]) -> AsyncGenerator[dict[str, Any], None]:
        self.bodies.append(copy.deepcopy(body))
        toks = tokens(self.name, len(self.reply.logprobs))
        try:
            if self.reply.hang_after == 0:
                await self._hang()
            self._fail()
            for i, tok in enumerate(toks):
                if i and i == self.reply.hang_after:
                    await self._hang()
                choice: dict[str, Any] = {"index": 0, "delta": {"content": tok}, "finish_reason": None}
                if (lp := self._logprobs(body, [tok], self.reply.logprobs[i : i + 1])) is not None:
                    choice["logprobs"] = lp
                yield {"id": "c1", "object": "chat.completion.chunk", "choices": [choice]}
            yield {"id": "c1", "object": "chat.completion.chunk",
                   "choices": [{"index": 0, "delta": {}, "finish_reason": self.reply.finish}]}  # fmt: skip
            usage = self._usage(len(toks))
            yield {"id": "c1", "object": "chat.completion.chunk", "choices": [], "usage": usage}
        except GeneratorExit:
            self.closed += 1
            raise

    def health(self) -> dict[str, Any]:
        return {"state": "ready"}

    def brief(self) -> Brief:
        return Brief("ready", self.local)

    async def aclose(self) -> None:
        pass


@dataclass
class Rig:
    router: Router
    small: FakeBackend
    top: FakeBackend
    attempts: list[dict[str, Any]] = field(default_factory=list)


def rig(small: Reply, top: Reply) -> Rig:
    fakes = {"small": FakeBackend("small", small, local=True), "top": FakeBackend("top", top, local=False)}
    backends: dict[str, Backend] = dict(fakes)
    config = parse_config(CONFIG)
    detector = Detector(config.privacy.detect, config.privacy.extra_patterns)
    return Rig(Router(config, backends, detector), fakes["small"], fakes["top"])


def request(*, stream: bool, **extra: Any) -> ChatCompletionRequest:
    body = {"model": "auto", "messages": [{"role": "user", "content": "Say hi"}], "stream": stream, **extra}
    return ChatCompletionRequest.model_validate(body)


@dataclass
class Served:
    text: str
    model: str  # the `model` every answer object carried
    objects: list[dict[str, Any]]  # the completion, or every chunk the client got
    trace: Trace


async def serve(r: Rig, mode: str, **kw: Any) -> Served:
    """One request through `Router.complete` or `Router.stream`, read to its end."""
    req = request(stream=mode == "stream")
    if mode == "complete":
        result, trace = await r.router.complete(req, attempts=r.attempts, **kw)
        return Served(result["choices"][0]["message"]["content"], result["model"], [result], trace)
    chunks, trace = await r.router.stream(req, attempts=r.attempts, **kw)
    got = [c async for c in chunks]
    text = "".join(ch["delta"].get("content") or "" for c in got for ch in c["choices"])
    (model,) = {c["model"] for c in got}
    return Served(text, model, got, trace)


def outcomes(attempts: list[dict[str, Any]]) -> list[tuple[str, str, str | None]]:
    return [(a["model"], a["outcome"], a["reason"]) for a in attempts]


def run(go: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(go())


# -- who answers, and what the trace says --------------------------------------------------------------

ANSWERED = [
    pytest.param(Reply(), Reply(), POLICY_ROUTE, "small", [("small", "ok", None)], id="confident-stands"),
    pytest.param(
        Reply(logprobs=UNSURE), Reply(), "escalated:low_confidence", "top",
        [("small", "escalated", "low_confidence"), ("top", "ok", None)], id="unsure-logprobs-escalate",
    ),
    pytest.param(
        Reply(logprobs=SURE[:3], finish="length"), Reply(), "escalated:length", "top",
        [("small", "escalated", "length"), ("top", "ok", None)], id="cut-off-by-context-escalates",
    ),
    pytest.param(
        Reply(error=ContextLengthExceededError), Reply(), "escalated:context", "top",
        [("small", "error", "context_length_exceeded"), ("top", "ok", None)], id="context-exceeded-escalates",
    ),
    pytest.param(
        Reply(error=EngineUnavailableError), Reply(), "fallback:engine_error", "top",
        [("small", "error", "engine_unavailable"), ("top", "ok", None)], id="engine-error-falls-back",
    ),
    pytest.param(
        Reply(error=OverloadedError), Reply(), "fallback:engine_error", "top",
        [("small", "error", "queue_full"), ("top", "ok", None)], id="full-queue-falls-back",
    ),
    pytest.param(
        Reply(logprobs=UNSURE), Reply(error=UpstreamError), "kept:escalation_failed", "small",
        [("small", "escalated", "low_confidence"), ("top", "error", "upstream_error")],
        id="rung-above-fails-local-kept",
    ),
    pytest.param(
        Reply(logprobs=UNSURE), Reply(error=InvalidRequestError), "kept:escalation_failed", "small",
        [("small", "escalated", "low_confidence"), ("top", "error", "invalid_request_error")],
        id="rung-above-refuses-local-kept",
    ),
]  # fmt: skip


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(("small", "top", "route", "model", "attempts"), ANSWERED)
def test_public_request_is_answered(
    mode: str, small: Reply, top: Reply, route: str, model: str, attempts: list[tuple[str, str, str | None]]
) -> None:
    async def go() -> None:
        r = rig(small, top)
        served = await serve(r, mode)
        escalations = len(attempts) - 1
        headers = served.trace.headers()
        if headers.pop("x-localroute-confidence", None) is not None:  # the local answer was judged
            assert attempts[0][0] == "small" and attempts[0][1] in ("ok", "escalated")
        assert headers == {
            "x-localroute-model": model,
            "x-localroute-tier": "0" if model == "small" else "10",
            "x-localroute-route": route,
            "x-localroute-escalations": str(escalations),
        }
        assert outcomes(served.trace.attempts) == attempts
        assert served.text == text_of(model, small if model == "small" else top)
        assert served.model == model
        assert [len(r.small.bodies), len(r.top.bodies)] == [1, int(escalations > 0)]
        # Logprobs were asked of the judged local rung only, and never reach a client that did not ask.
        assert r.small.bodies[0].get("logprobs") is True
        assert all("logprobs" not in b for b in r.top.bodies)
        assert all("logprobs" not in ch for o in served.objects for ch in o["choices"])
        if mode == "stream":  # a held stream that lost to the rung above is closed, not left to run
            assert r.small.closed == (1 if escalations and model == "top" and small.error is None else 0)
            assert all(b["stream_options"] == {"include_usage": True} for b in r.small.bodies + r.top.bodies)
            assert not any("usage" in c for c in served.objects)  # the client did not ask for it

    run(go)


FAILED = [
    pytest.param(
        Reply(error=EngineUnavailableError), Reply(error=UpstreamError), UpstreamError, "upstream_error",
        [("small", "error", "engine_unavailable"), ("top", "error", "upstream_error")], id="every-rung-fails",
    ),
    pytest.param(
        Reply(error=InvalidRequestError), Reply(), InvalidRequestError, None,
        [("small", "error", "invalid_request_error")], id="client-error-not-retried",
    ),
]  # fmt: skip


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(("small", "top", "error", "code", "attempts"), FAILED)
def test_public_request_fails(
    mode: str,
    small: Reply,
    top: Reply,
    error: type[APIError],
    code: str | None,
    attempts: list[tuple[str, str, str | None]],
) -> None:
    async def go() -> None:
        r = rig(small, top)
        with pytest.raises(error) as info:
            await serve(r, mode)
        assert info.value.code == code
        assert outcomes(r.attempts) == attempts
        assert len(r.top.bodies) == len(attempts) - 1

    run(go)


# -- private requests never reach the remote rung -------------------------------------------------------

UNSERVABLE = "private_request_unservable"
PRIVATE_FAILS = [
    pytest.param(EngineUnavailableError, PrivacyViolationError, 503, UNSERVABLE, id="engine"),
    pytest.param(UpstreamError, PrivacyViolationError, 503, UNSERVABLE, id="upstream"),
    pytest.param(ContextLengthExceededError, ContextLengthExceededError, 400, "context_length_exceeded",
                 id="context"),
    pytest.param(OverloadedError, OverloadedError, 429, "queue_full", id="busy-is-not-unservable"),
]  # fmt: skip


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(("fails", "error", "status", "code"), PRIVATE_FAILS)
def test_private_request_fails_closed(
    mode: str, fails: type[APIError], error: type[APIError], status: int, code: str
) -> None:
    async def go() -> None:
        r = rig(Reply(error=fails), Reply())
        with pytest.raises(error) as info:
            await serve(r, mode, privacy=PRIVATE)
        assert (info.value.status, info.value.code) == (status, code)
        if fails is ContextLengthExceededError:
            assert "private" in info.value.message
        assert r.top.bodies == []
        assert [a["remote"] for a in r.attempts] == [False]

    run(go)


@pytest.mark.parametrize("mode", MODES)
def test_private_unsure_answer_is_served_locally_unjudged(mode: str) -> None:
    async def go() -> None:
        r = rig(Reply(logprobs=UNSURE), Reply())
        served = await serve(r, mode, privacy=PRIVATE)
        assert served.trace.headers()["x-localroute-route"] == POLICY_ROUTE
        assert served.text == text_of("small")
        assert "logprobs" not in r.small.bodies[0]  # nothing above it to escalate to: not judged
        assert r.top.bodies == []

    run(go)


@pytest.mark.parametrize("mode", MODES)
def test_private_request_naming_the_remote_tier_is_refused_before_any_call(mode: str) -> None:
    async def go() -> None:
        r = rig(Reply(), Reply())
        with pytest.raises(InvalidRequestError) as info:
            await serve(r, mode, privacy=PRIVATE, hints=Hints(tier="remote"))
        assert info.value.code == "private_request_unservable"
        assert r.small.bodies == r.top.bodies == []

    run(go)


# -- the deadline --------------------------------------------------------------------------------------


@pytest.mark.timing
@pytest.mark.parametrize("mode", MODES)
def test_escalation_past_the_deadline_keeps_the_local_answer(mode: str) -> None:
    async def go() -> None:
        r = rig(Reply(logprobs=UNSURE), Reply(hang_after=0))  # the rung above never answers
        # Already within the keep margin: the escalation is abandoned as soon as it waits.
        served = await serve(r, mode, deadline=time.monotonic())
        assert served.trace.headers()["x-localroute-route"] == "kept:escalation_failed"
        assert served.text == text_of("small", Reply(logprobs=UNSURE))
        assert outcomes(served.trace.attempts) == [
            ("small", "escalated", "low_confidence"),
            ("top", "error", "deadline_exceeded"),
        ]
        assert len(r.top.bodies) == 1 and r.top.cancelled == 1  # asked, then given up on

    run(go)


@pytest.mark.timing
@pytest.mark.parametrize("mode", MODES)
def test_escalation_well_before_the_deadline_is_served(mode: str) -> None:
    async def go() -> None:
        r = rig(Reply(logprobs=UNSURE), Reply())
        served = await serve(r, mode, deadline=time.monotonic() + 3600)
        assert served.trace.headers()["x-localroute-route"] == "escalated:low_confidence"
        assert served.text == text_of("top")

    run(go)


# -- the client goes away -------------------------------------------------------------------------------


@pytest.mark.timing
def test_client_gone_during_complete_cancels_the_rung() -> None:
    async def go() -> None:
        r = rig(Reply(hang_after=0), Reply())
        task = asyncio.create_task(serve(r, "complete"))
        await r.small.waiting.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert r.small.cancelled == 1
        assert r.top.bodies == []

    run(go)


@pytest.mark.timing
def test_client_closing_a_stream_closes_the_rungs_stream() -> None:
    async def go() -> None:
        r = rig(Reply(), Reply())
        chunks, _ = await r.router.stream(request(stream=True))
        first = await anext(chunks)
        assert first["choices"][0]["delta"]["content"] == tokens("small", 1)[0]
        assert r.small.closed == 0
        await chunks.aclose()
        assert r.small.closed == 1
        assert r.top.bodies == []

    run(go)


@pytest.mark.timing
def test_client_gone_mid_stream_cancels_the_rung() -> None:
    async def go() -> None:
        r = rig(Reply(hang_after=5), Reply())  # judged on 4 tokens, relayed, then the engine stalls
        chunks, _ = await r.router.stream(request(stream=True))
        got: list[dict[str, Any]] = []

        async def client() -> None:
            async for c in chunks:
                got.append(c)

        task = asyncio.create_task(client())
        await r.small.waiting.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert len(got) == 5
        assert r.small.cancelled == 1

    run(go)


@pytest.mark.timing
def test_client_gone_during_escalation_frees_both_rungs() -> None:
    async def go() -> None:
        r = rig(Reply(logprobs=UNSURE), Reply(hang_after=0))
        task = asyncio.create_task(r.router.stream(request(stream=True)))
        await r.top.waiting.wait()  # the local stream is held open while the rung above thinks
        assert r.small.closed == 0
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert r.top.cancelled == 1
        assert r.small.closed == 1  # the held local stream is closed, not leaked

    run(go)


# -- what the rungs are sent -----------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_each_rung_is_sent_its_own_model_name_and_limits(mode: str) -> None:
    async def go() -> None:
        r = rig(Reply(logprobs=UNSURE), Reply())
        await serve(r, mode)
        (small,), (top,) = r.small.bodies, r.top.bodies
        assert (small["model"], top["model"]) == ("small", "top")
        assert small["max_tokens"] == 256  # the rung's default_max_tokens: the client set none
        assert small["messages"] == top["messages"] == [{"role": "user", "content": "Say hi"}]
        assert small.get("stream", False) == top.get("stream", False) == (mode == "stream")

    run(go)
