"""`localroute` with timestamps on the first chunk's way through the gateway (bench.ttft_breakdown).

Run as `python -m ttft_probe_gw serve ...` with this folder and a tree on PYTHONPATH. Patches, in this
process only: the chat handler's entry, the engine client's request and first content chunk, and the
first content frame handed to the response; the worker it starts runs `ttft_probe_worker`.
"""

from __future__ import annotations

import inspect
import os
import sys
from typing import Any

import httpx
from _marks import has_content, mark


def patch() -> None:
    from localroute.gateway import handlers
    from localroute.protocol import surface
    from localroute.rungs import openai_http
    from localroute.rungs.llamacpp.engine import LlamaCppEngine

    LlamaCppEngine.worker_module = "ttft_probe_worker"

    chat = handlers.Gateway.chat

    async def probed_chat(self: Any, request: Any) -> Any:
        mark("g_in")
        return await chat(self, request)

    handlers.Gateway.chat = probed_chat  # type: ignore[method-assign]

    send = httpx.AsyncClient.send

    async def probed_send(self: Any, request: Any, **kw: Any) -> Any:
        if request.url.path.endswith("/chat/completions"):
            mark("g_send")
        resp = await send(self, request, **kw)
        if request.url.path.endswith("/chat/completions"):
            mark("g_headers")
        return resp

    httpx.AsyncClient.send = probed_send  # type: ignore[method-assign]

    try:  # trees whose engine client sends straight to its transport (rungs/remote_send.Sender)
        from localroute.rungs.remote_send import Sender
    except ImportError:
        pass
    else:
        direct = Sender.send

        async def probed_direct(self: Any, request: Any) -> Any:
            if self.transport is not None and request.url.path.endswith("/chat/completions"):
                mark("g_send")
                resp = await direct(self, request)
                mark("g_headers")
                return resp
            return await direct(self, request)

        Sender.send = probed_direct  # type: ignore[method-assign]

    stream = openai_http.OpenAIHTTP.stream

    async def probed_stream(self: Any, body: Any, extensions: Any = None) -> Any:
        seen = False
        async for chunk in stream(self, body, extensions):
            if not seen and any((c.get("delta") or {}).get("content") for c in chunk.get("choices") or ()):
                seen = True
                mark("g_chunk")
            yield chunk

    openai_http.OpenAIHTTP.stream = probed_stream  # type: ignore[method-assign]

    feed = surface._ChatStream.feed

    def probed_feed(self: Any, chunk: Any) -> bytes:
        out: bytes = feed(self, chunk)
        if not getattr(self, "_probed", False) and has_content(out):
            self._probed = True
            mark("g_frame")
        return out

    surface._ChatStream.feed = probed_feed  # type: ignore[method-assign]


def patch_detail() -> None:
    """With $LOCALROUTE_TTFT_DETAIL: the first two stages split by step (the guard middleware's
    entry; the handler's body read, parsed, classified, decided). Five more marks, each an `os.write`
    (a few µs): read the TTFT of such a run as slightly high."""
    from localroute.gateway import handlers, security
    from localroute.routing import router

    guard = security.Guard.__call__

    async def probed_guard(self: Any, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope.get("path") == "/v1/chat/completions":
            mark("g_edge")
        await guard(self, scope, receive, send)

    security.Guard.__call__ = probed_guard  # type: ignore[method-assign]
    _mark_after(handlers.Gateway, "receive", "g_body")
    _mark_after(handlers, "parse_chat_request", "g_parsed")  # looked up through the module by chat()
    _mark_after(handlers.Gateway, "classify", "g_classified")
    _mark_after(router.Router, "decide", "g_decided")


def _mark_after(owner: Any, attr: str, name: str) -> None:
    """Wrap `owner.attr` (a function or a coroutine function) to mark `name` when it returns."""
    inner = getattr(owner, attr)
    if inspect.iscoroutinefunction(inner):

        async def probed_async(*args: Any, **kw: Any) -> Any:
            out = await inner(*args, **kw)
            mark(name)
            return out

        setattr(owner, attr, probed_async)
        return

    def probed(*args: Any, **kw: Any) -> Any:
        out = inner(*args, **kw)
        mark(name)
        return out

    setattr(owner, attr, probed)


if __name__ == "__main__":
    patch()
    if os.environ.get("LOCALROUTE_TTFT_DETAIL"):
        patch_detail()
    from localroute.cli import main

    sys.exit(main(sys.argv[1:]))
