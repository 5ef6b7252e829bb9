"""One HTTP/1.1 client connection as an asyncio Protocol, parsed by httptools: the wire half of
`lean_http.LeanTransport` (the pool, the bodies and the httpx transport are there).

A `Connection` carries one request at a time and raises httpx's exceptions for httpx's failures: a
connection lost mid-response, a malformed or oversized response head, a write that does not drain in
time. Bytes nobody asked for make it untrustworthy, so it is closed rather than reused.
"""

from __future__ import annotations

import asyncio
from typing import Protocol, cast

import httptools
import httpx

MAX_HEAD_BYTES = 64 * 1024  # a response status line and headers, at most (h11 allows 16 KiB)
LINGER_S = 0.25  # how long a body closed before its end may take to finish, for its connection's sake


class Pool(Protocol):
    """Where a finished connection goes back (lean_http's pool of one origin)."""

    def give_back(self, conn: Connection | None) -> None: ...


class Connection(asyncio.Protocol):
    """One connection, one request at a time. The parser's callbacks fill in the current response."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.peer: str | None = None  # the connected peer's address, as the socket reports it
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False  # the connection is gone (either side closed it, or it failed)
        self.active = False  # a request is in flight: bytes are expected
        self.idle_since = 0.0
        self._waiter: asyncio.Future[bool] | None = None
        self._paused = False
        self._lingering: tuple[Pool, asyncio.TimerHandle] | None = None
        self._start()

    def _start(self) -> None:
        self.status = 0
        self.reason = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.head_bytes = 0  # status line and headers of the response being read, bounded
        self.head_done = self.done = self.seen = self._interim = False
        self.keep_alive = True
        self.body: list[bytes] = []
        self.error: httpx.TransportError | None = None

    # -- asyncio.Protocol ---------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        peername = transport.get_extra_info("peername")
        self.peer = str(peername[0]) if isinstance(peername, tuple) and peername else None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.active and not self.done and self.error is None:
            if exc is not None:
                self.error = httpx.ReadError(f"{type(exc).__name__}: {exc}")
            elif self.head_done and self._until_eof():
                self.done, self.keep_alive = True, False
            elif not self.seen:
                self.error = httpx.RemoteProtocolError("Server disconnected without sending a response.")
            else:
                self.error = httpx.RemoteProtocolError("Server closed the connection mid-response.")
        self._paused = False
        self._wake(True)
        if self._lingering is not None:
            self.finish()

    def data_received(self, data: bytes) -> None:
        if not self.active or self.done:  # bytes nobody asked for: this connection cannot be trusted
            self.keep_alive = False
            self.close()
            return
        self.seen = True
        try:
            self.parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            self.error = httpx.RemoteProtocolError(f"Malformed HTTP response: {exc}")
            self.close()
        self._wake(True)
        if self._lingering is not None:
            self.body = []
            if self.done or self.error is not None:
                self.finish()

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        self._wake(True)

    # -- httptools callbacks ------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self.head_done:  # a second response to one request: stop parsing, drop the connection
            raise httpx.RemoteProtocolError("Unexpected data after the response.")

    def _count(self, n: int) -> None:
        self.head_bytes += n
        if self.head_bytes > MAX_HEAD_BYTES:  # as h11 refuses: a provider must not grow our memory
            raise httpx.RemoteProtocolError(f"Response headers exceed {MAX_HEAD_BYTES} bytes.")

    def on_status(self, status: bytes) -> None:
        self._count(len(status))
        self.reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4)
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        if self.status < 200:  # an interim response (103 Early Hints …): the real one follows
            self._interim, self.headers, self.reason, self.head_bytes = True, [], b"", 0
        else:
            self.head_done = True

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
        else:
            self.done, self.keep_alive = True, self.parser.should_keep_alive()

    # -- the request side ---------------------------------------------------------------------------

    def _wake(self, value: bool) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(value)

    async def wait(self, limit: float | None) -> bool:
        """Until the next event (bytes, close, writable); False if `limit` seconds passed without one."""
        fut: asyncio.Future[bool] = self.loop.create_future()
        self._waiter = fut
        timer = None if limit is None else self.loop.call_later(limit, self._wake, False)
        try:
            return await fut
        finally:
            self._waiter = None
            if timer is not None:
                timer.cancel()

    async def send(self, data: bytes, write_timeout: float | None) -> None:
        if self.closed or self.transport is None:
            raise httpx.WriteError("The connection is closed.")
        self._start()
        self.active = True
        self.transport.write(data)
        while self._paused and not self.closed:  # a large body: wait until the kernel takes it
            if not await self.wait(write_timeout):
                raise httpx.WriteTimeout("Timed out while sending the request.")

    def _until_eof(self) -> bool:
        """The body runs until the server closes (no Content-Length, not chunked)."""
        names = {name.lower() for name, _ in self.headers}
        return b"content-length" not in names and b"transfer-encoding" not in names

    def finish(self, pool: Pool | None = None) -> None:
        """The request is over: back to `pool` (the lingering one by default) if it can be reused."""
        if self._lingering is not None:
            pool, timer = self._lingering
            self._lingering = None
            timer.cancel()
        self.active = False
        if not self.done or self.error is not None:
            self.keep_alive = False
        if pool is not None:
            pool.give_back(self)

    def linger(self, pool: Pool) -> None:
        """Its reader stopped before the end of the body: let the rest arrive (after an SSE `[DONE]`
        it is usually just the chunked terminator) and reuse the connection, or close it after LINGER_S."""
        self.body = []
        self._lingering = (pool, self.loop.call_later(LINGER_S, self.finish))

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


async def encode_request(request: httpx.Request) -> bytes:
    """The request head and body. Refuses a head that a CR or LF inside a header would split."""
    headers = request.headers.raw
    url = request.url
    target = url.raw_path
    parts = [request.method.encode("ascii"), b" ", target, b" HTTP/1.1\r\n"]
    for name, value in headers:
        parts += (name, b": ", value, b"\r\n")
    parts.append(b"\r\n")
    head = b"".join(parts)
    lines = len(headers) + 2
    if head.count(b"\n") != lines or head.count(b"\r") != lines or b"\0" in head:
        raise httpx.LocalProtocolError("A header name or value contains CR, LF or NUL.")
    try:
        return head + request.content
    except httpx.RequestNotRead:  # a streamed body: read it, and frame it as one chunk if it is chunked
        body = await request.aread()
    if "chunked" not in request.headers.get("transfer-encoding", "").lower():
        return head + body
    if not body:
        return head + b"0\r\n\r\n"
    return b"".join((head, b"%x\r\n" % len(body), body, b"\r\n0\r\n\r\n"))
