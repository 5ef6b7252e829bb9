"""A stream cut before its usage chunk is still charged: the router keeps the engine's running
accounting (`x_localroute` on each chunk) and charges the attempt with the last one it saw when the
stream ends without usage, whether the client left, the engine died or an escalation dropped it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from typing import Any

import pytest

from localroute.config.schema import parse_config
from localroute.errors import EngineUnavailableError
from localroute.privacy.detect import Detector
from localroute.protocol.backend import Backend, Brief
from localroute.protocol.chat import ChatCompletionRequest
from localroute.routing.router import Router
from localroute.routing.trace import Tally
from localroute.rungs.supervise import TimeShare
from tests.test_router import CONFIG

CPU_S = 0.25  # CPU-seconds per token, as the fake worker reports them


class Worker:
    """A local rung that streams `n` tokens with the llama.cpp worker's running accounting, then its
    usage chunk; `die_after`: raise an engine error after that many tokens instead; `running`: False
    for an engine that reports nothing on the way (the router then counts the chunks)."""

    def __init__(self, n: int, *, die_after: int | None = None, running: bool = True, lp: float = -0.01):
        self.n, self.die_after, self.running, self.lp = n, die_after, running, lp

    async def stream(self, body: dict[str, Any]) -> AsyncGenerator[dict[str, Any], None]:
        for i in range(1, self.n + 1):
            if i - 1 == self.die_after:
                raise EngineUnavailableError("Model 'small' crashed (SIGKILL) while serving this request.")
            choice = {"index": 0, "delta": {"content": f" t{i}"}, "finish_reason": None,
                      "logprobs": {"content": [{"token": f" t{i}", "logprob": self.lp}]}}  # fmt: skip
            chunk: dict[str, Any] = {"id": "c", "object": "chat.completion.chunk", "choices": [choice]}
            if self.running:
                so_far = {"prompt_tokens": 9, "completion_tokens": i, "total_tokens": 9 + i}
                chunk["x_localroute"] = {"compute_s": CPU_S * i, "so_far": so_far}
            yield chunk
        usage = {"prompt_tokens": 9, "completion_tokens": self.n, "total_tokens": 9 + self.n}
        yield {"id": "c", "object": "chat.completion.chunk", "choices": [], "usage": usage,
               "x_localroute": {"compute_s": CPU_S * self.n}}  # fmt: skip

    async def complete(self, body: dict[str, Any]) -> dict[str, Any]:
        raise AssertionError("streams only")

    def health(self) -> dict[str, Any]:
        return {"state": "ready"}

    def brief(self) -> Brief:
        return Brief("ready", True)

    async def aclose(self) -> None:
        pass


class Top(Worker):
    def brief(self) -> Brief:
        return Brief("ready", False)


def router(small: Worker, top: Worker | None = None) -> Router:
    config = parse_config(CONFIG)
    backends: dict[str, Backend] = {"small": small, "top": top or Top(3)}  # type: ignore[dict-item]
    return Router(config, backends, Detector(config.privacy.detect, config.privacy.extra_patterns))


def request() -> ChatCompletionRequest:
    body = {"model": "small", "messages": [{"role": "user", "content": "Count"}], "stream": True}
    return ChatCompletionRequest.model_validate(body)


async def read(r: Router, req: ChatCompletionRequest, take: int | None) -> tuple[Any, list[dict[str, Any]]]:
    """Read `take` chunks (None: all) and close the stream, as a client that leaves."""
    chunks, trace = await r.stream(req)
    got: list[dict[str, Any]] = []
    try:
        async for c in chunks:
            got.append(c)
            if take is not None and len(got) == take:
                break
    except EngineUnavailableError:
        pass
    finally:
        await chunks.aclose()
    return trace, got


def test_a_stream_read_to_its_end_is_charged_from_its_usage_chunk() -> None:
    trace, got = asyncio.run(read(router(Worker(10)), request(), None))
    assert trace.usage["completion_tokens"] == 10 and trace.compute_s == pytest.approx(CPU_S * 10)
    assert all("x_localroute" not in c for c in got)  # never shown to the client


def test_a_client_that_leaves_is_charged_for_what_the_engine_reported() -> None:
    trace, got = asyncio.run(read(router(Worker(100)), request(), 4))
    assert len(got) == 4 and all("x_localroute" not in c for c in got)
    (a,) = trace.attempts
    assert a["tokens"] == {"prompt": 9, "completion": 4} and a["compute_s"] == pytest.approx(CPU_S * 4)
    assert trace.usage == {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13}
    assert trace.compute_s == pytest.approx(CPU_S * 4)


def test_an_engine_that_dies_mid_stream_is_charged_for_what_it_reported() -> None:
    trace, got = asyncio.run(read(router(Worker(100, die_after=6)), request(), None))
    assert len(got) == 6 and trace.compute_s == pytest.approx(CPU_S * 6)
    assert trace.usage["completion_tokens"] == 6


def test_without_running_accounting_the_chunks_are_counted_and_no_compute_is_invented() -> None:
    trace, _ = asyncio.run(read(router(Worker(100, running=False)), request(), 5))
    assert trace.usage == {"prompt_tokens": 0, "completion_tokens": 5, "total_tokens": 5}
    assert trace.compute_s == 0


def test_an_escalated_stream_is_charged_for_the_tokens_judged() -> None:
    """`auto`, an unsure local answer: the router reads `buffer_tokens` (4), escalates, and closes it."""
    req = ChatCompletionRequest.model_validate(
        {"model": "auto", "messages": [{"role": "user", "content": "Say hi"}], "stream": True}
    )
    trace, _ = asyncio.run(read(router(Worker(100, lp=-3.0)), req, None))
    local, top = trace.attempts
    assert (local["outcome"], top["outcome"]) == ("escalated", "ok")
    assert local["tokens"]["completion"] == 4 and local["compute_s"] == pytest.approx(CPU_S * 4)
    assert top["compute_s"] == 0  # a remote rung's figures are never taken as local compute
    assert trace.compute_s == pytest.approx(CPU_S * 4)


def test_tally_ignores_implausible_figures() -> None:
    t = Tally()
    t.feed({"id": "c", "object": "chat.completion.chunk", "choices": [],  # type: ignore[typeddict-item]
            "x_localroute": {"compute_s": float("inf"), "so_far": {"completion_tokens": -3}}})  # fmt: skip
    assert t.compute_s() == 0 and t.usage()["completion_tokens"] == 0


def test_time_share_so_far_is_what_leave_would_say() -> None:
    share = TimeShare()
    mark = share.enter()
    first = share.so_far(mark)
    assert 0 <= first <= share.leave(mark)
