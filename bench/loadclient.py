"""A lean HTTP/1.1 keep-alive client for benchmarks: one asyncio Protocol per connection, no framework.

The same client drives every target, so its own cost cancels out of "added latency". Timestamps are
taken in `data_received` (not when the awaiting coroutine resumes): `first` is the first body byte,
`end` the last. TCP_NODELAY is set on every connection.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from dataclasses import dataclass, field
from typing import cast


@dataclass(frozen=True)
class Reply:
    status: int
    start: float
    first: float  # first body byte (for a stream: the first SSE event)
    end: float
    ok: bool  # 200 and a complete, plausible body (`choices`, or `[DONE]` for a stream)


def request_bytes(
    host: str, port: int, path: str, body: dict[str, object], token: str | None = None
) -> bytes:
    """A complete POST request, built once and written as is for every repetition."""
    data = json.dumps(body, separators=(",", ":")).encode()
    auth = f"authorization: Bearer {token}\r\n" if token else ""
    head = (
        f"POST {path} HTTP/1.1\r\nhost: {host}:{port}\r\ncontent-type: application/json\r\n"
        f"accept: */*\r\n{auth}content-length: {len(data)}\r\n\r\n"
    )
    return head.encode() + data


class Connection(asyncio.Protocol):
    """One keep-alive connection, one request at a time. Understands content-length and chunked."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.fut: asyncio.Future[Reply] | None = None
        self.stream = False
        self._reset()

    @classmethod
    async def open(cls, host: str, port: int) -> Connection:
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(cls, host, port)
        return conn

    def _reset(self) -> None:
        self.status = 0
        self.start = self.first = 0.0
        self.head_done = False
        self.length: int | None = None  # None: chunked
        self.pos = 0  # parse position in buf (chunked)
        self.body = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.fut is not None and not self.fut.done():
            self.fut.set_exception(ConnectionError("connection closed mid-response"))

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def request(self, payload: bytes, stream: bool) -> asyncio.Future[Reply]:
        if self.transport is None:
            raise ConnectionError("connection is closed")
        self._reset()
        self.stream = stream
        self.fut = asyncio.get_running_loop().create_future()
        self.start = time.perf_counter()
        self.transport.write(payload)
        return self.fut

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter()
        self.buf += data
        if not self.head_done:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            lines = bytes(self.buf[:end]).decode("latin-1").split("\r\n")
            self.status = int(lines[0].split(" ", 2)[1])
            for line in lines[1:]:
                name, _, value = line.partition(":")
                name = name.strip().lower()
                if name == "content-length":
                    self.length = int(value)
                elif name == "transfer-encoding" and "chunked" in value.lower():
                    self.length = None
            del self.buf[: end + 4]
            self.head_done = True
        if self.buf and not self.first:
            self.first = now
        if self.length is not None:
            if len(self.buf) >= self.length:
                self.body = self.buf[: self.length]
                del self.buf[: self.length]
                self._done(now)
            return
        while True:  # chunked: consume whole chunks from the buffer
            nl = self.buf.find(b"\r\n")
            if nl < 0:
                return
            size = int(bytes(self.buf[:nl]).split(b";", 1)[0], 16)
            if len(self.buf) < nl + 2 + size + 2:
                return
            self.body += self.buf[nl + 2 : nl + 2 + size]
            del self.buf[: nl + 2 + size + 2]
            if size == 0:
                self._done(now)
                return

    def _done(self, now: float) -> None:
        body = bytes(self.body)
        good = b"[DONE]" in body if self.stream else b'"choices"' in body
        reply = Reply(self.status, self.start, self.first or now, now, self.status == 200 and good)
        if self.fut is not None and not self.fut.done():
            self.fut.set_result(reply)


@dataclass
class LoadResult:
    """A closed-loop run: the replies that finished inside the measured window, and every failure."""

    window_s: float
    replies: list[Reply] = field(default_factory=list)
    errors: int = 0
    completed: int = 0  # every reply, warm-up included (to divide a server's CPU time by)

    @property
    def rps(self) -> float:
        return sum(r.ok for r in self.replies) / self.window_s if self.window_s > 0 else 0.0


async def closed_loop(
    host: str,
    port: int,
    payload: bytes,
    stream: bool,
    clients: int,
    seconds: float,
    warmup: float,
    max_requests: int,
    settle: float = 30.0,
) -> LoadResult:
    """`clients` connections, each sending the next request as soon as its last reply ends. The
    measured window of `seconds` opens once `warmup` has passed and every client has had a reply
    (a steady state, even for a slow server with a long queue), or after `warmup + settle` at the
    latest; replies that end inside it are kept. Every failure of the whole run is an error: a
    connection error, a non-200, a body cut short, a request still open at the end plus 10 s."""
    loop = asyncio.get_running_loop()
    t_start = time.perf_counter()
    window: list[float] = []  # [open, close] once the window opens
    result = LoadResult(window_s=seconds)
    sent = 0
    answered = 0  # clients that have had a reply

    def tick(now: float) -> None:
        if window or now < t_start + warmup:
            return
        if answered >= clients or now >= t_start + warmup + settle:
            window[:] = [now, now + seconds]

    async def worker() -> None:
        nonlocal sent, answered
        conn: Connection | None = None
        first = True
        try:
            while (not window or time.perf_counter() < window[1]) and sent < max_requests:
                sent += 1
                try:
                    if conn is None or conn.transport is None:
                        conn = await Connection.open(host, port)
                    reply = await conn.request(payload, stream)
                    result.completed += 1
                except (OSError, ValueError):
                    result.errors += 1
                    conn = None
                    tick(time.perf_counter())
                    await asyncio.sleep(0.01)  # a refusing server must not become a busy loop
                    continue
                if first:
                    first, answered = False, answered + 1
                tick(reply.end)
                if not reply.ok:
                    result.errors += 1
                elif window and window[0] <= reply.end <= window[1]:
                    result.replies.append(reply)
        finally:
            if conn is not None:
                conn.close()

    tasks = [loop.create_task(worker()) for _ in range(clients)]
    _, pending = await asyncio.wait(tasks, timeout=warmup + settle + seconds + 10)
    for t in pending:
        t.cancel()
    result.errors += len(pending)
    if sent >= max_requests and window:  # stopped by count: the window is what it took
        ends = [r.end for r in result.replies]
        result.window_s = max(ends) - window[0] if ends else seconds
    return result
