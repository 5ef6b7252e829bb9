"""The gateway: `create_app(config)` builds a Starlette app whose lifespan owns every runtime object.

Errors become the OpenAI shape in one place (`error_response`); handlers catch everything themselves
so no traceback ever reaches a client or the log.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from localroute.backends.base import Backend
from localroute.config import Config
from localroute.errors import (
    APIError,
    InternalError,
    MethodNotAllowedError,
    NotFoundError,
    PayloadTooLargeError,
)
from localroute.protocol import parse_chat_request
from localroute.registry import build_backends
from localroute.router import Router

log = logging.getLogger("localroute")
Handler = Callable[[Request], Awaitable[Response]]


def error_response(exc: APIError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)


def _guarded(handler: Handler) -> Handler:
    async def run(request: Request) -> Response:
        try:
            return await handler(request)
        except APIError as exc:
            return error_response(exc)
        except ClientDisconnect:
            return Response(status_code=499)
        except Exception as exc:  # a bug: say so without leaking internals, log its type only
            log.error("unhandled %s in %s", exc.__class__.__name__, request.url.path)
            return error_response(InternalError("Internal error in localroute."))

    return run


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it passes `limit` bytes."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise PayloadTooLargeError(f"Request body is larger than the limit of {limit} bytes.")
    parts: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLargeError(f"Request body is larger than the limit of {limit} bytes.")
        parts.append(chunk)
    return b"".join(parts)


def _sse(obj: Mapping[str, Any]) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


class Gateway:
    """Request handlers over a router; built once per app by the lifespan."""

    def __init__(self, config: Config, backends: Mapping[str, Backend]) -> None:
        self.config = config
        self.backends = backends
        self.router = Router(config, backends)
        self.created = int(time.time())

    async def chat(self, request: Request) -> Response:
        raw = await read_body(request, self.config.server.max_body_bytes)
        req = parse_chat_request(raw)
        target = self.router.resolve(req.model)
        name = target.model.name
        body = req.engine_body(name, req.output_limit() or target.model.default_max_tokens)
        headers = {
            "x-localroute-model": name,
            "x-localroute-tier": str(target.model.tier),
            "x-localroute-route": target.route,
            "x-localroute-escalations": "0",
        }
        if not req.stream:
            result = await target.backend.complete(body)
            result["model"] = name
            return JSONResponse(result, headers=headers)
        chunks = target.backend.stream(body)
        try:
            first = await chunks.__anext__()  # errors before any token still get a status code
        except StopAsyncIteration:
            first = None

        async def events() -> AsyncIterator[bytes]:
            try:
                if first is not None:
                    first["model"] = name
                    yield _sse(first)
                async for chunk in chunks:
                    chunk["model"] = name
                    yield _sse(chunk)
                yield b"data: [DONE]\n\n"
            except APIError as exc:
                yield _sse(exc.body())  # headers are gone; the SDK raises on an error event
            finally:
                # The client may have left (we are being cancelled): close the engine stream anyway,
                # so its slot is freed now rather than when the garbage collector gets to it.
                with anyio.CancelScope(shield=True):
                    await chunks.aclose()

        headers["cache-control"] = "no-cache"
        return StreamingResponse(events(), media_type="text/event-stream", headers=headers)

    async def models(self, request: Request) -> Response:
        data = [{"id": "auto", "object": "model", "created": self.created, "owned_by": "localroute"}] + [
            {"id": m.name, "object": "model", "created": self.created, "owned_by": "localroute"}
            for m in self.config.ladder()
        ]
        return JSONResponse({"object": "list", "data": data})

    async def health(self, request: Request) -> Response:
        engines = {name: b.health() for name, b in self.backends.items()}
        ok = any(e["state"] in ("ready", "stopped") for e in engines.values())
        return JSONResponse({"status": "ok" if ok else "degraded", "engines": engines})


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 405:
        return error_response(MethodNotAllowedError(f"Method {request.method} is not allowed here."))
    return error_response(NotFoundError(f"No such endpoint: {request.url.path[:200]}"))


def create_app(config: Config, *, backends: Mapping[str, Backend] | None = None) -> Starlette:
    """Build the gateway. Engines are created (from config, unless given) and started in the lifespan."""
    holder: dict[str, Gateway] = {}

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        runtime = Path(tempfile.mkdtemp(prefix="localroute-"))  # 0700: only we reach the sockets
        owned = backends is None
        live = build_backends(config, runtime) if backends is None else backends
        holder["gw"] = Gateway(config, live)
        try:
            for m in config.ladder():
                if getattr(m, "preload", False):
                    try:
                        await live[m.name].start()
                    except APIError as exc:
                        log.warning("model %s not started: %s", m.name, exc.message)
            yield
        finally:
            if owned:
                for b in live.values():
                    await b.aclose()
            shutil.rmtree(runtime, ignore_errors=True)

    def route(attr: str) -> Handler:
        async def call(request: Request) -> Response:
            handler: Handler = getattr(holder["gw"], attr)
            return await handler(request)

        return _guarded(call)

    return Starlette(
        routes=[
            Route("/v1/chat/completions", route("chat"), methods=["POST"]),
            Route("/v1/models", route("models"), methods=["GET"]),
            Route("/health", route("health"), methods=["GET"]),
        ],
        lifespan=lifespan,
        exception_handlers={HTTPException: _http_error},
    )
