"""The request handlers: OpenAI chat completions (plain and streamed), route explain, models, health,
stats and metrics. One `Gateway` per app, built by the lifespan (gateway/app.py) and read from the
request's state."""

from __future__ import annotations

import asyncio
import logging
import math
import os
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import anyio
from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from localroute.config.schema import Config
from localroute.errors import (
    APIError,
    DeadlineExceededError,
    InternalError,
    InvalidRequestError,
    ModelNotFoundError,
    RequestTimeoutError,
    UnsupportedMediaTypeError,
)
from localroute.gateway.body import read_body
from localroute.gateway.budget import Billing
from localroute.gateway.learn import Learning
from localroute.gateway.record import Recorder
from localroute.gateway.security import caller_of, matched_key
from localroute.host.lifecycle import Placement
from localroute.observe import tracing
from localroute.observe.feedback import Featurize
from localroute.observe.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from localroute.observe.metrics import Metrics
from localroute.observe.stats import parse_since, summarize_timed
from localroute.privacy.audit import AuditLog
from localroute.privacy.detect import Detector
from localroute.privacy.guard import CURRENT, SCANNED_CLEAN, Privacy, body_texts, resolve
from localroute.protocol.backend import Backend, Embedder
from localroute.protocol.chat import ChatCompletionRequest, parse_chat_request
from localroute.protocol.event_stream import EventStream
from localroute.protocol.feedback import parse_feedback
from localroute.protocol.records import Attempt, Stats
from localroute.protocol.surface import CHAT, Surface, opening
from localroute.protocol.wire import EngineHealth, Health, Model, ModelList
from localroute.routing.deciding import explanation
from localroute.routing.embeddings import EmbeddingRouter
from localroute.routing.policy import Hints
from localroute.routing.router import Router
from localroute.routing.traffic_features import recipe_featurizer

log = logging.getLogger("localroute")
STATS_CACHE_S = 1.0
_READ_AS_JSON = frozenset({"", "application/json", "application/x-www-form-urlencoded", "text/plain"})
EMBEDDINGS_OWNER = "localroute:embeddings"  # `owned_by` of embedding models in GET /v1/models


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


class Gateway:
    """Request handlers over a router; built once per app by the lifespan."""

    def __init__(
        self,
        config: Config,
        backends: Mapping[str, Backend],
        detector: Detector,
        audit: AuditLog | None,
        placement: Placement | None = None,
        embedders: Mapping[str, Embedder] | None = None,
        featurize: Featurize | None = None,
    ) -> None:
        self.config = config
        self.backends = backends
        self.embedders: Mapping[str, Embedder] = embedders or {}
        self.embedding_router = EmbeddingRouter(config, self.embedders, detector)
        self.placement = placement
        self.detector = detector
        self.router = Router(config, backends, detector)
        self.created = int(time.time())
        self._stats_cache: dict[str, tuple[float, Stats]] = {}
        self.metrics = Metrics(self.engines)
        self.recorder = Recorder(config, audit, self.metrics)
        self.billing = Billing(config)  # per-key budgets; the lifespan shares them with [state] url
        featurize = featurize or recipe_featurizer()
        self.learning = Learning(config, backends, self.router, featurize)

    def engines(self) -> dict[str, EngineHealth]:
        """Every rung's health, chat and embedding rungs alike."""
        out = {name: b.health() for name, b in self.backends.items()}
        return out | {name: e.health() for name, e in self.embedders.items()}

    def classify(self, request: Request, req: BaseModel, unreadable: Sequence[str] = ()) -> Privacy:
        """The request's privacy class: header, API key policy, detected data, config default."""
        header = request.headers.get("x-localroute-privacy")
        if header is not None and header.strip().lower() not in ("private", "public"):
            raise InvalidRequestError(
                "X-LocalRoute-Privacy must be 'private' or 'public'.",
                param="X-LocalRoute-Privacy",
                code="invalid_header_value",
            )
        texts = tuple(body_texts(req.model_dump(exclude_none=True, by_alias=True)))  # as it would be sent
        kinds = (*self.detector.kinds_in(texts), *unreadable)  # what no scan can read counts as found
        if not kinds:
            SCANNED_CLEAN.set(texts)  # the egress guard need not scan these very strings again
        return resolve(self.config.privacy, header, self._key_policy(request), kinds)

    def _key_policy(self, request: Request) -> str | None:
        key = matched_key(request.scope)  # the guard's match: keys are not hashed twice
        return None if key is None else key.privacy

    async def receive(self, request: Request, deadline: float) -> bytes:
        """The JSON request body, within the size limit and the request's deadline. A body declared
        as another format (XML, multipart, binary, ...) is refused with 415 before it is read. What
        tools send when the header was forgotten (none, curl -d's form type, fetch's text/plain) is
        read as JSON and judged on that."""
        kind = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        origin = request.headers.get("origin")
        if (
            kind != "application/json"
            and origin is not None
            and origin not in self.config.server.cors_origins
        ):
            # A web page may send text/plain or a form to this address without asking first (no CORS
            # preflight): from a page this gateway does not trust, only real JSON is read.
            raise UnsupportedMediaTypeError(
                "A request from a web page must have Content-Type: application/json.", param="Content-Type"
            )
        if kind not in _READ_AS_JSON and not kind.endswith("+json"):
            raise UnsupportedMediaTypeError(
                f"Content-Type must be application/json, not '{kind[:64]}'.", param="Content-Type"
            )
        limit = self.config.server.request_timeout_s
        try:
            async with asyncio.timeout_at(deadline):  # a client trickling its body holds nothing forever
                return await read_body(request, self.config.server.max_body_bytes)
        except TimeoutError:
            raise RequestTimeoutError(f"The request body did not arrive within {limit:g} s.") from None

    def deadline(self) -> float:
        return asyncio.get_running_loop().time() + self.config.server.request_timeout_s

    async def chat(self, request: Request) -> Response:
        t0 = time.monotonic()
        deadline = self.deadline()
        req = parse_chat_request(await self.receive(request, deadline))
        return await self.serve(request, req, CHAT, t0, deadline)

    async def serve(
        self, request: Request, req: ChatCompletionRequest, surface: Surface, t0: float, deadline: float
    ) -> Response:
        """Route and serve a request in the internal chat form; answer in the surface's shape. Every
        API surface (chat, completions, Responses, Messages) comes through here, so the edge's checks,
        privacy, the cascade, cost and the audit record are the same for all."""
        rid = "req-" + os.urandom(10).hex()
        limit = self.config.server.request_timeout_s
        hints = parse_hints(request.headers)
        if len(req.messages) > self.config.server.max_messages:
            raise InvalidRequestError(
                f"Too many messages: {len(req.messages)}, the limit is {self.config.server.max_messages}.",
                param="messages",
                code="too_many_messages",
            )
        privacy = self.classify(request, req)
        api = surface.api
        CURRENT.set(privacy)  # this request's task: the egress guard reads it
        path = request.url.path
        tracing.start_request(
            f"POST {path}", request.headers, privacy.private, t0,
            {"http.request.method": "POST", "url.path": path, "localroute.request_id": rid,
             "localroute.api": api, "gen_ai.operation.name": "chat", "gen_ai.request.model": req.model},
        )  # fmt: skip
        self.learning.preempt()
        key = matched_key(request.scope)
        caller = caller_of(request.scope)  # stickiness is per caller, as the rate limit is
        attempts: list[Attempt] = []  # the rungs tried, for the audit record even on failure
        late = DeadlineExceededError(f"The request did not finish within {limit:g} s.")
        try:
            hints = await self.billing.admit(key, req.model, hints)  # before routing: spent is refused
            try:
                async with asyncio.timeout_at(deadline):
                    if not req.stream:
                        result, trace = await self.router.complete(
                            req, hints, privacy, attempts, deadline, caller
                        )
                    else:
                        chunks, trace = await self.router.stream(
                            req, hints, privacy, attempts, deadline, caller
                        )
            except TimeoutError:
                raise late from None
            if not req.stream:
                choices: Sequence[Mapping[str, Any]] = result.get("choices") or [{}]
                answer = choices[0].get("message", {}).get("content")
                body = surface.answer(result)
                rec = self.recorder.record(
                    rid, privacy, trace, 200, t0, content=(req, answer), stream=False, api=api
                )
                await self.billing.charge(key, rec["cost_usd"])  # before the answer: the next request sees it
                try:  # recorded and charged once: learning must never fail an answered request
                    self.learning.answered(rid, req, trace, privacy, answer, caller)
                except Exception as exc:
                    log.error("learning failed for an answered request: %s", exc.__class__.__name__)
                return JSONResponse(body, headers={**trace.headers(), "x-request-id": rid})
        except APIError as exc:
            rec = self.recorder.record(
                rid, privacy, None, exc.status, t0, error=exc.code or exc.type, attempts=attempts,
                content=(req, None), stream=bool(req.stream), api=api,
            )  # fmt: skip
            await self.billing.charge(key, rec["cost_usd"])  # a paid attempt that failed still cost
            exc.headers = {**exc.headers, "x-request-id": rid}
            raise
        except Exception as exc:  # a bug: the request is still recorded, the client gets a clean 500
            log.error("unhandled %s serving %s", exc.__class__.__name__, rid)
            rec = self.recorder.record(
                rid, privacy, None, 500, t0, error="internal_error", attempts=attempts, api=api
            )
            self.billing.charge_soon(key, rec["cost_usd"])
            raise InternalError("Internal error in localroute.", headers={"x-request-id": rid}) from None
        out = surface.translator()

        async def events() -> AsyncIterator[bytes]:
            status, error = 200, None
            parts: list[str] = []  # the answer: its digest for stickiness, its text for a shadow run
            first: float | None = None  # when the first content reached the client: TTFT
            held = b""  # the opening role chunk's frames, written with the next chunk's (one write)
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
                    for ch in chunk.get("choices") or ():
                        text = (ch.get("delta") or {}).get("content") or ""
                        if text and first is None:
                            first = time.monotonic()
                        parts.append(text)
                    frames = out.feed(chunk)
                    if first is None and not held and opening(chunk):
                        held = frames
                    elif frames or held:
                        frames, held = held + frames, b""
                        yield frames
                yield held + out.close()
            except APIError as exc:
                status, error = exc.status, exc.code or exc.type
                yield held + out.fail(exc)  # headers are gone; the SDKs raise on an error event
            except Exception as exc:  # a bug mid-stream: end it with an error event, record a 500
                log.error("unhandled %s streaming %s", exc.__class__.__name__, rid)
                status, error = 500, "internal_error"
                yield held + out.fail(InternalError("Internal error in localroute."))
            except BaseException:  # the client left (we are cancelled or closed): not a success
                status, error = 499, "client_gone"
                raise
            finally:
                # The client may have left (we are being cancelled): close the engine stream anyway,
                # so its slot is freed now rather than when the garbage collector gets to it.
                with anyio.CancelScope(shield=True):
                    await chunks.aclose()
                rec = self.recorder.record(
                    rid, privacy, trace, status, t0, error=error, content=(req, "".join(parts)), stream=True,
                    ttft=first, api=api,
                )  # fmt: skip
                self.billing.charge_soon(key, rec["cost_usd"])
                if status == 200:
                    self.learning.answered(rid, req, trace, privacy, "".join(parts), caller)

        headers = {**trace.headers(), "cache-control": "no-cache", "x-request-id": rid}
        return EventStream(events(), headers=headers)

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
            window = list(self.recorder.records)
            cached = (time.monotonic(), await anyio.to_thread.run_sync(summarize_timed, window, since, now))
            self._stats_cache[raw] = cached
            while len(self._stats_cache) > 64:  # `since` is the client's: keep the cache bounded
                self._stats_cache.pop(next(iter(self._stats_cache)))
        return JSONResponse(cached[1])

    async def metrics_page(self, request: Request) -> Response:
        return Response(self.metrics.render(), media_type=METRICS_CONTENT_TYPE)

    async def explain(self, request: Request) -> Response:
        """The decision serving would make, privacy class included (classified as serving does)."""
        req = parse_chat_request(await self.receive(request, self.deadline()))
        privacy = self.classify(request, req)
        # Read-only: no prefetch from the shared store and no LRU reordering (an explain must not
        # change what serving later remembers); the caller's own conversations only.
        caller = caller_of(request.scope)
        decision = self.router.decide(req, parse_hints(request.headers), privacy.private, caller, touch=False)
        return JSONResponse(explanation(self.config, decision, privacy))

    async def feedback(self, request: Request) -> Response:
        """`POST /v1/localroute/feedback`: a client's outcome for a request served here."""
        fb = parse_feedback(await self.receive(request, self.deadline()))
        answer = await self.learning.feedback(fb)
        return JSONResponse(answer, status_code=202 if "forwarded_to" in answer else 200)

    async def models(self, request: Request) -> Response:
        names = ["auto", *(m.name for m in self.config.ladder())]
        data: list[Model] = [
            {"id": name, "object": "model", "created": self.created, "owned_by": "localroute"}
            for name in names
        ]
        # Embedding models and spaces say what they are where the SDKs keep, and ignore, the owner.
        data += [
            {"id": name, "object": "model", "created": self.created, "owned_by": EMBEDDINGS_OWNER}
            for name in self.embedding_router.names()[1:]
        ]
        models: ModelList = {"object": "list", "data": data}
        return JSONResponse(models)

    async def model(self, request: Request) -> Response:
        """`GET /v1/models/{id}`: one model in OpenAI's shape, `auto` included; unknown ids are a 404."""
        name = str(request.path_params["model"])
        if name != "auto" and self.config.model(name) is None and name not in self.embedding_router.spaces:
            raise ModelNotFoundError(f"The model '{name[:64]}' does not exist.", param="model")
        embeds = name != "auto" and name not in (m.name for m in self.config.ladder())
        owner = EMBEDDINGS_OWNER if embeds else "localroute"
        found: Model = {"id": name, "object": "model", "created": self.created, "owned_by": owner}
        return JSONResponse(found)

    async def health(self, request: Request) -> Response:
        engines = self.engines()
        ok = any(e["state"] in ("ready", "stopped") for e in engines.values())
        body: Health = {
            "status": "ok" if ok else "degraded",
            "engines": engines,
            "tasks": len(asyncio.all_tasks()),  # the gateway's asyncio tasks: a leak shows here
        }
        if self.placement is not None:
            body["resources"] = await self.placement.snapshot(self.config.models_dir())
        return JSONResponse(body)
