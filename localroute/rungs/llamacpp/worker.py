"""The llama.cpp worker: one GGUF model in its own process, served as OpenAI HTTP on a Unix socket.

Run by the gateway as `python -m localroute.rungs.llamacpp.worker --socket ... --model-path ...`.
A segfault or OOM here kills only this process; the gateway sees the socket close and restarts us.
One request is decoded at a time (llama.cpp contexts are not re-entrant; see runner.py); a client that
goes away stops generation at the next token through the stopping criteria.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import json
import os
import signal
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from localroute.errors import APIError, InternalError, InvalidRequestError
from localroute.rungs.llamacpp import text
from localroute.rungs.llamacpp.runner import Generation, Runner, chat_generation

__all__ = ["Generation", "Runner", "build_app", "load_llama", "main"]


def build_app(runner: Runner) -> Any:
    """The worker's HTTP surface: /health, /v1/chat/completions and /v1/completions, nothing else."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    from localroute.protocol.event_stream import EventStream

    def error(exc: APIError) -> Response:
        return JSONResponse(exc.body(), status_code=exc.status)

    async def health(request: Request) -> Response:
        return JSONResponse(
            {
                "status": "ok",
                "model": runner.name,
                "n_ctx": runner.n_ctx,
                "busy": runner.busy,
                "served": runner.served,
                "sampled": runner.sampled,
                "pid": os.getpid(),
            }
        )

    async def chat(request: Request) -> Response:
        return await serve(request, raw=False)

    async def completions(request: Request) -> Response:
        return await serve(request, raw=True)

    async def serve(request: Request, raw: bool) -> Response:
        """A chat completion, or (`raw`) a text completion of the prompt as it is."""
        try:
            body = json.loads(await request.body())
        except ValueError:
            return error(InvalidRequestError("Request body is not valid JSON."))
        if not isinstance(body, dict):
            return error(InvalidRequestError("Request body must be a JSON object."))
        try:
            gen = text.generation(body) if raw else chat_generation(body)
        except APIError as exc:
            return error(exc)
        # Watch from the start: a client that leaves while queued must not cost a prompt evaluation.
        watch = asyncio.create_task(_watch_disconnect(request, gen.cancel))
        try:
            if body.get("stream"):
                agen = text.stream(runner, body, gen) if raw else runner.stream(body, gen)
                try:
                    first = await agen.__anext__()  # surface errors before headers go out
                finally:
                    watch.cancel()  # from here on the streaming response notices a disconnect

                async def rest() -> AsyncIterator[bytes]:
                    async with contextlib.aclosing(agen):  # closed here, not by the collector
                        yield first
                        async for part in agen:
                            yield part

                return EventStream(rest())
            try:
                done = text.complete(runner, body, gen) if raw else runner.complete(body, gen)
                return JSONResponse(await done)
            finally:
                watch.cancel()
        except APIError as exc:
            return error(exc)
        except Exception as exc:  # one line to the gateway's log, never a traceback
            print(f"worker error: {exc.__class__.__name__}", file=sys.stderr, flush=True)
            return error(InternalError(f"llama.cpp failed: {exc.__class__.__name__}"))

    return Starlette(
        routes=[
            Route("/health", health, methods=["GET"]),
            Route("/v1/chat/completions", chat, methods=["POST"]),
            Route("/v1/completions", completions, methods=["POST"]),
        ]
    )


async def _watch_disconnect(request: Any, cancel: threading.Event) -> None:
    # Sleep first: a request that starts at once is past this watch before the first look, which
    # would cost every request a receive on the way to its first token.
    while not cancel.is_set():
        await asyncio.sleep(0.05)
        if await request.is_disconnected():
            cancel.set()
            return


def _die_with_parent(parent: int) -> None:
    """Exit when the gateway dies, even by SIGKILL: no orphaned workers holding memory."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass

    def watch() -> None:
        while True:
            if os.getppid() != parent:
                os._exit(0)
            time.sleep(0.5)

    threading.Thread(target=watch, daemon=True, name="parent-watch").start()


def load_llama(args: argparse.Namespace) -> Any:
    from llama_cpp import Llama

    return Llama(
        model_path=args.model_path,
        n_ctx=args.n_ctx,
        n_threads=args.threads,
        n_threads_batch=args.threads,
        n_batch=args.n_batch,
        chat_format=args.chat_format,
        verbose=False,
    )


def main(argv: list[str] | None = None, loader: Callable[[argparse.Namespace], Any] = load_llama) -> int:
    p = argparse.ArgumentParser(prog="localroute-llamacpp-worker")
    p.add_argument("--socket", required=True)
    p.add_argument("--model-path", required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--n-ctx", type=int, required=True)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--n-batch", type=int, default=512)
    p.add_argument("--chat-format", default=None)
    p.add_argument("--no-cache-prompt", dest="cache_prompt", action="store_false")
    p.add_argument("--render-timeout-s", type=float, default=10.0)
    p.add_argument("--parent-pid", type=int, default=os.getppid())
    args = p.parse_args(argv)
    _die_with_parent(args.parent_pid)
    try:
        llm = loader(args)
    except ImportError:
        print("llama-cpp-python is not installed: pip install 'localroute[cpu]'", file=sys.stderr)
        return 3
    except Exception as exc:
        reason = str(exc).replace(args.model_path, f"<{args.name}.gguf>")
        print(f"cannot load model {args.name}: {reason}", file=sys.stderr)
        return 4
    import uvicorn

    uvicorn.run(
        build_app(Runner(llm, args.name, args.n_ctx, args.cache_prompt, args.render_timeout_s)),
        uds=args.socket,
        log_level="warning",
        access_log=False,
        lifespan="off",
        timeout_graceful_shutdown=2,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
