"""The remote rung's request, built past httpx's client layer: the same bytes on the wire as
`httpx.Request(content=..., headers=...)` puts there, for every origin, body and kind of call."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from localroute.rungs.lean_conn import encode_request
from localroute.rungs.remote_send import Sender, dump

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
