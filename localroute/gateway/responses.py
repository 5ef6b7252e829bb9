"""`POST /v1/responses`: OpenAI's Responses API, stateless. The request is translated into the internal
chat form (`protocol.responses`) and served by `Gateway.serve`, so privacy, routing, the cascade, cost
and the audit record are those of every other API; the answer goes back as a `response` object or its
event stream."""

from __future__ import annotations

import time

from starlette.requests import Request
from starlette.responses import Response

from localroute.errors import APIError
from localroute.gateway.handlers import Gateway
from localroute.protocol.responses import parse_responses_request
from localroute.protocol.responses_out import ResponsesSurface


async def handler(gw: Gateway, request: Request) -> Response:
    t0 = time.monotonic()
    deadline = gw.deadline()
    req = parse_responses_request(await gw.receive(request, deadline))
    try:
        return await gw.serve(request, req.to_chat(), ResponsesSurface(req), t0, deadline)
    except APIError as exc:  # a 400 the chat form raised names the field the client wrote
        exc.param = _PARAMS.get(exc.param or "", exc.param)
        raise


# Chat fields a serving error may name (too many messages, a capability no rung has), as the client
# wrote them on /v1/responses.
_PARAMS = {
    "messages": "input",
    "response_format": "text.format",
    "max_completion_tokens": "max_output_tokens",
}
