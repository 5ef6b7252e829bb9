"""The gateway's CPU for one streamed request to a llama.cpp worker, before and after issue 18's engine
client changes, measured in one process on the same socket, interleaved.

    python -m bench.engine_hop [--requests 200] [--rounds 5] [--chunks 32]

A child process serves a fixed SSE stream (`--chunks` chat chunks with the worker's `x_localroute`,
then `[DONE]`) over HTTP/1.1 on a Unix socket (uvicorn, as the worker does). This process reads it
through `OpenAIHTTP.stream`, the engine client, with: **before** httpx's own transport (httpcore) and
the line reader (`sse.decode` over `aiter_lines`); **after** `LeanTransport(uds=...)` and the byte
reader (`sse.decode_bytes`). CPU is this process's `time.process_time()` per request, so the
machine's load stretches wall time but hardly this figure.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any

import httpx

from bench.common import median
from localroute.protocol import sse
from localroute.rungs import openai_http
from localroute.rungs.lean_http import LeanTransport
from localroute.rungs.openai_http import OpenAIHTTP

BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}


def serve(path: str, chunks: int) -> None:
    import uvicorn

    chunk = {"id": "chatcmpl-x", "object": "chat.completion.chunk", "created": 1, "model": "smollm2-135m",
             "choices": [{"index": 0, "delta": {"content": " 4,"}, "logprobs": None, "finish_reason": None}],
             "x_localroute": {"compute_s": 0.01, "so_far": {"prompt_tokens": 9, "completion_tokens": 3,
                                                            "total_tokens": 12}}}  # fmt: skip
    frames = [sse.encode(chunk) for _ in range(chunks)] + [sse.DONE]

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body"):
            pass
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream")]})  # fmt: skip
        for f in frames:
            await send({"type": "http.response.body", "body": f, "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    uvicorn.run(app, uds=path, log_level="warning", lifespan="off")


async def _old_stream(
    self: OpenAIHTTP, body: dict[str, Any], extensions: Any = None
) -> AsyncGenerator[Any, None]:
    req = self.client.build_request("POST", self.path, json=body)
    resp = await self.client.send(req, stream=True)
    try:
        async with contextlib.aclosing(sse.decode(resp.aiter_lines())) as chunks:
            async for chunk in chunks:
                yield chunk
    finally:
        await resp.aclose()


async def measure(path: str, requests: int, rounds: int) -> dict[str, list[float]]:
    clients = {
        "before": httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(uds=path), base_url="http://engine"),
        "after": httpx.AsyncClient(transport=LeanTransport(uds=path), base_url="http://engine"),
    }
    out: dict[str, list[float]] = {k: [] for k in clients}
    for r in range(rounds * 2 + 1):
        side = ("before", "after")[r % 2] if r else "before"
        http = OpenAIHTTP(clients[side])
        stream = _old_stream if side == "before" else openai_http.OpenAIHTTP.stream
        c0 = time.process_time()
        for _ in range(requests):
            async for _chunk in stream(http, BODY):
                pass
        if r:  # the first round warms both up
            out[side].append((time.process_time() - c0) / requests)
    for c in clients.values():
        await c.aclose()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--chunks", type=int, default=32)
    ap.add_argument("--serve", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        serve(args.serve, args.chunks)
        return
    with tempfile.TemporaryDirectory(prefix="lr-hop-") as tmp:
        path = str(Path(tmp) / "engine.sock")
        cmd = [sys.executable, "-m", "bench.engine_hop", "--serve", path, "--chunks", str(args.chunks)]
        child = subprocess.Popen(cmd)
        try:
            while not os.path.exists(path):
                time.sleep(0.05)
            load = os.getloadavg()[0]
            got = asyncio.run(measure(path, args.requests, args.rounds))
        finally:
            child.terminate()
            child.wait(10)
    b, a = median(got["before"]) * 1e6, median(got["after"]) * 1e6
    print("| engine client | CPU µs per streamed request (median of rounds) | rounds |\n|---|---|---|")
    runs = {k: ", ".join(f"{x * 1e6:.0f}" for x in v) for k, v in got.items()}
    print(f"| before: httpcore + line reader | {b:.0f} | {runs['before']} |")
    print(f"| after: LeanTransport(uds) + byte reader | {a:.0f} | {runs['after']} |")
    print(
        f"\nafter / before = {a / b:.2f}; {args.chunks} chunks + [DONE] per request, {args.requests} "
        f"requests per round, rounds alternated; load average {load:.2f} at start."
    )


if __name__ == "__main__":
    main()
