"""A server-sent-events response that costs a tenth of Starlette's `StreamingResponse`.

Starlette streams under ASGI spec 2.3 (uvicorn's) with an anyio task group of two tasks per response,
one of them waiting for the client to leave: ~220 µs of CPU per response here, where this takes ~20
(docs/bench-ttft.md). A local stream crosses two such responses (worker and
gateway) on the way to its first token. Same contract: headers as `Response` builds them, the body's
parts sent as they come, and a client that leaves stops the stream: the body iterator sees a
cancellation at the await it is in, so its `finally` (records, freeing the engine) runs, and the
response returns normally. A cancellation from anywhere else (server shutdown) propagates.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from typing import Any

from starlette.responses import Response


class EventStream(Response):
    media_type = "text/event-stream"

    def __init__(self, body: AsyncIterator[bytes], headers: Mapping[str, str] | None = None) -> None:
        self.status_code = 200
        self.background = None
        self.body_iterator = body
        self.init_headers(headers)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        task = asyncio.current_task()
        assert task is not None
        state = {"gone": False, "done": False}

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            if not state["done"]:
                state["gone"] = True
                task.cancel()

        watcher = asyncio.ensure_future(watch())
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            async for part in self.body_iterator:
                await send({"type": "http.response.body", "body": part, "more_body": True})
            state["done"] = True
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except asyncio.CancelledError:
            if not state["gone"] or task.uncancel() > 0:
                raise
        except OSError:  # a server on ASGI 2.4 says so when the client is gone
            pass
        finally:
            state["done"] = True
            watcher.cancel()
            aclose = getattr(self.body_iterator, "aclose", None)
            if aclose is not None:  # not finished (the client left between parts): run its finally now
                await aclose()
