"""A stand-in for a remote OpenAI-compatible provider: a real uvicorn server on a loopback port, run in a
background thread, whose failures (errors, slowness, dropped and reset connections) are set per test.

    with StandinProvider(api_key="sk-test") as provider:
        provider.set("fail", status=503, times=2)
        ... call provider.base_url ...
        assert len(provider.requests) == 3
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import socket
import struct
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

MODES = frozenset({"ok", "slow", "drip", "fail", "reset", "stream_break", "hang"})


@dataclass(frozen=True)
class Recorded:
    """One request as the provider saw it."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any
    time: float


class StandinProvider:
    """Speaks `POST /v1/chat/completions` and `GET /v1/models`; see `set` for the failure modes."""

    def __init__(self, *, api_key: str | None = None, model: str = "standin-frontier") -> None:
        self.api_key = api_key
        self.model = model
        self.requests: list[Recorded] = []
        self._lock = threading.Lock()
        self._mode = "ok"
        self._params: dict[str, Any] = {}
        self._left: int | None = None
        self._ids = itertools.count(1)
        self._stopping = False
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self.port: int = self._sock.getsockname()[1]
        app = Starlette(
            routes=[
                Route("/v1/chat/completions", self._chat, methods=["POST"]),
                Route("/v1/models", self._models, methods=["GET"]),
            ]
        )
        config = uvicorn.Config(
            app, log_level="warning", lifespan="off", loop="asyncio", timeout_graceful_shutdown=2
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, args=([self._sock],), daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def set(self, mode: str = "ok", *, times: int | None = None, **params: Any) -> None:
        """Behave as `mode` for the next `times` chat requests (None: until set again), then "ok".

        ok; slow(delay_s) before the headers; drip(delay_s) one byte at a time; fail(status, message,
        code, retry_after); reset: abort the TCP connection (RST) unanswered; stream_break(chunks):
        send that many SSE events, then close without [DONE]; hang: never answer until shutdown.
        """
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; expected one of {sorted(MODES)}")
        with self._lock:
            self._mode, self._params, self._left = mode, params, times

    def start(self) -> StandinProvider:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("stand-in provider did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self._stopping = True
        self._server.should_exit = True
        self._thread.join(10)
        self._sock.close()

    def __enter__(self) -> StandinProvider:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- handlers ----------------------------------------------------------------------------------

    async def _record(self, request: Request) -> Any:
        raw = await request.body()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode("utf-8", "replace")
        self.requests.append(
            Recorded(request.method, request.url.path, dict(request.headers), body, time.monotonic())
        )
        return body

    def _take(self) -> tuple[str, dict[str, Any]]:
        with self._lock:
            mode, params = self._mode, dict(self._params)
            if self._left is not None:
                self._left -= 1
                if self._left <= 0:
                    self._mode, self._params, self._left = "ok", {}, None
            return mode, params

    def _unauthorized(self, request: Request) -> Response | None:
        given = request.headers.get("authorization", "")
        if self.api_key is None or given == f"Bearer {self.api_key}":
            return None
        return _error(401, f"Incorrect API key provided: {given[7:]}", "invalid_api_key")

    async def _models(self, request: Request) -> Response:
        await self._record(request)
        card = {"id": self.model, "object": "model", "created": 0, "owned_by": "standin"}
        return self._unauthorized(request) or JSONResponse({"object": "list", "data": [card]})

    async def _chat(self, request: Request) -> Response:
        body = await self._record(request)
        if (denied := self._unauthorized(request)) is not None:
            return denied
        mode, p = self._take()
        if mode == "fail":
            status = int(p.get("status", 503))
            headers = {"Retry-After": str(p["retry_after"])} if "retry_after" in p else None
            message = p.get("message", f"stand-in failure {status}")
            return _error(status, message, p.get("code"), headers)
        if mode == "reset":
            await self._drop(request, reset=True)
            return Response(status_code=500)  # never sent: the connection is gone
        if mode == "hang":
            await self._sleep(float("inf"))
            return _error(503, "stand-in shutting down", None)
        if mode == "slow":
            await self._sleep(float(p.get("delay_s", 1.0)))
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            return _error(400, "'messages' is required", "invalid_request")
        pieces, finish = _answer(body)
        if not body.get("stream"):
            data = json.dumps(self._completion(body, pieces, finish)).encode()
            if mode == "drip":
                return StreamingResponse(self._drip(data, p), media_type="application/json")
            return Response(data, media_type="application/json")
        events = self._events(body, pieces, finish)
        if mode == "drip":
            return StreamingResponse(self._drip(b"".join(events), p), media_type="text/event-stream")
        if mode == "stream_break":
            return StreamingResponse(
                self._break(request, events[: int(p.get("chunks", 2))]), media_type="text/event-stream"
            )
        return StreamingResponse(_aiter(events), media_type="text/event-stream")

    # -- bodies --------------------------------------------------------------------------------------

    def _completion(self, body: dict[str, Any], pieces: list[str], finish: str) -> dict[str, Any]:
        message = {"role": "assistant", "content": "".join(pieces)}
        choice = {
            "index": 0,
            "message": message,
            "logprobs": _logprobs(body, pieces),
            "finish_reason": finish,
        }
        return {
            "id": f"chatcmpl-standin{next(self._ids)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", self.model),
            "choices": [choice],
            "usage": _usage(body, pieces),
        }

    def _events(self, body: dict[str, Any], pieces: list[str], finish: str) -> list[bytes]:
        base = {
            "id": f"chatcmpl-standin{next(self._ids)}",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": body.get("model", self.model),
        }
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        if include_usage:
            base["usage"] = None

        def chunk(delta: dict[str, Any], logprobs: Any = None, finish_reason: str | None = None) -> bytes:
            choice = {"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}
            return _sse({**base, "choices": [choice]})

        events = [chunk({"role": "assistant", "content": ""})]
        events += [chunk({"content": piece}, _logprobs(body, [piece])) for piece in pieces]
        events.append(chunk({}, None, finish))
        if include_usage:
            events.append(_sse({**base, "choices": [], "usage": _usage(body, pieces)}))
        return [*events, b"data: [DONE]\n\n"]

    # -- misbehaviour --------------------------------------------------------------------------------

    async def _sleep(self, seconds: float) -> None:
        """Sleep, but wake up for shutdown so that a stuck handler never holds the server."""
        end = time.monotonic() + seconds
        # Polled, not an asyncio.Event: `stop()` runs on the test's thread, not on the server's loop.
        while not self._stopping and time.monotonic() < end:  # noqa: ASYNC110
            await asyncio.sleep(min(0.05, max(end - time.monotonic(), 0)))

    async def _drip(self, data: bytes, params: dict[str, Any]) -> AsyncIterator[bytes]:
        for i in range(len(data)):
            yield data[i : i + 1]
            await self._sleep(float(params.get("delay_s", 0.05)))

    async def _break(self, request: Request, events: list[bytes]) -> AsyncIterator[bytes]:
        for event in events:
            yield event
        await self._drop(request, reset=False)

    async def _drop(self, request: Request, *, reset: bool) -> None:
        """Close this request's TCP connection: RST (`reset`) or FIN after the bytes already written."""
        client = tuple(request.scope["client"])
        conns = self._server.server_state.connections
        conn = next(c for c in conns if tuple(getattr(c, "client", ()) or ()) == client)
        transport = conn.transport
        if reset:
            sock = transport.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            transport.abort()
        else:
            transport.close()
        while conn in conns:  # noqa: ASYNC110 -- uvicorn forgets it once its loop sees the close
            await asyncio.sleep(0.01)


def _last_user_text(body: dict[str, Any]) -> str:
    for message in reversed(body["messages"]):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, list):
                content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
            return str(content or "")
    return ""


def _answer(body: dict[str, Any]) -> tuple[list[str], str]:
    """The answer's words (each a token, leading space included) and the finish reason."""
    pieces = re.findall(r"\s*\S+", "Remote answer to: " + _last_user_text(body)[:40])
    limit = body.get("max_tokens")
    if isinstance(limit, int) and 0 < limit < len(pieces):
        return pieces[:limit], "length"
    return pieces, "stop"


def _logprobs(body: dict[str, Any], pieces: list[str]) -> dict[str, Any] | None:
    if not body.get("logprobs"):
        return None
    content = [{"token": p, "logprob": -0.05, "bytes": list(p.encode()), "top_logprobs": []} for p in pieces]
    return {"content": content}


def _usage(body: dict[str, Any], pieces: list[str]) -> dict[str, int]:
    prompt = sum(len(str(m.get("content", "")).split()) for m in body["messages"] if isinstance(m, dict))
    return {"prompt_tokens": prompt, "completion_tokens": len(pieces), "total_tokens": prompt + len(pieces)}


def _error(status: int, message: str, code: str | None, headers: dict[str, str] | None = None) -> Response:
    etype = "invalid_request_error" if status < 500 else "server_error"
    body = {"error": {"message": message, "type": etype, "param": None, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


def _sse(obj: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


async def _aiter(items: list[bytes]) -> AsyncIterator[bytes]:
    for item in items:
        yield item
