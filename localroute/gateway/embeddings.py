"""`POST /v1/embeddings`, OpenAI's shape: parse, classify (privacy), plan the rungs of the request's
vector space, embed with fallback inside that space, shape the vectors (`dimensions`, `encoding_format`),
and record the request (`api = "embeddings"`) like every other. See docs/embeddings.md."""

from __future__ import annotations

import asyncio
import logging
import os
import time

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from localroute.errors import APIError, DeadlineExceededError, InternalError, InvalidRequestError
from localroute.gateway.handlers import Gateway, parse_hints
from localroute.gateway.security import matched_key
from localroute.observe import tracing
from localroute.privacy.guard import CURRENT
from localroute.protocol import embeddings as shape
from localroute.protocol.records import Attempt

log = logging.getLogger("localroute")
# Token ids mean nothing to the detector: input given as ids is treated as if data had been found in it.
UNREADABLE = ("token_ids",)


async def handler(gw: Gateway, request: Request) -> Response:
    t0 = time.monotonic()
    deadline = gw.deadline()
    req = shape.parse_embedding_request(await gw.receive(request, deadline))
    rid = "req-" + os.urandom(10).hex()
    limit = gw.config.server.request_timeout_s
    hints = parse_hints(request.headers)
    inputs = req.inputs()
    router = gw.embedding_router
    privacy = gw.classify(request, req, UNREADABLE if req.token_arrays() else ())
    CURRENT.set(privacy)  # this request's task: the egress guard reads it
    path = request.url.path
    attrs = {"http.request.method": "POST", "url.path": path, "localroute.request_id": rid,
             "localroute.api": "embeddings", "gen_ai.operation.name": "embeddings",
             "gen_ai.request.model": req.model}  # fmt: skip
    tracing.start_request(f"POST {path}", request.headers, privacy.private, t0, attrs)
    attempts: list[Attempt] = []
    key = matched_key(request.scope)
    try:
        if key is not None and key.budget_usd is not None:  # spent: refused (or local rungs only)
            space, _ = router.resolve(req.model)  # over budget: local rungs of this space only, if any
            hints = await gw.billing.admit(key, req.model, hints, router.spaces[space])
        plan = router.plan(req.model, privacy, hints)
        first = plan.rungs[0]
        assert first.dimensions is not None  # an embedding rung always has them (config checks)
        size = shape.output_dimensions(req.dimensions, first.dimensions, first.dimensions_flexible, req.model)
        _check_token_lengths(inputs, first.max_input_tokens)
        try:
            async with asyncio.timeout_at(deadline):
                result, served, trace = await router.embed(inputs, plan, privacy, attempts)
        except TimeoutError:
            raise DeadlineExceededError(f"The request did not finish within {limit:g} s.") from None
        who = f"Model '{served.name}'"
        vecs = shape.vectors(result, len(inputs), first.dimensions, who)
        tokens = trace.usage.get("prompt_tokens", 0)
        body = shape.answer(vecs, model=served.name, size=size, fmt=req.encoding_format, prompt_tokens=tokens)
    except APIError as exc:
        rec = gw.recorder.record(rid, privacy, None, exc.status, t0, error=exc.code or exc.type,
                                 attempts=attempts, api="embeddings")  # fmt: skip
        await gw.billing.charge(key, rec["cost_usd"])
        exc.headers = {**exc.headers, "x-request-id": rid}
        raise
    except Exception as exc:  # a bug: the request is still recorded, the client gets a clean 500
        log.error("unhandled %s serving %s", exc.__class__.__name__, rid)
        rec = gw.recorder.record(rid, privacy, None, 500, t0, error="internal_error", attempts=attempts,
                                 api="embeddings")  # fmt: skip
        gw.billing.charge_soon(key, rec["cost_usd"])  # paid attempts still cost, as for chat
        raise InternalError("Internal error in localroute.", headers={"x-request-id": rid}) from None
    rec = gw.recorder.record(rid, privacy, trace, 200, t0, api="embeddings")
    await gw.billing.charge(key, rec["cost_usd"])
    return JSONResponse(body, headers={**trace.headers(), "x-request-id": rid})


def _check_token_lengths(inputs: shape.Inputs, limit: int | None) -> None:
    """Token-id input is measured here; text is measured by the engine, which knows its tokenizer."""
    if limit is None:
        return
    for i, item in enumerate(inputs):
        if isinstance(item, list) and len(item) > limit:
            raise InvalidRequestError(
                f"Invalid value for 'input': item {i} has {len(item)} tokens; this model takes at most "
                f"{limit} per input.",
                param="input",
                code="context_length_exceeded",
            )
