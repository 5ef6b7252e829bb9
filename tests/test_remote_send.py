"""The remote rung's request, built past httpx's client layer: the same bytes on the wire as
`httpx.Request(content=..., headers=...)` puts there, for every origin, body and kind of call; and
its answer's body, read past httpx's decoder layers unless the provider encoded it."""

from __future__ import annotations

import asyncio
import gzip
import json
import threading
import zlib
from collections.abc import Iterator

import httpx
import pytest

from localroute.privacy.guard import CURRENT, Privacy
from localroute.rungs.lean_conn import encode_request
from localroute.rungs.remote_send import Sender, dump
from tests.test_remote import BODY, complete, remote

URLS = (
    "http://127.0.0.1:8123/v1/chat/completions",
    "https://api.example.com/v1/chat/completions",
    "https://api.example.com:8443/openai/v1/completions?api-version=2024",
    "http://[::1]:9000/v1/chat/completions",
)
TIMEOUT = httpx.Timeout(60.0, connect=5.0, pool=5.0)


def sender(auth: dict[str, str]) -> Sender:
    transport = httpx.MockTransport(lambda request: httpx.Response(200))
    return Sender(httpx.AsyncClient(), transport, TIMEOUT, auth)


def plain(s: Sender, url: httpx.URL, out: dict[str, object], extra: dict[str, str]) -> httpx.Request:
    """What the rung built before: httpx's own request construction."""
    headers = {**s._headers[bool(out.get("stream"))], **extra}
    return httpx.Request("POST", url, content=dump(out), headers=headers,
                         extensions={"timeout": TIMEOUT.as_dict()})  # fmt: skip


@pytest.mark.parametrize("url", URLS)
@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("auth", [{}, {"Authorization": "Bearer sk-test"}])
def test_the_request_is_the_one_httpx_builds(url: str, stream: bool, auth: dict[str, str]) -> None:
    s = sender(auth)
    u = httpx.URL(url)
    bodies = [
        {"model": "m", "messages": [{"role": "user", "content": "héllo ✓"}], "stream": stream},
        {"model": "m", "messages": [{"role": "user", "content": "x" * 5000}], "stream": stream, "n": 1},
    ]
    for out in (*bodies, bodies[0]):  # the cached head is reused, never changed by a request
        got, want = s.request(u, out, {}), plain(s, u, out, {})
        assert (got.method, got.url, got.headers.raw, got.content) == (
            want.method, want.url, want.headers.raw, want.content
        )  # fmt: skip
        assert got.extensions == want.extensions
        assert asyncio.run(encode_request(got)) == asyncio.run(encode_request(want))


def test_trace_context_headers_go_out_too() -> None:
    s = sender({"Authorization": "Bearer sk-test"})
    u = httpx.URL(URLS[1])
    out = {"model": "m", "messages": [], "stream": False}
    extra = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}
    got = s.request(u, out, extra)
    assert got.headers["traceparent"] == extra["traceparent"]
    assert got.headers.raw == plain(s, u, out, extra).headers.raw
    assert "traceparent" not in s.request(u, out, {}).headers  # not kept for the next request


ANSWER = {"id": "chatcmpl-1", "object": "chat.completion", "model": "standin-frontier",
          "choices": [{"index": 0, "message": {"role": "assistant", "content": "Paris — ✓ " * 300},
                       "finish_reason": "stop"}]}  # fmt: skip


@pytest.fixture
def public_request() -> Iterator[None]:
    token = CURRENT.set(Privacy(False, "public-header"))
    yield
    CURRENT.reset(token)


def answering(encoding: str, chunked: bool) -> tuple[asyncio.AbstractServer, int]:
    """A loopback provider that answers every POST with ANSWER, encoded and framed as asked."""
    raw = json.dumps(ANSWER).encode()
    body = {"": raw, "gzip": gzip.compress(raw), "deflate": zlib.compress(raw)}[encoding]

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            int(h.split(b":")[1]) for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")
        )
        await reader.readexactly(length)
        hdrs = [b"HTTP/1.1 200 OK", b"Content-Type: application/json"]
        hdrs += [b"Content-Encoding: " + encoding.encode()] if encoding else []
        if chunked:  # in three pieces, as a proxy might
            thirds = [
                body[: len(body) // 3],
                body[len(body) // 3 : 2 * len(body) // 3],
                body[2 * len(body) // 3 :],
            ]
            payload = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in thirds) + b"0\r\n\r\n"
            hdrs.append(b"Transfer-Encoding: chunked")
        else:
            payload = body
            hdrs.append(b"Content-Length: %d" % len(body))
        writer.write(b"\r\n".join(hdrs) + b"\r\n\r\n" + payload)
        await writer.drain()
        writer.close()

    async def start() -> asyncio.AbstractServer:
        return await asyncio.start_server(serve, "127.0.0.1", 0)

    loop = asyncio.new_event_loop()
    server = loop.run_until_complete(start())
    return server, server.sockets[0].getsockname()[1]


@pytest.mark.parametrize("encoding", ["", "gzip", "deflate"])
@pytest.mark.parametrize("chunked", [False, True])
def test_the_answer_reads_whole_however_it_is_encoded(
    public_request: None, encoding: str, chunked: bool
) -> None:
    server, port = answering(encoding, chunked)
    loop = server.get_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        assert complete(remote(f"http://127.0.0.1:{port}/v1"), BODY) == ANSWER
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
