"""How the remote rung puts one request on the wire: straight to its transport, past httpx's client layer.

`httpx.AsyncClient.send` merges headers, builds the body, runs auth and redirect machinery and parses
every response's `Set-Cookie` into a jar, which together cost more CPU per remote request than the
lean transport itself (docs/bench-overhead.md). The rung needs none of it: one POST, no redirects, a
static auth header. And a cookie jar is a liability here: a provider's cookie would be kept and sent
back with every later request, one more identifier across requests that the gateway never promised.
So the request is built once (headers compiled at startup, the body dumped once as httpx dumps it) and
handed to the transport; the client path remains only for httpx's proxy-aware transport, which
`lean_http.default_transport()` leaves to httpx.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import httpx

# What httpx.AsyncClient would add (its own defaults) plus the body's type; compiled once per rung.
_BASE = {
    "Accept-Encoding": "gzip, deflate",
    "Connection": "keep-alive",
    "User-Agent": f"python-httpx/{httpx.__version__}",
    "Content-Type": "application/json",
}


def dump(out: Mapping[str, Any]) -> bytes:
    """The request body as httpx's `json=` would write it (compact, UTF-8, no NaN)."""
    return json.dumps(out, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()


class Sender:
    """Sends a POST to the rung's transport, or through `client` when there is no transport of our own."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        transport: httpx.AsyncBaseTransport | None,
        timeout: httpx.Timeout,
        auth: Mapping[str, str],
    ) -> None:
        self.client = client
        self.transport = transport
        self._timeout = timeout.as_dict()
        # (stream?) -> the request headers, compiled once: no per-request merge of header objects.
        self._headers = {
            s: {**_BASE, "Accept": "text/event-stream" if s else "application/json", **auth}
            for s in (False, True)
        }
        # (origin, stream?) -> the head as httpx would order it (Host first), normalised once.
        self._heads: dict[tuple[bytes, bool], httpx.Headers] = {}

    def request(self, url: httpx.URL, out: Mapping[str, Any], extra: Mapping[str, str]) -> httpx.Request:
        stream = bool(out.get("stream"))
        headers = self._headers[stream]
        if extra:
            headers = {**headers, **extra}
        if self.transport is None:
            return self.client.build_request("POST", url, content=dump(out), headers=headers)
        if extra:  # trace context (OpenTelemetry on): the plain way
            return httpx.Request("POST", url, content=dump(out), headers=headers,
                                 extensions={"timeout": self._timeout})  # fmt: skip
        return self._prebuilt(url, stream, dump(out))

    def _prebuilt(self, url: httpx.URL, stream: bool, body: bytes) -> httpx.Request:
        """The request `httpx.Request(content=body, headers=...)` builds, the same head byte for byte,
        without normalising every header again for each request: its head is copied from one made
        when the origin is first called, and only Content-Length is added (docs/bench-overhead.md)."""
        netloc = url.netloc
        head = self._heads.get((netloc, stream))
        if head is None:
            head = httpx.Headers({"Host": netloc.decode("ascii"), **self._headers[stream]})
            self._heads[(netloc, stream)] = head
        headers = httpx.Headers(head)  # a copy of its list
        headers["Content-Length"] = str(len(body))
        request = httpx.Request("POST", url, headers=headers, stream=httpx.ByteStream(body),
                                extensions={"timeout": self._timeout})  # fmt: skip
        request.read()  # the body is in memory: `request.content`, as `content=` gives it
        return request

    async def send(self, request: httpx.Request) -> httpx.Response:
        """The response, its body not yet read (as `client.send(..., stream=True)`)."""
        if self.transport is None:
            return await self.client.send(request, stream=True)
        resp = await self.transport.handle_async_request(request)
        resp.request = request
        return resp


async def read_all(resp: httpx.Response) -> bytes:
    """The whole response body. Unencoded (as providers send JSON), straight from the transport's
    stream: httpx's decoder and chunker layers only copy it (docs/bench-overhead.md)."""
    if resp.headers.get("content-encoding", "identity").strip().lower() not in ("identity", ""):
        return await resp.aread()  # gzip, deflate, ...: httpx decodes it
    return b"".join([part async for part in resp.stream])  # type: ignore[union-attr]
