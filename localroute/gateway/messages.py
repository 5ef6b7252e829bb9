"""`POST /v1/messages`: Anthropic's Messages API. The request is translated into the internal chat form
(protocol/anthropic.py) and served by `Gateway.serve` like every other surface, so privacy, routing, the
cascade, cost and the audit record (`api: "messages"`) are the same; the answer goes back as an Anthropic
message or event stream (protocol/anthropic_answer.py). Errors take Anthropic's shape by path
(gateway/app.py). The `anthropic-version` header is accepted whatever it says, or absent: there is one
version of this API's shape, and it is the one answered (docs/anthropic.md)."""

from __future__ import annotations

import time

from starlette.requests import Request
from starlette.responses import Response

from localroute.gateway.handlers import Gateway
from localroute.protocol.anthropic import parse_messages_request
from localroute.protocol.anthropic_answer import MessagesSurface


async def handler(gw: Gateway, request: Request) -> Response:
    t0 = time.monotonic()
    deadline = gw.deadline()
    req = parse_messages_request(await gw.receive(request, deadline))
    surface = MessagesSurface(req.stop_sequences or ())
    return await gw.serve(request, req.to_chat(), surface, t0, deadline)
