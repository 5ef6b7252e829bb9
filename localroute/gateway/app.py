"""The gateway: `create_app(config)` builds a Starlette app whose lifespan owns every runtime object.

Errors become the OpenAI shape in one place (`error_response`); handlers catch everything themselves
so no traceback ever reaches a client or the log.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from localroute.config.schema import LOCAL_ENGINES, Config
from localroute.errors import (
    APIError,
    DeadlineExceededError,
    InternalError,
    InvalidRequestError,
    MethodNotAllowedError,
    NotFoundError,
    PayloadTooLargeError,
    RequestTimeoutError,
)
from localroute.gateway.dashboard import dashboard, dashboard_asset
from localroute.gateway.openapi import openapi_json
from localroute.gateway.security import Guard, KeyRing, matched_key
from localroute.host.lifecycle import Managed, Placement
from localroute.observe.cost import baseline_cost, baseline_model
from localroute.observe.logs import REQUEST_LOGGER
from localroute.observe.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from localroute.observe.metrics import Metrics
from localroute.observe.stats import parse_since, summarize_timed
from localroute.privacy.audit import AuditLog
from localroute.privacy.guard import (
    CURRENT,
    SCANNED_CLEAN,
    Detector,
    EgressGuard,
    Privacy,
    body_texts,
    resolve,
)
from localroute.protocol.backend import Backend
from localroute.protocol.chat import ChatCompletionRequest, parse_chat_request
from localroute.routing.policy import Hints
from localroute.routing.router import Router, Trace
from localroute.rungs.registry import build_backends

log = logging.getLogger("localroute")
request_log = logging.getLogger(REQUEST_LOGGER)
STATS_CACHE_S = 1.0
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


def parse_hints(headers: Mapping[str, str]) -> Hints:
    """Routing hints from `X-LocalRoute-Tier` (a tier number, `local` or `remote`) and
    `X-LocalRoute-Max-Cost` (USD for this request)."""
    tier = headers.get("x-localroute-tier")
    if tier is not None:
        tier = tier.strip().lower()
        if not (tier in ("local", "remote") or (tier.isdigit() and len(tier) <= 3)):
            raise InvalidRequestError(
                "X-LocalRoute-Tier must be a tier number, 'local' or 'remote'.",
                param="X-LocalRoute-Tier",
                code="invalid_header_value",
            )
    cost_raw = headers.get("x-localroute-max-cost")
    max_cost = None
    if cost_raw is not None:
        try:
            max_cost = float(cost_raw)
        except ValueError:
            max_cost = -1.0
        if not math.isfinite(max_cost) or max_cost < 0:
            raise InvalidRequestError(
                "X-LocalRoute-Max-Cost must be a non-negative number of US dollars.",
                param="X-LocalRoute-Max-Cost",
                code="invalid_header_value",
            )
    return Hints(tier=tier, max_cost=max_cost)


def _sse(obj: Mapping[str, Any]) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


class Gateway:
    """Request handlers over a router; built once per app by the lifespan."""

    def __init__(
        self,
        config: Config,
        backends: Mapping[str, Backend],
        detector: Detector,
        audit: AuditLog | None,
        placement: Placement | None = None,
    ) -> None:
        self.config = config
        self.backends = backends
        self.placement = placement
        self.router = Router(config, backends)
        self.detector = detector
        self.audit = audit
        self.created = int(time.time())
        self.baseline = baseline_model(config)
        # (time, record) of the latest requests, oldest first: the stats API's window.
        self.records: collections.deque[tuple[datetime, dict[str, Any]]] = collections.deque(
            maxlen=config.server.stats_window
        )
        self._stats_cache: dict[str, tuple[float, dict[str, Any]]] = {}
        self.metrics = Metrics(lambda: {name: b.health() for name, b in self.backends.items()})

    def classify(self, request: Request, req: ChatCompletionRequest) -> Privacy:
        """The request's privacy class: header, API key policy, detected data, config default."""
        header = request.headers.get("x-localroute-privacy")
        if header is not None and header.strip().lower() not in ("private", "public"):
            raise InvalidRequestError(
                "X-LocalRoute-Privacy must be 'private' or 'public'.",
                param="X-LocalRoute-Privacy",
                code="invalid_header_value",
            )
        texts = tuple(body_texts(req.model_dump(include={"messages", "stop"})))
        kinds = self.detector.kinds_in(texts)
        if not kinds:
            SCANNED_CLEAN.set(texts)  # the egress guard need not scan these very strings again
        return resolve(self.config.privacy, header, self._key_policy(request), kinds)

    def _key_policy(self, request: Request) -> str | None:
        key = matched_key(request.scope)  # the guard's match: keys are not hashed twice
        return None if key is None else key.privacy

    async def chat(self, request: Request) -> Response:
        t0 = time.monotonic()
        rid = "req-" + os.urandom(10).hex()
        limit = self.config.server.request_timeout_s
        deadline = asyncio.get_running_loop().time() + limit
        try:
            async with asyncio.timeout_at(deadline):  # a client trickling its body holds nothing forever
                raw = await read_body(request, self.config.server.max_body_bytes)
        except TimeoutError:
            raise RequestTimeoutError(f"The request body did not arrive within {limit:g} s.") from None
        req = parse_chat_request(raw)
        hints = parse_hints(request.headers)
        if len(req.messages) > self.config.server.max_messages:
            raise InvalidRequestError(
                f"Too many messages: {len(req.messages)}, the limit is {self.config.server.max_messages}.",
                param="messages",
                code="too_many_messages",
            )
        privacy = self.classify(request, req)
        CURRENT.set(privacy)  # this request's task: the egress guard reads it
        attempts: list[dict[str, Any]] = []  # the rungs tried, for the audit record even on failure
        late = DeadlineExceededError(f"The request did not finish within {limit:g} s.")
        try:
            try:
                async with asyncio.timeout_at(deadline):
                    if not req.stream:
                        result, trace = await self.router.complete(req, hints, privacy, attempts, deadline)
                    else:
                        chunks, trace = await self.router.stream(req, hints, privacy, attempts, deadline)
            except TimeoutError:
                raise late from None
            if not req.stream:
                answer = (result.get("choices") or [{}])[0].get("message", {}).get("content")
                self._record(rid, privacy, trace, 200, t0, content=(req, answer), stream=False)
                return JSONResponse(result, headers={**trace.headers(), "x-request-id": rid})
        except APIError as exc:
            self._record(
                rid, privacy, None, exc.status, t0, error=exc.code or exc.type, attempts=attempts,
                content=(req, None), stream=bool(req.stream),
            )  # fmt: skip
            exc.headers = {**exc.headers, "x-request-id": rid}
            raise
        except Exception as exc:  # a bug: the request is still recorded, the client gets a clean 500
            log.error("unhandled %s serving %s", exc.__class__.__name__, rid)
            self._record(rid, privacy, None, 500, t0, error="internal_error", attempts=attempts)
            raise InternalError("Internal error in localroute.", headers={"x-request-id": rid}) from None

        async def events() -> AsyncIterator[bytes]:
            status, error = 200, None
            parts: list[str] = []  # the answer, kept only for an operator who opted into content
            keep = self.config.privacy.audit_content
            first: float | None = None  # when the first content reached the client: TTFT
            try:
                while True:
                    try:
                        # The deadline guards the wait for each chunk, never a yield to the client.
                        async with asyncio.timeout_at(deadline):
                            chunk = await anext(chunks)
                    except StopAsyncIteration:
                        break
                    except TimeoutError:
                        raise late from None
                    if keep or first is None:
                        for ch in chunk.get("choices") or ():
                            text = (ch.get("delta") or {}).get("content") or ""
                            if text and first is None:
                                first = time.monotonic()
                            if keep:
                                parts.append(text)
                    yield _sse(chunk)
                yield b"data: [DONE]\n\n"
            except APIError as exc:
                status, error = exc.status, exc.code or exc.type
                yield _sse(exc.body())  # headers are gone; the SDK raises on an error event
            except Exception as exc:  # a bug mid-stream: end it with an error event, record a 500
                log.error("unhandled %s streaming %s", exc.__class__.__name__, rid)
                status, error = 500, "internal_error"
                yield _sse(InternalError("Internal error in localroute.").body())
            except BaseException:  # the client left (we are cancelled or closed): not a success
                status, error = 499, "client_gone"
                raise
            finally:
                # The client may have left (we are being cancelled): close the engine stream anyway,
                # so its slot is freed now rather than when the garbage collector gets to it.
                with anyio.CancelScope(shield=True):
                    await chunks.aclose()
                self._record(
                    rid, privacy, trace, status, t0, error=error, content=(req, "".join(parts)), stream=True,
                    ttft=first,
                )  # fmt: skip

        headers = {**trace.headers(), "cache-control": "no-cache", "x-request-id": rid}
        return StreamingResponse(events(), media_type="text/event-stream", headers=headers)

    def _record(
        self,
        rid: str,
        privacy: Privacy,
        trace: Trace | None,
        status: int,
        t0: float,
        error: str | None = None,
        attempts: list[dict[str, Any]] | None = None,
        content: tuple[ChatCompletionRequest, str | None] | None = None,
        stream: bool = False,
        ttft: float | None = None,
    ) -> None:
        """One record per request, to the audit log, the stats window, the metrics and the request
        log: no prompt or answer text (unless the operator opted into it, and then only in the audit
        log), no matched data, no keys. Without a trace (the request failed), `attempts` lists the
        rungs it tried."""
        seconds = time.monotonic() - t0
        now = datetime.now(UTC)
        rec: dict[str, Any] = {
            "ts": now.isoformat(timespec="milliseconds"),
            "id": rid,
            "privacy": privacy.as_json(),
            "status": status,
            "error": error,
            "stream": stream,
            "latency_ms": round(seconds * 1000, 1),
            "ttft_ms": None if ttft is None else round((ttft - t0) * 1000, 1),
        }
        if trace is None:
            tried = attempts or []
            rec.update(
                attempts=tried,
                cost_usd=round(sum(a.get("cost_usd", 0.0) for a in tried), 10),
                baseline_usd=0.0,
            )
        else:
            d = trace.decision
            answered = self.config.model(trace.model) if trace.model else None
            usage = trace.usage
            rec.update(
                decision={"model": d.model, "tier": d.tier, "score": round(d.score, 4), "route": d.route},
                route=trace.route,
                model=trace.model or None,
                tier=trace.tier if trace.model else None,
                local=answered is not None and answered.engine in LOCAL_ENGINES,
                escalations=trace.escalations,
                moves=trace.moves,
                attempts=trace.attempts,
                tokens={
                    "prompt": usage.get("prompt_tokens", 0),
                    "completion": usage.get("completion_tokens", 0),
                },
                compute_s=round(trace.compute_s, 6),
                cost_usd=round(trace.cost_usd, 10),
                baseline_usd=round(baseline_cost(self.baseline, usage), 10),
            )
        self.records.append((now, rec))
        self.metrics.observe(rec)
        if request_log.isEnabledFor(logging.INFO):
            request_log.info("request", extra={"fields": rec})
        if self.audit is None:
            return
        if self.config.privacy.audit_content and content is not None:  # the operator opted in
            req, answer = content
            rec = {
                **rec,
                "content": {
                    "messages": [{"role": m.role, "content": m.text()} for m in req.messages],
                    "answer": answer,
                },
            }
        try:
            self.audit.append(rec)
        except OSError as exc:  # the log must not take requests down; say so, once per failure
            log.error("audit log write failed: %s", exc.__class__.__name__)

    async def stats(self, request: Request) -> Response:
        now = datetime.now(UTC)
        raw = (request.query_params.get("since") or "")[:100]
        since = None
        if raw:
            try:
                since = parse_since(raw, now)
            except ValueError as exc:
                raise InvalidRequestError(str(exc), param="since") from None
        # Summing a large window takes a while: off the event loop, and shared by pollers for 1 s.
        cached = self._stats_cache.get(raw)
        if cached is None or time.monotonic() - cached[0] > STATS_CACHE_S:
            window = list(self.records)
            cached = (time.monotonic(), await anyio.to_thread.run_sync(summarize_timed, window, since, now))
            self._stats_cache[raw] = cached
            while len(self._stats_cache) > 64:  # `since` is the client's: keep the cache bounded
                self._stats_cache.pop(next(iter(self._stats_cache)))
        return JSONResponse(cached[1])

    async def metrics_page(self, request: Request) -> Response:
        return Response(self.metrics.render(), media_type=METRICS_CONTENT_TYPE)

    async def explain(self, request: Request) -> Response:
        raw = await read_body(request, self.config.server.max_body_bytes)
        req = parse_chat_request(raw)
        decision = self.router.decide(req, parse_hints(request.headers))
        return JSONResponse(decision.as_json())

    async def models(self, request: Request) -> Response:
        data = [{"id": "auto", "object": "model", "created": self.created, "owned_by": "localroute"}] + [
            {"id": m.name, "object": "model", "created": self.created, "owned_by": "localroute"}
            for m in self.config.ladder()
        ]
        return JSONResponse({"object": "list", "data": data})

    async def health(self, request: Request) -> Response:
        engines = {name: b.health() for name, b in self.backends.items()}
        ok = any(e["state"] in ("ready", "stopped") for e in engines.values())
        body: dict[str, Any] = {"status": "ok" if ok else "degraded", "engines": engines}
        body["tasks"] = len(asyncio.all_tasks())  # the gateway's asyncio tasks: a leak shows here
        if self.placement is not None:
            body["resources"] = await self.placement.snapshot(self.config.models_dir())
        return JSONResponse(body)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 405:  # keeps Starlette's `Allow` header: RFC 9110 requires it on a 405
        msg = f"Method {request.method} is not allowed here."
        return error_response(MethodNotAllowedError(msg, headers=dict(exc.headers or {})))
    return error_response(NotFoundError(f"No such endpoint: {request.url.path[:200]}"))


def create_app(config: Config, *, backends: Mapping[str, Backend] | None = None) -> Starlette:
    """Build the gateway. Engines are created (from config, unless given) and started in the lifespan."""
    holder: dict[str, Gateway] = {}

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        runtime = Path(tempfile.mkdtemp(prefix="localroute-"))  # 0700: only we reach the sockets
        owned = backends is None
        detector = Detector(config.privacy.detect, config.privacy.extra_patterns)
        guard = EgressGuard(detector, redacting=config.privacy.redact)
        live = build_backends(config, runtime, guard) if backends is None else backends
        audit = AuditLog(config.audit_path()) if config.privacy.audit_enabled else None
        placement = Placement.from_config(config)
        for b in live.values():
            if isinstance(b, Managed):
                placement.manage(b)
        holder["gw"] = Gateway(config, live, detector, audit, placement)
        sweeper = asyncio.create_task(placement.sweep(), name="localroute-idle-sweeper")
        try:
            for m in config.ladder():
                if getattr(m, "preload", True):
                    try:
                        await live[m.name].start()
                    except APIError as exc:
                        log.warning("model %s not started: %s", m.name, exc.message)
            yield
        finally:
            sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sweeper
            if owned:
                for b in live.values():
                    await b.aclose()
            if audit is not None:
                audit.close()
            shutil.rmtree(runtime, ignore_errors=True)

    # Outermost first. CORS (only when origins are configured) answers preflights before the guard.
    middleware = [Middleware(Guard, config=config, keys=KeyRing(config.keys), render=error_response)]
    if config.server.cors_origins:
        middleware.insert(0, Middleware(
            CORSMiddleware, allow_origins=config.server.cors_origins, allow_methods=["GET", "POST"],
            allow_headers=["authorization", "content-type", "x-localroute-tier", "x-localroute-max-cost",
                           "x-localroute-privacy"],
            expose_headers=["x-request-id", "x-localroute-model", "x-localroute-tier", "x-localroute-route",
                            "x-localroute-escalations"],
        ))  # fmt: skip

    def route(attr: str) -> Handler:
        async def call(request: Request) -> Response:
            handler: Handler = getattr(holder["gw"], attr)
            return await handler(request)

        return _guarded(call)

    return Starlette(
        routes=[
            Route("/v1/chat/completions", route("chat"), methods=["POST"]),
            Route("/v1/models", route("models"), methods=["GET"]),
            Route("/v1/route/explain", route("explain"), methods=["POST"]),
            Route("/health", route("health"), methods=["GET"]),
            Route("/metrics", route("metrics_page"), methods=["GET"]),
            Route("/v1/localroute/stats", route("stats"), methods=["GET"]),
            Route("/dashboard", _guarded(dashboard), methods=["GET"]),
            Route("/dashboard/assets/{name}", _guarded(dashboard_asset), methods=["GET"]),
            Route("/openapi.json", _guarded(openapi_json), methods=["GET"]),
        ],
        lifespan=lifespan,
        exception_handlers={HTTPException: _http_error},
        middleware=middleware,
    )
