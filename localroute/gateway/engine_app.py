"""`localroute engine --model NAME --listen HOST:PORT`: one local rung of models.toml (the llama.cpp worker
or a launched `vllm serve`, with the same supervision as under the gateway) served on its own as
OpenAI-compatible `/v1/chat/completions` (JSON and SSE), so that a gateway on another host can list it in
a rung's `endpoints` (docs/scale-out.md).

Every `/v1/` call needs the shared secret as a bearer token (read from an environment variable or a file;
compared in constant time); `GET /health` needs none and says only whether the engine is ready. The
engine does not classify or route: the gateway did, and judged this host by its address.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import hmac
import logging
import os
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from localroute.config.models import LlamaCppModel, VllmModel
from localroute.config.schema import Config
from localroute.errors import APIError, AuthenticationError, EngineUnavailableError
from localroute.gateway.body import read_body
from localroute.privacy.detect import Detector
from localroute.privacy.guard import EgressGuard
from localroute.protocol import sse
from localroute.protocol.backend import Backend
from localroute.protocol.chat import parse_chat_request
from localroute.protocol.event_stream import EventStream
from localroute.rungs.registry import build_backend

log = logging.getLogger("localroute.engine_server")
TOKEN_ENV = "LOCALROUTE_ENGINE_TOKEN"
MAX_BODY_BYTES = 16 * 1024 * 1024


def _error(exc: APIError) -> Response:
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)


class EngineServer:
    """The HTTP surface of one engine: the secret's check, then the engine's own answers."""

    def __init__(self, backend: Backend, model: LlamaCppModel | VllmModel, token: str) -> None:
        self.backend = backend
        self.model = model
        self._digest = hashlib.sha256(token.encode()).digest()
        self._restart: asyncio.Task[None] | None = None

    def _authorized(self, request: Request) -> bool:
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        # Digests of equal length: the comparison's time says nothing about the secret, not even its size.
        digest = hashlib.sha256(given.strip().encode()).digest()
        return hmac.compare_digest(digest, self._digest) and scheme.lower() == "bearer"

    def _refused(self, request: Request) -> Response | None:
        if self._authorized(request):
            return None
        return _error(AuthenticationError("This engine needs its shared secret as a bearer token."))

    async def health(self, request: Request) -> Response:
        state = self.backend.brief().state
        ok = state in ("ready", "stopped")  # stopped: loads on the first request (preload off)
        if state in ("crashed", "failed") and (self._restart is None or self._restart.done()):
            # Under a gateway's open circuit no request comes to restart it: the probes do.
            self._restart = asyncio.create_task(self._start())
        return JSONResponse({"status": "ok" if ok else state, "model": self.model.name}, 200 if ok else 503)

    async def _start(self) -> None:
        try:
            await self.backend.start()
        except APIError as exc:  # logged by the supervisor; the next probe tries again (after its backoff)
            log.info("model %s not restarted yet: %s", self.model.name, exc.message)

    async def models(self, request: Request) -> Response:
        if (refused := self._refused(request)) is not None:
            return refused
        card = {"id": self.model.name, "object": "model", "created": 0, "owned_by": "localroute"}
        return JSONResponse({"object": "list", "data": [card]})

    async def chat(self, request: Request) -> Response:
        if (refused := self._refused(request)) is not None:
            return refused
        try:
            req = parse_chat_request(await read_body(request, MAX_BODY_BYTES))
            body = req.engine_body(self.model.name, req.output_limit() or self.model.default_max_tokens)
            if not req.stream:
                return JSONResponse(await self.backend.complete(body))
            chunks = self.backend.stream(body)
            first = await anext(chunks, None)  # a failure before the first chunk still gets its status
        except APIError as exc:
            return _error(exc)
        return EventStream(_events(first, chunks))


async def _events(first: Any, chunks: Any) -> AsyncIterator[bytes]:
    try:
        chunk = first
        while chunk is not None:
            yield sse.encode(chunk)
            chunk = await anext(chunks, None)
        yield sse.DONE
    except APIError as exc:  # after the first chunk: the error goes in the stream, and it ends there
        yield sse.encode(exc.body())
    finally:
        await chunks.aclose()


def build_engine_app(backend: Backend, model: LlamaCppModel | VllmModel, token: str) -> Starlette:
    """The engine's app; its lifespan starts the engine (when `preload`) and stops it."""
    server = EngineServer(backend, model, token)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            if model.preload:
                try:
                    await backend.start()
                except APIError as exc:
                    log.warning("model %s not started: %s", model.name, exc.message)
            yield
        finally:
            await backend.aclose()

    return Starlette(
        routes=[
            Route("/health", server.health, methods=["GET"]),
            Route("/v1/models", server.models, methods=["GET"]),
            Route("/v1/chat/completions", server.chat, methods=["POST"]),
        ],
        lifespan=lifespan,
    )


def served_here(config: Config, name: str) -> LlamaCppModel | VllmModel:
    """Rung `name` as this host runs it: its own engine, whatever `endpoints` the gateway's copy lists."""
    model = config.model(name)
    if not isinstance(model, (LlamaCppModel, VllmModel)) or model.task != "chat":
        raise EngineUnavailableError(f"'{name}' is not a local chat rung of this config.")
    if isinstance(model, VllmModel) and model.url is None:
        return model.model_copy(update={"endpoints": [], "launch": True})
    return model.model_copy(update={"endpoints": []})


def read_token(args: argparse.Namespace) -> str | None:
    if args.token_file:
        return Path(args.token_file).read_text().strip() or None
    return os.environ.get(args.token_env or TOKEN_ENV) or None


def parse_listen(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"--listen {listen!r}: expected HOST:PORT, e.g. 0.0.0.0:9000 or [::1]:9000")
    return host.strip("[]"), int(port)


def run(args: argparse.Namespace, config: Config) -> int:
    """`localroute engine`: serve one rung until interrupted. 2 on a usage error."""
    import uvicorn

    from localroute.observe.logs import configure as configure_logs
    from localroute.observe.logs import level_from

    try:
        host, port = parse_listen(args.listen)
        model = served_here(config, args.model)
        token = read_token(args)
    except (ValueError, OSError, APIError) as exc:
        print(f"localroute: {exc.message if isinstance(exc, APIError) else exc}", file=sys.stderr)
        return 2
    if token is None:
        where = f"file {args.token_file}" if args.token_file else f"${args.token_env or TOKEN_ENV}"
        print(f"localroute: the engine's shared secret is empty: set {where}", file=sys.stderr)
        return 2
    detector = Detector(config.privacy.detect, config.privacy.extra_patterns)
    runtime = Path(tempfile.mkdtemp(prefix="localroute-engine-"))  # 0700: only we reach the worker
    backend = build_backend(config, model, runtime, EgressGuard(detector))
    configure_logs(config.server.log_level, config.server.log_format)
    uvicorn.run(
        build_engine_app(backend, model, token),
        host=host,
        port=port,
        log_config=None,
        log_level=level_from(config.server.log_level),
        access_log=False,
        timeout_graceful_shutdown=config.server.shutdown_grace_s,
    )
    return 0
