"""The thinnest servers a streamed first token could cross, for bench.ttft_breakdown's floors.

- `bare`: uvicorn + Starlette answering one fixed content chunk at once: what any HTTP server and the
  benchmark's own client cost, with no model and no router (the floor of serving over HTTP at all);
- `relay`: the same server forwarding the body over a Unix socket to a `bare` one in another process
  (lean transport, sent to directly, bytes relayed unparsed): the floor of keeping the model in its
  own process, as localroute does. $FLOOR_UDS names the socket.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from localroute.rungs.lean_http import LeanTransport

_CHUNK = {"id": "x", "object": "chat.completion.chunk", "created": 0, "model": "m",
          "choices": [{"index": 0, "delta": {"content": "Hi"}, "finish_reason": None}]}  # fmt: skip
FRAMES = b"data: " + json.dumps(_CHUNK).encode() + b"\n\ndata: [DONE]\n\n"


async def _bare(request: Request) -> Response:
    await request.body()

    async def frames() -> AsyncIterator[bytes]:
        yield FRAMES

    return StreamingResponse(frames(), media_type="text/event-stream")


bare = Starlette(routes=[Route("/v1/chat/completions", _bare, methods=["POST"])])
_lean: list[Any] = []


async def _relay(request: Request) -> Response:
    if not _lean:
        _lean.append(LeanTransport(uds=os.environ["FLOOR_UDS"]))
    body = await request.body()
    req = httpx.Request("POST", "http://engine/v1/chat/completions", content=body,
                        headers={"Content-Type": "application/json", "Accept": "text/event-stream"},
                        extensions={"timeout": httpx.Timeout(60.0).as_dict()})  # fmt: skip
    resp = await _lean[0].handle_async_request(req)

    async def frames() -> AsyncIterator[bytes]:
        try:
            async for part in resp.stream:  # type: ignore[union-attr]
                yield part
        finally:
            await resp.aclose()

    return StreamingResponse(frames(), media_type="text/event-stream")


relay = Starlette(routes=[Route("/v1/chat/completions", _relay, methods=["POST"])])
