"""A server-sent-events response that costs a tenth of Starlette's `StreamingResponse`.

Starlette streams under ASGI spec 2.3 (uvicorn's) with an anyio task group of two tasks per response,
one of them waiting for the client to leave: ~220 µs of CPU per response here, where this takes ~30
(docs/bench-ttft.md). A local stream crosses two such responses (worker and gateway) on the way to its
first token. Same contract: headers as `Response` builds them, the body's parts sent as they come, and
a client that leaves stops the stream through an anyio cancel scope, as Starlette's does: the body
sees a cancellation at the await it is in, its shielded clean-up (recording, freeing the engine) runs
to the end, and the response returns normally. A cancellation from anywhere else (shutdown) propagates.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from typing import Any

import anyio
from starlette.responses import Response


class _Gone(Exception):
    """The server said the client is gone (ASGI 2.4: `send` raises OSError)."""


class EventStream(Response):
    media_type = "text/event-stream"

    def __init__(self, body: AsyncIterator[bytes], headers: Mapping[str, str] | None = None) -> None:
        self.status_code = 200
        self.background = None
        self.body_iterator = body
        self.init_headers(headers)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        done = False

        async def out(message: dict[str, Any]) -> None:
            try:
                await send(message)
            except OSError:
                raise _Gone from None

        async def watch(cancel: anyio.CancelScope) -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            if not done:
                cancel.cancel()

        with anyio.CancelScope() as cancel:
            watcher = asyncio.ensure_future(watch(cancel))
            try:
                # The head waits for the first part and goes out right before it: the client wakes
                # once for both, not once for a head and again for the first token (docs/bench-ttft.md).
                started = False
                async for part in self.body_iterator:
                    if not started:
                        await out({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
                        started = True
                    await out({"type": "http.response.body", "body": part, "more_body": True})
                if not started:
                    await out({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
                done = True
                await out({"type": "http.response.body", "body": b"", "more_body": False})
            except _Gone:
                pass
            finally:
                done = True
                watcher.cancel()
                body = self.body_iterator
                aclose = getattr(body, "aclose", None)
                if aclose is not None and getattr(body, "ag_frame", True) is not None:
                    # not finished (the client left between parts): run its finally now
                    with anyio.CancelScope(shield=True):
                        await aclose()
