"""A lean HTTP/1.1 transport for httpx: asyncio Protocols, httptools' response parser, and a small
keep-alive pool per origin. It replaces httpcore + h11 + anyio under `httpx.AsyncClient`, which cost
most of the gateway's CPU per remote request (docs/bench-overhead.md), and keeps httpx's contract:
the same exceptions for the same failures, timeouts from `request.extensions["timeout"]`, a body that
streams as bytes arrive.

HTTP/1.1 only, and no proxies: `default_transport()` returns None when the environment names a proxy,
so that httpx builds its own, proxy-aware transport. TLS is verified as httpx verifies it
(`httpx.create_ssl_context()`: certifi, or SSL_CERT_FILE / SSL_CERT_DIR); there is no plaintext
fallback. Like httpcore, a pooled connection the server closed while idle is never reused; unlike it,
a request on a reused connection that gets a clean close (FIN) before any response byte (the server
dropped the idle connection as we sent) is sent once more on a fresh one. A reset is not retried here.
A body closed before its end may linger LINGER_S for the rest, so that its connection is kept.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
import urllib.request
from collections.abc import AsyncIterator
from typing import cast

import httptools
import httpx

MAX_CONNECTIONS = 100  # per origin, as httpx.Limits; all of them may stay alive (httpx keeps 20)
KEEPALIVE_EXPIRY_S = 5.0  # httpx's default: an idle connection older than this is not reused
MAX_HEAD_BYTES = 64 * 1024  # a response status line and headers, at most (h11 allows 16 KiB)
LINGER_S = 0.25  # how long a body closed before its end may take to finish, for its connection's sake
_Origin = tuple[bytes, bytes, int]


def default_transport() -> httpx.AsyncBaseTransport | None:
    """A `LeanTransport`, or None (httpx's own transport) when HTTP(S)_PROXY or ALL_PROXY is set."""
    proxies = urllib.request.getproxies()  # what httpx's trust_env reads
    if any(proxies.get(scheme) for scheme in ("http", "https", "all")):
        return None
    return LeanTransport()


class _Conn(asyncio.Protocol):
    """One connection, one request at a time. The parser's callbacks fill in the current response."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False  # the connection is gone (either side closed it, or it failed)
        self.active = False  # a request is in flight: bytes are expected
        self.idle_since = 0.0
        self._waiter: asyncio.Future[bool] | None = None
        self._paused = False
        self._lingering: tuple[_Pool, asyncio.TimerHandle] | None = None
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

    def finish(self, pool: _Pool | None = None) -> None:
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

    def linger(self, pool: _Pool) -> None:
        """Its reader stopped before the end of the body: let the rest arrive (after an SSE `[DONE]`
        it is usually just the chunked terminator) and reuse the connection, or close it after LINGER_S."""
        self.body = []
        self._lingering = (pool, self.loop.call_later(LINGER_S, self.finish))

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class _Pool:
    """The connections to one origin: idle ones (newest first) and a bound on how many exist."""

    def __init__(self, limit: int, expiry: float) -> None:
        self.limit = limit
        self.expiry = expiry
        self.idle: list[_Conn] = []
        self.total = 0
        self.closed = False  # its transport was closed: connections that come back are closed too
        self.waiters: collections.deque[asyncio.Future[_Conn | None]] = collections.deque()

    async def acquire(self, loop: asyncio.AbstractEventLoop, limit: float | None) -> _Conn | None:
        """An idle connection, or None: a slot reserved for a new one. Waits at most `limit` seconds."""
        while self.idle:
            conn = self.idle.pop()
            if not conn.closed and loop.time() - conn.idle_since < self.expiry:
                return conn
            conn.close()
            self.total -= 1
        if self.total < self.limit:
            self.total += 1
            return None
        fut: asyncio.Future[_Conn | None] = loop.create_future()
        self.waiters.append(fut)
        timer = None if limit is None else loop.call_later(limit, _expire, fut)
        try:
            handed = await fut
        except BaseException:
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                self.give_back(fut.result())  # handed a slot just as we were cancelled
            elif fut in self.waiters:
                self.waiters.remove(fut)
            raise
        finally:
            if timer is not None:
                timer.cancel()
        if handed is not None and handed.closed:
            return None  # died on the way: its slot is ours, for a new one
        return handed

    def give_back(self, conn: _Conn | None) -> None:
        """Return a slot: an idle, reusable connection, or (None) the right to open one."""
        if conn is not None and (conn.closed or not conn.keep_alive or self.closed):
            conn.close()
            conn = None
        while self.waiters:
            fut = self.waiters.popleft()
            if not fut.done():
                fut.set_result(conn)
                return
        if conn is None:
            self.total -= 1
        else:
            conn.idle_since = conn.loop.time()
            self.idle.append(conn)

    def drop_idle(self) -> None:
        """Close every idle connection (on shutdown, or when one of them turned out stale)."""
        idle, self.idle = self.idle, []
        self.total -= len(idle)
        for conn in idle:
            try:
                conn.close()
            except RuntimeError:  # its event loop is closed already
                pass


def _expire(fut: asyncio.Future[_Conn | None]) -> None:
    if not fut.done():
        fut.set_exception(httpx.PoolTimeout("Timed out waiting for a connection from the pool."))


class _Body(httpx.AsyncByteStream):
    """A response body as it arrives. Read to the end, the connection goes back to the pool."""

    def __init__(self, pool: _Pool, conn: _Conn, read_timeout: float | None) -> None:
        self._pool = pool
        self._conn: _Conn | None = conn
        self._timeout = read_timeout

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while (conn := self._conn) is not None:
            if conn.body:
                data = conn.body[0] if len(conn.body) == 1 else b"".join(conn.body)
                conn.body = []
                if conn.done:
                    self._release(conn)
                yield data
            elif conn.done:
                self._release(conn)
            elif conn.error is not None:
                self._release(conn)
                raise conn.error
            else:
                try:
                    arrived = await conn.wait(self._timeout)
                except BaseException:
                    self._release(conn)
                    raise
                if not arrived:
                    self._release(conn)
                    raise httpx.ReadTimeout("Timed out while reading the response body.")

    def _release(self, conn: _Conn) -> None:
        self._conn = None
        conn.finish(self._pool)

    async def aclose(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        if conn.error is None and conn.keep_alive and not conn.closed:
            conn.linger(self._pool)
        else:
            conn.finish(self._pool)


class LeanTransport(httpx.AsyncBaseTransport):
    """`httpx.AsyncClient(transport=LeanTransport())`: HTTP/1.1 over asyncio with a keep-alive pool."""

    def __init__(
        self,
        *,
        max_connections: int = MAX_CONNECTIONS,
        keepalive_expiry: float = KEEPALIVE_EXPIRY_S,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._limit = max_connections
        self._expiry = keepalive_expiry
        self._ssl = ssl_context
        self._pools: dict[_Origin, _Pool] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # connections belong to one event loop
            await self.aclose()
            self._loop = loop
        url = request.url
        origin = (url.raw_scheme, url.raw_host, url.port or (443 if url.raw_scheme == b"https" else 80))
        pool = self._pools.get(origin)
        if pool is None:
            pool = self._pools[origin] = _Pool(self._limit, self._expiry)
        timeouts = request.extensions.get("timeout") or {}
        data = await _encode(request)
        for retry in (False, True):
            conn = await pool.acquire(loop, timeouts.get("pool"))
            reused = conn is not None
            if conn is None:
                try:
                    conn = await self._connect(loop, origin, timeouts.get("connect"))
                except BaseException:
                    pool.give_back(None)
                    raise
            try:
                await conn.send(data, timeouts.get("write"))
                while not conn.head_done:
                    if conn.error is not None:
                        raise conn.error
                    if not await conn.wait(timeouts.get("read")):
                        raise httpx.ReadTimeout("Timed out while waiting for the response.")
            except BaseException as exc:
                conn.active, conn.keep_alive = False, False
                pool.give_back(conn)
                # Closed (FIN) before any response byte: the server dropped it while idle. A reset
                # is not retried here: a server may reset after reading the request (remote.py
                # decides about those).
                stale = isinstance(exc, (httpx.RemoteProtocolError, httpx.WriteError))
                if reused and stale and not conn.seen and not retry:
                    pool.drop_idle()  # its siblings are likely stale too: the retry gets a fresh one
                    continue  # the server closed it as we sent: one more try on a fresh connection
                raise
            if request.method == "HEAD":  # the parser cannot know that no body follows
                conn.done, conn.keep_alive = True, False
            version = b"HTTP/1.0" if conn.parser.get_http_version() == "1.0" else b"HTTP/1.1"
            return httpx.Response(
                conn.status,
                headers=conn.headers,
                stream=_Body(pool, conn, timeouts.get("read")),
                extensions={"http_version": version, "reason_phrase": conn.reason},
            )
        raise AssertionError("unreachable")

    async def _connect(self, loop: asyncio.AbstractEventLoop, origin: _Origin, limit: float | None) -> _Conn:
        scheme, raw_host, port = origin
        if scheme not in (b"http", b"https"):
            raise httpx.UnsupportedProtocol(f"Unsupported URL scheme {scheme.decode(errors='replace')!r}.")
        host = raw_host.decode("ascii")
        context = self._ssl_context() if scheme == b"https" else None
        try:
            async with asyncio.timeout(limit):
                _, conn = await loop.create_connection(
                    lambda: _Conn(loop), host, port, ssl=context, server_hostname=host if context else None
                )
        except TimeoutError:
            raise httpx.ConnectTimeout(f"Timed out connecting to {host}:{port}.") from None
        except OSError as exc:  # refused, unreachable, DNS, TLS verification (ssl.SSLError)
            raise httpx.ConnectError(f"{type(exc).__name__}: {exc}") from None
        return conn

    def _ssl_context(self) -> ssl.SSLContext:
        if self._ssl is None:  # built on first use: loading the CA bundle takes a while
            self._ssl = httpx.create_ssl_context()
            self._ssl.set_alpn_protocols(["http/1.1"])
        return self._ssl

    async def aclose(self) -> None:
        pools, self._pools = self._pools, {}
        for pool in pools.values():
            pool.closed = True
            pool.drop_idle()


async def _encode(request: httpx.Request) -> bytes:
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
