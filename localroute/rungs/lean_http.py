"""A lean HTTP/1.1 transport for httpx: asyncio Protocols, httptools' response parser, and a small
keep-alive pool per origin. It replaces httpcore + h11 + anyio under `httpx.AsyncClient`, which cost
most of the gateway's CPU per remote request (docs/bench-overhead.md), and keeps httpx's contract:
the same exceptions for the same failures, timeouts from `request.extensions["timeout"]`, a body that
streams as bytes arrive. One connection's protocol is lean_conn.py; the pool and the transport are here.

HTTP/1.1 only, and no proxies: `default_transport()` returns None when the environment names a proxy,
so that httpx builds its own, proxy-aware transport. TLS is verified as httpx verifies it
(`httpx.create_ssl_context()`: certifi, or SSL_CERT_FILE / SSL_CERT_DIR); there is no plaintext
fallback. Like httpcore, a pooled connection the server closed while idle is never reused; unlike it,
a request on a reused connection that gets a clean close (FIN) before any response byte (the server
dropped the idle connection as we sent) is sent once more on a fresh one. A reset is not retried here.
A body closed before its end may linger (lean_conn.LINGER_S) for the rest, so that its connection is kept.

A request may carry a peer check (`request.extensions[PEER_CHECK]`, a callable that raises to refuse an
address): then the name is resolved here, each address is checked before any connection is attempted,
the connected socket's own peer address is checked again, and a pooled connection is reused only if its
peer passes. The endpoints rung judges trust this way (privacy/trust.py), by where bytes really go.
"""

from __future__ import annotations

import asyncio
import collections
import socket
import ssl
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx

from localroute.rungs.lean_conn import Connection, encode_request

MAX_CONNECTIONS = 100  # per origin, as httpx.Limits; all of them may stay alive (httpx keeps 20)
KEEPALIVE_EXPIRY_S = 5.0  # httpx's default: an idle connection older than this is not reused
_Origin = tuple[bytes, bytes, int]
PEER_CHECK = "localroute.peer_check"  # request extension: Callable[[str], None], raises to refuse a peer
PeerCheck = Callable[[str], None]
Resolver = Callable[[str, int], Awaitable[list[str]]]


async def system_resolve(host: str, port: int) -> list[str]:
    """The addresses `host` resolves to now, in the resolver's order (literals resolve to themselves)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def _admits(check: PeerCheck, peer: str | None) -> bool:
    try:
        check(peer or "")
    except Exception:
        return False
    return True


def default_transport() -> httpx.AsyncBaseTransport | None:
    """A `LeanTransport`, or None (httpx's own transport) when HTTP(S)_PROXY or ALL_PROXY is set."""
    proxies = urllib.request.getproxies()  # what httpx's trust_env reads
    if any(proxies.get(scheme) for scheme in ("http", "https", "all")):
        return None
    return LeanTransport()


class _Pool:
    """The connections to one origin: idle ones (newest first) and a bound on how many exist."""

    def __init__(self, limit: int, expiry: float) -> None:
        self.limit = limit
        self.expiry = expiry
        self.idle: list[Connection] = []
        self.total = 0
        self.closed = False  # its transport was closed: connections that come back are closed too
        self.waiters: collections.deque[asyncio.Future[Connection | None]] = collections.deque()

    async def acquire(self, loop: asyncio.AbstractEventLoop, limit: float | None) -> Connection | None:
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
        fut: asyncio.Future[Connection | None] = loop.create_future()
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

    def give_back(self, conn: Connection | None) -> None:
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


def _expire(fut: asyncio.Future[Connection | None]) -> None:
    if not fut.done():
        fut.set_exception(httpx.PoolTimeout("Timed out waiting for a connection from the pool."))


class _Body(httpx.AsyncByteStream):
    """A response body as it arrives. Read to the end, the connection goes back to the pool."""

    def __init__(self, pool: _Pool, conn: Connection, read_timeout: float | None) -> None:
        self._pool = pool
        self._conn: Connection | None = conn
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

    def _release(self, conn: Connection) -> None:
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
        resolver: Resolver = system_resolve,
        uds: str | None = None,
    ) -> None:
        """`uds`: every request goes to this Unix socket, whatever its URL's host (an engine's worker)."""
        self._resolve = resolver  # used only for requests that carry a peer check
        self._uds = uds
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
        data = await encode_request(request)
        check: PeerCheck | None = request.extensions.get(PEER_CHECK)
        for retry in (False, True):
            conn = await pool.acquire(loop, timeouts.get("pool"))
            if conn is not None and check is not None and not _admits(check, conn.peer):
                conn.close()  # its peer is not for this request: the slot opens a checked connection
                conn = None
            reused = conn is not None
            if conn is None:
                limit = timeouts.get("connect")
                try:
                    if check is None:
                        conn = await self._connect(loop, origin, limit)
                    else:
                        conn = await self._connect_checked(loop, origin, limit, check)
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

    async def _connect_checked(
        self, loop: asyncio.AbstractEventLoop, origin: _Origin, limit: float | None, check: PeerCheck
    ) -> Connection:
        """Resolve, refuse what `check` refuses before dialling it, connect to an address it admits, and
        check the connected socket's peer again: a name that resolves elsewhere later gains nothing."""
        host, port = origin[1].decode("ascii"), origin[2]
        try:
            async with asyncio.timeout(limit):
                addresses = await self._resolve(host, port)
        except TimeoutError:
            raise httpx.ConnectTimeout(f"Timed out resolving {host}.") from None
        except OSError as exc:
            raise httpx.ConnectError(f"{type(exc).__name__}: {exc}") from None
        refusal: Exception | None = None
        failure: httpx.ConnectError | None = None
        for address in addresses:
            try:
                check(address)
            except Exception as exc:
                refusal = refusal or exc
                continue
            try:
                conn = await self._connect(loop, origin, limit, address)
            except httpx.ConnectError as exc:
                failure = exc
                continue
            try:
                check(conn.peer or "")
            except BaseException:
                conn.close()
                raise
            return conn
        if failure is not None:
            raise failure
        if refusal is not None:
            raise refusal
        raise httpx.ConnectError(f"{host} resolved to no address.")

    async def _connect(
        self,
        loop: asyncio.AbstractEventLoop,
        origin: _Origin,
        limit: float | None,
        address: str | None = None,
    ) -> Connection:
        scheme, raw_host, port = origin
        if scheme not in (b"http", b"https"):
            raise httpx.UnsupportedProtocol(f"Unsupported URL scheme {scheme.decode(errors='replace')!r}.")
        host = raw_host.decode("ascii")
        context = self._ssl_context() if scheme == b"https" else None
        try:
            async with asyncio.timeout(limit):
                if self._uds is not None:
                    _, conn = await loop.create_unix_connection(lambda: Connection(loop), self._uds)
                    return conn
                _, conn = await loop.create_connection(
                    lambda: Connection(loop),
                    address or host,
                    port,
                    ssl=context,
                    server_hostname=host if context else None,
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
