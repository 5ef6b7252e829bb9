"""The engine client over a real Unix socket: a scripted HTTP/1.1 peer answers each request with bytes
the test chose (JSON, SSE, errors, truncation, a dropped connection), and records what it was sent.
The mapping of transport failures to APIErrors is checked with httpx.MockTransport."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from localroute.errors import APIError
from localroute.rungs.openai_http import OpenAIHTTP

BODY = {"model": "small", "messages": [{"role": "user", "content": "Say hi"}], "max_tokens": 8}
ANSWER = {"id": "c1", "object": "chat.completion", "choices": [{"index": 0, "message": {"content": "hi"}}]}
CHUNKS = [
    {"id": "c1", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": "h"}}]},
    {"id": "c1", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": "i"}}]},
]


def json_response(status: int, obj: object) -> bytes:
    body = json.dumps(obj).encode() if not isinstance(obj, bytes) else obj
    head = f"HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
    return head.encode() + body


def event(obj: object) -> bytes:
    return b"data: " + (obj if isinstance(obj, bytes) else json.dumps(obj).encode()) + b"\n\n"


def chunked(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


SSE_HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
SSE_END = chunked(event(b"[DONE]")) + b"0\r\n\r\n"


@dataclass
class Peer:
    """Answers every request with `reply`, then: "done" (keep the connection), "close" (drop it) or
    "hang" (send nothing more until the client goes, which sets `gone`)."""

    reply: bytes = b""
    then: str = "done"
    requests: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    gone: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                line, *headers = head.decode().split("\r\n")
                length = next(int(h.split(":")[1]) for h in headers if h.lower().startswith("content-length"))
                self.requests.append((line.split()[1], json.loads(await reader.readexactly(length))))
                writer.write(self.reply)
                await writer.drain()
                if self.then == "close":
                    break
                if self.then == "hang":
                    await reader.read()  # b"" once the client closed its end
                    self.gone.set()
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@asynccontextmanager
async def engine(tmp: Path, peer: Peer) -> AsyncIterator[OpenAIHTTP]:
    sock = str(tmp / "engine.sock")
    server = await asyncio.start_unix_server(peer.handle, sock)
    transport = httpx.AsyncHTTPTransport(uds=sock)
    async with server, httpx.AsyncClient(transport=transport, base_url="http://engine", timeout=30) as c:
        yield OpenAIHTTP(c)


def run(go: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(go())


async def collect(client: OpenAIHTTP) -> list[dict[str, Any]]:
    return [c async for c in client.stream(BODY)]


# -- complete ---------------------------------------------------------------------------------------------


def test_complete_posts_the_body_and_returns_the_answer(tmp_path: Path) -> None:
    async def go() -> None:
        peer = Peer(json_response(200, ANSWER))
        async with engine(tmp_path, peer) as client:
            assert await client.complete(BODY) == ANSWER
            assert await client.complete({**BODY, "max_tokens": 2}) == ANSWER  # the connection is reused
        assert peer.requests == [
            ("/v1/chat/completions", BODY),
            ("/v1/chat/completions", {**BODY, "max_tokens": 2}),
        ]

    run(go)


CTX = "context_length_exceeded"


def error_body(code: str | None, etype: str = "invalid_request_error") -> dict[str, Any]:
    return {"error": {"message": "scripted", "type": etype, "param": None, "code": code}}


# (what the peer sends, then what it does) -> the APIError's status and code
FAILURES = [
    pytest.param(json_response(400, error_body(CTX)), "done", 400, CTX, id="context"),
    pytest.param(json_response(400, error_body(None)), "done", 400, None, id="bad-request"),
    pytest.param(json_response(429, error_body("queue_full", "server_error")), "done", 429, "queue_full",
                 id="queue-full"),
    pytest.param(json_response(503, error_body("engine_crashed", "server_error")), "done", 503,
                 "engine_crashed", id="crashed"),
    pytest.param(json_response(500, b"<html>oops</html>"), "done", 502, "upstream_error", id="not-json"),
    pytest.param(json_response(200, b"{not json"), "done", 503, "engine_unavailable", id="malformed-answer"),
    pytest.param(json_response(200, [1, 2]), "done", 503, "engine_unavailable", id="answer-not-an-object"),
    pytest.param(b"", "close", 503, "engine_unavailable", id="closed-without-answering"),
    pytest.param(json_response(200, ANSWER)[:-5], "close", 503, "engine_unavailable", id="answer-cut-short"),
]  # fmt: skip


@pytest.mark.parametrize(("reply", "then", "status", "code"), FAILURES)
def test_complete_maps_every_failure(
    tmp_path: Path, reply: bytes, then: str, status: int, code: str | None
) -> None:
    async def go() -> None:
        async with engine(tmp_path, Peer(reply, then)) as client:
            with pytest.raises(APIError) as info:
                await client.complete(BODY)
        assert (info.value.status, info.value.code) == (status, code)

    run(go)


# -- stream ----------------------------------------------------------------------------------------------


def test_stream_yields_each_event_until_done(tmp_path: Path) -> None:
    async def go() -> None:
        noise = chunked(b": keep-alive\n\nevent: message\n") + chunked(b"\n")
        reply = SSE_HEAD + noise + b"".join(chunked(event(c)) for c in CHUNKS) + SSE_END
        peer = Peer(reply)
        async with engine(tmp_path, peer) as client:
            assert await collect(client) == CHUNKS
            assert await collect(client) == CHUNKS
        assert [body for _, body in peer.requests] == [BODY, BODY]

    run(go)


def test_an_event_split_across_reads_is_reassembled(tmp_path: Path) -> None:
    async def go() -> None:
        data = event(CHUNKS[0])
        reply = SSE_HEAD + chunked(data[:7]) + chunked(data[7:]) + SSE_END
        async with engine(tmp_path, Peer(reply)) as client:
            assert await collect(client) == CHUNKS[:1]

    run(go)


STREAM_FAILURES = [
    pytest.param(json_response(400, error_body("context_length_exceeded")), "done", 0, 400,
                 "context_length_exceeded", id="refused-before-the-first-chunk"),
    pytest.param(json_response(503, error_body("engine_crashed", "server_error")), "done", 0, 503,
                 "engine_crashed", id="crashed-before-the-first-chunk"),
    pytest.param(SSE_HEAD + chunked(event(CHUNKS[0])) + b"0\r\n\r\n", "done", 1, 503, "engine_unavailable",
                 id="ended-before-done"),
    pytest.param(SSE_HEAD + chunked(event(CHUNKS[0])), "close", 1, 503, "engine_unavailable",
                 id="connection-dropped-mid-stream"),
    pytest.param(SSE_HEAD + chunked(event(CHUNKS[0]) + b"data: {oops\n\n") + SSE_END, "done", 1, 503,
                 "engine_unavailable", id="malformed-chunk"),
    pytest.param(SSE_HEAD + chunked(event(CHUNKS[0]) + event(error_body("engine_crashed", "server_error")))
                 + SSE_END, "done", 1, 502, "engine_crashed", id="error-event-mid-stream"),
    pytest.param(SSE_HEAD + chunked(event({"error": {"message": "boom"}})) + SSE_END, "done", 0, 502,
                 "upstream_error", id="bare-error-event"),
]  # fmt: skip


@pytest.mark.parametrize(("reply", "then", "before", "status", "code"), STREAM_FAILURES)
def test_stream_maps_every_failure(
    tmp_path: Path, reply: bytes, then: str, before: int, status: int, code: str | None
) -> None:
    async def go() -> None:
        got: list[dict[str, Any]] = []
        async with engine(tmp_path, Peer(reply, then)) as client:
            with pytest.raises(APIError) as info:
                async for chunk in client.stream(BODY):
                    got.append(chunk)
        assert (info.value.status, info.value.code) == (status, code)
        assert got == CHUNKS[:before]  # what came before the failure was passed on

    run(go)


def test_closing_a_stream_closes_the_connection(tmp_path: Path) -> None:
    async def go() -> None:
        peer = Peer(SSE_HEAD + chunked(event(CHUNKS[0])), then="hang")  # the engine would go on
        async with engine(tmp_path, peer) as client:
            chunks = client.stream(BODY)
            assert await anext(chunks) == CHUNKS[0]
            assert not peer.gone.is_set()
            await chunks.aclose()
            await peer.gone.wait()  # the engine sees the client go: it stops generating

    run(go)


def test_an_engine_that_is_not_there(tmp_path: Path) -> None:
    async def go() -> None:
        transport = httpx.AsyncHTTPTransport(uds=str(tmp_path / "nobody.sock"))
        async with httpx.AsyncClient(transport=transport, base_url="http://engine") as c:
            client = OpenAIHTTP(c)
            with pytest.raises(APIError) as info:
                await client.complete(BODY)
            assert (info.value.status, info.value.code) == (503, "engine_unavailable")
            with pytest.raises(APIError) as info:
                await collect(client)
            assert (info.value.status, info.value.code) == (503, "engine_unavailable")

    run(go)


# -- transport errors, through httpx.MockTransport ---------------------------------------------------------


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (httpx.ConnectTimeout("t"), "engine_timeout"),
        (httpx.ReadTimeout("t"), "engine_timeout"),
        (httpx.PoolTimeout("t"), "engine_timeout"),
        (httpx.ConnectError("c"), "engine_unavailable"),
        (httpx.ReadError("r"), "engine_unavailable"),
        (httpx.RemoteProtocolError("p"), "engine_unavailable"),
        (ConnectionResetError(), "engine_unavailable"),
    ],
)
@pytest.mark.parametrize("mode", ["complete", "stream"])
def test_transport_errors_become_engine_errors(mode: str, exc: Exception, code: str) -> None:
    def fail(request: httpx.Request) -> httpx.Response:
        raise exc

    async def go() -> None:
        async with httpx.AsyncClient(transport=httpx.MockTransport(fail), base_url="http://engine") as c:
            client = OpenAIHTTP(c)
            with pytest.raises(APIError) as info:
                await (client.complete(BODY) if mode == "complete" else collect(client))
        assert (info.value.status, info.value.code) == (503, code)

    run(go)
