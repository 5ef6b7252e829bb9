"""The gateway: `create_app(config)` builds a Starlette app whose lifespan owns every runtime object and
hands them to handlers through the request state (Starlette's lifespan state), never a global.

Errors become the OpenAI shape in one place (`error_response`); handlers catch everything themselves
so no traceback ever reaches a client or the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import shutil
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import TypedDict

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from localroute import __version__
from localroute.config.schema import Config
from localroute.errors import APIError, InternalError, MethodNotAllowedError, NotFoundError
from localroute.gateway import completions, embeddings, messages
from localroute.gateway.budget import settle
from localroute.gateway.dashboard import dashboard, dashboard_asset
from localroute.gateway.handlers import Gateway
from localroute.gateway.openapi import openapi_json
from localroute.gateway.responses import handler as responses
from localroute.gateway.security import Guard, KeyRing
from localroute.host.lifecycle import Managed, Placement
from localroute.observe import tracing
from localroute.observe.feedback import Featurize
from localroute.privacy.audit import AuditLog
from localroute.privacy.detect import Detector
from localroute.privacy.guard import EgressGuard
from localroute.privacy.trust import TrustedNetworks
from localroute.protocol.backend import Backend, Embedder
from localroute.rungs.registry import build_backends, build_embedders
from localroute.state.budgets import SharedBudgets
from localroute.state.feedback import SharedFeedback
from localroute.state.limits import SharedConversations, SharedRateLimiter, open_limiter

log = logging.getLogger("localroute")
Handler = Callable[[Request], Awaitable[Response]]
SETTLE_S = 3.0  # at shutdown: how long background store calls (charges, feedback owners) may finish


class State(TypedDict):
    """What the lifespan yields; Starlette copies it into every request's `state`."""

    gateway: Gateway


ANTHROPIC_PATHS = ("/v1/messages",)  # Anthropic's API: its errors take Anthropic's shape


def error_response(exc: APIError, path: str = "") -> JSONResponse:
    """An error in the shape of the API that was called: Anthropic's under /v1/messages, else OpenAI's."""
    anthropic = path.startswith(ANTHROPIC_PATHS)
    body = exc.anthropic_body() if anthropic else exc.body()
    return JSONResponse(body, status_code=exc.status, headers=exc.headers)


def _guarded(handler: Handler) -> Handler:
    async def run(request: Request) -> Response:
        path = request.scope.get("path", "")
        try:
            return await handler(request)
        except APIError as exc:
            return error_response(exc, path)
        except ClientDisconnect:
            return Response(status_code=499)
        except Exception as exc:  # a bug: say so without leaking internals, log its type only
            log.error("unhandled %s in %s", exc.__class__.__name__, request.url.path)
            return error_response(InternalError("Internal error in localroute."), path)

    return run


def _on(handler: Callable[[Gateway, Request], Awaitable[Response]]) -> Handler:
    """A route to one of the Gateway's handlers, on the Gateway that the lifespan put in the state."""

    async def call(request: Request) -> Response:
        return await handler(request.state.gateway, request)

    return _guarded(call)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    path = request.scope.get("path", "")
    if exc.status_code == 405:  # keeps Starlette's `Allow` header: RFC 9110 requires it on a 405
        msg = f"Method {request.method} is not allowed here."
        return error_response(MethodNotAllowedError(msg, headers=dict(exc.headers or {})), path)
    return error_response(NotFoundError(f"No such endpoint: {request.url.path[:200]}"), path)


def create_app(
    config: Config,
    *,
    backends: Mapping[str, Backend] | None = None,
    embedders: Mapping[str, Embedder] | None = None,
    featurize: Featurize | None = None,
) -> Starlette:
    """Build the gateway. Engines are created (from config, unless given) and started in the lifespan.
    `featurize` gives the numbers kept per request to learn from (default: the heuristic's inputs)."""
    counted: list[Gateway] = []  # the lifespan's gateway, whose metrics count shared-state failures

    def state_failed() -> None:
        for g in counted:
            g.metrics.state_errors.inc()

    limiter = open_limiter(config.state, on_error=state_failed)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[State]:
        networks = TrustedNetworks(config.privacy.trusted_networks)
        tracing.setup(__version__, trusted=networks.__contains__, private_spans=config.privacy.private_spans)
        runtime = Path(tempfile.mkdtemp(prefix="localroute-"))  # 0700: only we reach the sockets
        owned = backends is None
        detector = Detector(config.privacy.detect, config.privacy.extra_patterns)
        guard = EgressGuard(detector, redacting=config.privacy.redact)
        live = build_backends(config, runtime, guard) if backends is None else backends
        owned_embedders = embedders is None
        vectors = build_embedders(config, runtime, guard) if embedders is None else embedders
        audit = AuditLog(config.audit_path()) if config.privacy.audit_enabled else None
        placement = Placement.from_config(config)
        for b in (*live.values(), *vectors.values()):
            if isinstance(b, Managed):
                placement.manage(b)
        gateway = Gateway(config, live, detector, audit, placement, vectors, featurize)
        counted[:] = [gateway]
        tasks: list[asyncio.Task[None]] = []
        if isinstance(limiter, SharedRateLimiter):  # the stickiness map is shared through the same store
            gateway.router.conversations.shared = SharedConversations(limiter)
            gateway.billing.budgets = SharedBudgets(limiter)  # and so are the keys' budgets
            replica = config.replica()
            if gateway.learning.store is not None and replica is not None:  # and feedback finds its row
                keep_s = config.feedback.retention_days * 86_400
                gateway.learning.shared = SharedFeedback(limiter, replica, keep_s)
                tasks.append(
                    asyncio.create_task(gateway.learning.drain_forever(), name="localroute-feedback")
                )
        sweeper = asyncio.create_task(placement.sweep(), name="localroute-idle-sweeper")
        tasks.append(sweeper)
        try:
            rungs: dict[str, Backend | Embedder] = {**live, **vectors}
            for m in (*config.ladder(), *config.embedders()):
                if getattr(m, "preload", True):
                    try:
                        await rungs[m.name].start()
                    except APIError as exc:
                        log.warning("model %s not started: %s", m.name, exc.message)
            # What startup built lives until shutdown: out of the collector's sight, so that full
            # collections under load stop walking it (docs/bench-overhead.md); given back at shutdown.
            gc.freeze()
            yield {"gateway": gateway}  # Starlette copies it into each request's state
        finally:
            gc.unfreeze()
            for task in tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            # Streams' charges and feedback owner keys still in flight finish before the store closes.
            if gateway.learning.shared is not None:
                await settle(gateway.learning.shared._tasks, SETTLE_S)
            await gateway.billing.settle(SETTLE_S)
            gateway.learning.close()  # shadow runs stop before the engines they run on
            if owned:
                for b in live.values():
                    await b.aclose()
            if owned_embedders:
                for e in vectors.values():
                    await e.aclose()
            if audit is not None:
                audit.close()
            await limiter.aclose()
            shutil.rmtree(runtime, ignore_errors=True)
            tracing.shutdown()

    # Outermost first. CORS (only when origins are configured) answers preflights before the guard.
    middleware = [
        Middleware(Guard, config=config, keys=KeyRing(config.keys), render=error_response, limiter=limiter)
    ]
    if config.server.cors_origins:
        middleware.insert(0, Middleware(
            CORSMiddleware, allow_origins=config.server.cors_origins, allow_methods=["GET", "POST"],
            allow_headers=["authorization", "content-type", "x-localroute-tier", "x-localroute-max-cost",
                           "x-localroute-privacy", "x-api-key", "anthropic-version", "anthropic-beta"],
            expose_headers=["x-request-id", "x-localroute-model", "x-localroute-tier", "x-localroute-route",
                            "x-localroute-escalations", "x-localroute-confidence"],
        ))  # fmt: skip

    return Starlette(
        routes=[
            Route("/v1/chat/completions", _on(Gateway.chat), methods=["POST"]),
            Route("/v1/responses", _on(responses), methods=["POST"]),
            Route("/v1/completions", _on(completions.handler), methods=["POST"]),
            Route("/v1/embeddings", _on(embeddings.handler), methods=["POST"]),
            Route("/v1/messages", _on(messages.handler), methods=["POST"]),
            Route("/v1/models", _on(Gateway.models), methods=["GET"]),
            Route("/v1/models/{model:str}", _on(Gateway.model), methods=["GET"]),
            Route("/v1/route/explain", _on(Gateway.explain), methods=["POST"]),
            Route("/health", _on(Gateway.health), methods=["GET"]),
            Route("/metrics", _on(Gateway.metrics_page), methods=["GET"]),
            Route("/v1/localroute/stats", _on(Gateway.stats), methods=["GET"]),
            Route("/v1/localroute/feedback", _on(Gateway.feedback), methods=["POST"]),
            Route("/dashboard", _guarded(dashboard), methods=["GET"]),
            Route("/dashboard/assets/{name}", _guarded(dashboard_asset), methods=["GET"]),
            Route("/openapi.json", _guarded(openapi_json), methods=["GET"]),
        ],
        lifespan=lifespan,
        exception_handlers={HTTPException: _http_error},
        middleware=middleware,
    )
