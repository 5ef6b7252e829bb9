"""A deterministic OpenAI-compatible upstream on loopback, light enough never to be the bottleneck.

    python -m bench.mock_upstream [--port 0] [--latency-ms 0] [--chunk-gap-ms 0]

A raw asyncio Protocol speaking HTTP/1.1 with keep-alive on uvloop (no framework), one process.
`POST /v1/chat/completions` answers a fixed completion: JSON, or with `"stream": true` an SSE stream
(a role chunk, three content chunks, a finish chunk, a usage chunk when
`stream_options.include_usage`, then `data: [DONE]`), chunked. `GET /v1/models` lists the one
model. `--latency-ms` delays each response's first byte, `--chunk-gap-ms` spaces stream events
(libuv timers have millisecond resolution). The bound port is printed as `ready <port>` on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
from collections.abc import Callable
from typing import cast

MODEL = "mock-1"
CREATED = 1_700_000_000
WORDS = ("The sea", " is calm", " tonight.")
USAGE = {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15}


def _json(obj: object) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def _response(status: str, content_type: str, body: bytes) -> bytes:
    head = (
        f"HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {len(body)}\r\n"
        "connection: keep-alive\r\n\r\n"
    )
    return head.encode() + body


def _chunk(obj: object) -> bytes:
    event = b"data: " + (obj if isinstance(obj, bytes) else _json(obj)) + b"\n\n"
    return f"{len(event):x}\r\n".encode() + event + b"\r\n"


COMPLETION = _response(
    "200 OK",
    "application/json",
    _json(
        {
            "id": "chatcmpl-mock",
            "object": "chat.completion",
            "created": CREATED,
            "model": MODEL,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "".join(WORDS)},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": USAGE,
        }
    ),
)
MODELS = _response(
    "200 OK",
    "application/json",
    _json(
        {"object": "list", "data": [{"id": MODEL, "object": "model", "created": CREATED, "owned_by": "mock"}]}
    ),
)
NOT_FOUND = _response(
    "404 Not Found",
    "application/json",
    _json({"error": {"message": "not found", "type": "invalid_request_error", "param": None, "code": None}}),
)
BAD_REQUEST = _response(
    "400 Bad Request",
    "application/json",
    _json(
        {
            "error": {
                "message": "body is not JSON",
                "type": "invalid_request_error",
                "param": None,
                "code": None,
            }
        }
    ),
)
STREAM_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
    b"transfer-encoding: chunked\r\nconnection: keep-alive\r\n\r\n"
)


def _delta(delta: dict[str, str], finish: str | None = None) -> bytes:
    chunk = {
        "id": "chatcmpl-mock",
        "object": "chat.completion.chunk",
        "created": CREATED,
        "model": MODEL,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }
    return _chunk(chunk)


STREAM_EVENTS = (
    _delta({"role": "assistant", "content": ""}),
    *(_delta({"content": w}) for w in WORDS),
    _delta({}, "stop"),
)
USAGE_EVENT = _chunk(
    {
        "id": "chatcmpl-mock",
        "object": "chat.completion.chunk",
        "created": CREATED,
        "model": MODEL,
        "choices": [],
        "usage": USAGE,
    }
)
STREAM_END = _chunk(b"[DONE]") + b"0\r\n\r\n"


def stream_parts(include_usage: bool) -> list[bytes]:
    """The wire pieces of one streamed answer, headers first, in the order they are written."""
    return [STREAM_HEAD, *STREAM_EVENTS, *((USAGE_EVENT,) if include_usage else ()), STREAM_END]


class MockProtocol(asyncio.Protocol):
    """One connection: requests are served one at a time, in order (a pipelined one waits)."""

    def __init__(self, latency_s: float, gap_s: float) -> None:
        self.latency_s = latency_s
        self.gap_s = gap_s
        self.buf = bytearray()
        self.busy = False
        self.transport: asyncio.Transport | None = None
        self.loop = asyncio.get_running_loop()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if not self.busy:
            self._serve()

    def _serve(self) -> None:
        while self.transport is not None and not self.busy:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buf[:end]).decode("latin-1").split("\r\n")
            length, close = 0, False
            for line in head[1:]:
                name, _, value = line.partition(":")
                name = name.strip().lower()
                if name == "content-length":
                    length = int(value)
                elif name == "connection":
                    close = value.strip().lower() == "close"
            if len(self.buf) < end + 4 + length:
                return
            body = bytes(self.buf[end + 4 : end + 4 + length])
            del self.buf[: end + 4 + length]
            method, path, *_ = [*head[0].split(" "), "", ""]
            parts = self._answer(method, path.split("?", 1)[0], body)
            self._send(parts, close)

    def _answer(self, method: str, path: str, body: bytes) -> list[bytes]:
        if method == "POST" and path.endswith("/chat/completions"):
            try:
                req = json.loads(body)
            except ValueError:
                return [BAD_REQUEST]
            if not isinstance(req, dict):
                return [BAD_REQUEST]
            if req.get("stream"):
                opts = req.get("stream_options")
                return stream_parts(isinstance(opts, dict) and bool(opts.get("include_usage")))
            return [COMPLETION]
        if method == "GET" and path.endswith("/models"):
            return [MODELS]
        if method == "GET" and path in ("/health", "/"):
            return [_response("200 OK", "application/json", b'{"status":"ok"}')]
        return [NOT_FOUND]

    def _send(self, parts: list[bytes], close: bool) -> None:
        if self.latency_s <= 0 and (self.gap_s <= 0 or len(parts) == 1):
            self._write(b"".join(parts), close, last=True)
            return
        # Headers and the first event go together, then one event per gap.
        writes = (
            [b"".join(parts)] if self.gap_s <= 0 or len(parts) == 1 else [parts[0] + parts[1], *parts[2:]]
        )
        self.busy = True
        if self.latency_s > 0:
            self.loop.call_later(self.latency_s, self._step, writes, close)
        else:
            self._step(writes, close)

    def _step(self, writes: list[bytes], close: bool) -> None:
        data = writes.pop(0)
        self._write(data, close, last=not writes)
        if writes and self.transport is not None:
            self.loop.call_later(self.gap_s, self._step, writes, close)

    def _write(self, data: bytes, close: bool, last: bool) -> None:
        if self.transport is None:
            return
        self.transport.write(data)
        if not last:
            return
        if close:
            self.transport.close()
            return
        if self.busy:
            self.busy = False
            if self.buf:
                self._serve()


async def serve(host: str, port: int, latency_s: float, gap_s: float, ready: Callable[[int], None]) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: MockProtocol(latency_s, gap_s), host, port, backlog=1024, reuse_address=True
    )
    ready(server.sockets[0].getsockname()[1])
    async with server:
        await server.serve_forever()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0, help="0 picks a free port (printed as `ready <port>`)")
    ap.add_argument("--latency-ms", type=float, default=0.0, help="delay before each response's first byte")
    ap.add_argument("--chunk-gap-ms", type=float, default=0.0, help="delay between stream events")
    args = ap.parse_args()
    try:
        import uvloop
    except ImportError:  # plain asyncio still works; slower
        uvloop = None

    def ready(port: int) -> None:
        print(f"ready {port}", flush=True)

    coro = serve(args.host, args.port, args.latency_ms / 1000, args.chunk_gap_ms / 1000, ready)
    try:
        if uvloop is not None:
            uvloop.run(coro)
        else:
            asyncio.run(coro)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
