#!/usr/bin/env python3
"""A stand-in for the `vllm` executable on a box without a GPU: `vllm serve MODEL [flags]` parses its
flags as vLLM's CLI does (an unknown one exits 2), then serves vLLM's OpenAI API on loopback with
uvicorn: `GET /health`, `GET /v1/models`, `POST /v1/chat/completions` (JSON and SSE, logprobs, usage,
vLLM's 404 for a model it does not serve and its 400 when prompt + max_tokens passes --max-model-len),
and `POST /v1/completions` (a prompt or a list, `n`, legacy logprobs, `echo`, SSE; vLLM's 400 for
`suffix`, which it does not support); with `--runner pooling` `POST /v1/embeddings` instead of chat
(strings or token ids, float or base64, vLLM's 400 for an input past --max-model-len and for
`dimensions` on a non-matryoshka model). Vectors are `vector(text, model)`: a bag of hashed words,
unit length, the same for the same model.

Tests put an executable `vllm` wrapper that runs this file first on the gateway's PATH (`install`).

Environment:
  FAKE_VLLM_ARGV_FILE   append one JSON line per start: {"pid", "model", "argv", "cwd"}
  FAKE_VLLM_MODE        comma-separated: crash_at_start | hang_at_start | slow_start=SECONDS |
                        crash_after=N (the request after the N-th kills the server with SIGKILL)
  FAKE_VLLM_MODES       a JSON object {model: mode}, overriding FAKE_VLLM_MODE per served model
  FAKE_VLLM_DIMS        a JSON object {model: embedding size}; default 384
"""

from __future__ import annotations

import argparse
import array
import base64
import hashlib
import json
import math
import os
import random
import re
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from starlette.responses import Response

WORD = re.compile(r"\s*\S+")


def install(bin_dir: Path) -> Path:
    """Write an executable `vllm` into `bin_dir` that runs this stand-in; returns its path."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    exe = bin_dir / "vllm"
    exe.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{Path(__file__).resolve()}" "$@"\n')
    exe.chmod(0o755)
    return exe


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="vllm")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="Start the vLLM OpenAI-compatible API server.")
    serve.add_argument("model_tag")
    serve.add_argument("--host", default=None)
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--max-model-len", type=int, default=2048)
    serve.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    serve.add_argument("--tensor-parallel-size", "-tp", type=int, default=1)
    serve.add_argument("--pipeline-parallel-size", "-pp", type=int, default=1)
    serve.add_argument("--data-parallel-size", "-dp", type=int, default=1)
    serve.add_argument("--served-model-name", nargs="+", default=None)
    serve.add_argument("--dtype", choices=["auto", "half", "float16", "bfloat16", "float", "float32"])
    serve.add_argument("--quantization", "-q", default=None)
    serve.add_argument("--max-num-seqs", type=int, default=None)
    serve.add_argument("--seed", type=int, default=None)
    serve.add_argument("--api-key", default=None)
    serve.add_argument("--enforce-eager", action="store_true")
    serve.add_argument("--trust-remote-code", action="store_true")
    serve.add_argument("--enable-prefix-caching", action="store_true")
    serve.add_argument("--distributed-executor-backend", choices=["ray", "mp", "uni"], default=None)
    serve.add_argument("--runner", choices=["auto", "generate", "pooling", "draft"], default="auto")
    serve.add_argument("--convert", choices=["auto", "none", "embed", "classify"], default="auto")
    args = parser.parse_args(argv)  # unknown flags: usage on stderr, exit 2, as vLLM does
    if not 0 < args.gpu_memory_utilization <= 1:
        parser.error("--gpu-memory-utilization must be in (0, 1]")
    return args


def modes(model: str) -> dict[str, str]:
    raw = os.environ.get("FAKE_VLLM_MODE", "")
    per_model = json.loads(os.environ.get("FAKE_VLLM_MODES", "{}"))
    raw = per_model.get(model, raw)
    out: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in raw.split(","))):
        key, _, value = part.partition("=")
        out[key] = value
    return out


def say(text: str, *, err: bool = False) -> None:
    stamp = time.strftime("%m-%d %H:%M:%S")
    print(
        f"{'ERROR' if err else 'INFO'} {stamp} [api_server.py] {text}", file=sys.stderr if err else sys.stdout
    )


def note(path: str, entry: dict[str, Any]) -> None:
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(entry) + "\n")


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    record = os.environ.get("FAKE_VLLM_ARGV_FILE")
    if record:
        with open(record, "a", encoding="utf-8") as fh:
            entry = {"pid": os.getpid(), "model": args.model_tag, "argv": argv, "cwd": os.getcwd(),
                     "ray_address": os.environ.get("RAY_ADDRESS")}  # fmt: skip
            fh.write(json.dumps(entry) + "\n")
    mode = modes(args.model_tag)
    say(f"vLLM API server version 0.0.0+fake; model {args.model_tag!r}")
    sys.stdout.flush()
    if "crash_at_start" in mode:
        say("EngineCore failed to start.", err=True)
        print(
            '  File "/opt/venv/lib/python3.12/site-packages/vllm/v1/engine/core.py", line 82', file=sys.stderr
        )
        print(
            "RuntimeError: Engine core initialization failed (see /var/log/vllm/engine-core.log). "
            "Failed core proc(s): {'EngineCore_0': 1}",
            file=sys.stderr,
        )
        return 1
    if "hang_at_start" in mode:
        say("Loading weights took forever...")
        sys.stdout.flush()
        while True:
            time.sleep(3600)
    if "slow_start" in mode:
        time.sleep(float(mode["slow_start"] or 1))
    serve(args, int(mode["crash_after"]) if "crash_after" in mode else None)
    return 0


def serve(args: argparse.Namespace, crash_after: int | None) -> None:
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response, StreamingResponse
    from starlette.routing import Route

    served = args.served_model_name or [args.model_tag]
    limit = args.max_model_len
    count = {"chat": 0}
    pooling = args.runner == "pooling"
    dims = int(json.loads(os.environ.get("FAKE_VLLM_DIMS", "{}")).get(args.model_tag, 384))

    async def health(request: Request) -> Response:
        return Response(status_code=200)

    async def models(request: Request) -> Response:
        cards = [
            {"id": n, "object": "model", "created": 0, "owned_by": "vllm", "root": args.model_tag,
             "max_model_len": limit}
            for n in served
        ]  # fmt: skip
        return JSONResponse({"object": "list", "data": cards})

    async def chat(request: Request) -> Response:
        count["chat"] += 1
        if crash_after is not None and count["chat"] > crash_after:
            os.kill(os.getpid(), signal.SIGKILL)  # as the OOM killer would
        body = await request.json()
        seen = os.environ.get("FAKE_VLLM_REQUESTS_FILE")  # tripwires: every chat request, as received
        if seen:
            note(seen, {"model": args.model_tag, "messages": body.get("messages")})
        if pooling:
            return error(400, "The model does not support Chat Completions API", "BadRequestError")
        if body.get("model") not in served:
            return error(404, f"The model `{body.get('model')}` does not exist.", "NotFoundError")
        prompt = sum(len(str(m.get("content", "")).split()) + 4 for m in body.get("messages", []))
        max_tokens = int(body.get("max_tokens") or 16)
        if prompt + max_tokens > limit:
            return error(
                400,
                f"This model's maximum context length is {limit} tokens. However, you requested "
                f"{prompt + max_tokens} tokens ({prompt} in the messages, {max_tokens} in the completion). "
                "Please reduce the length of the messages or completion.",
                "BadRequestError",
            )
        last: dict[str, Any] = next((m for m in reversed(body["messages"]) if m.get("role") == "user"), {})
        pieces = WORD.findall("vllm answer: " + str(last.get("content", ""))[:60])
        finish = "stop"
        if max_tokens < len(pieces):
            pieces, finish = pieces[:max_tokens], "length"
        usage = {
            "prompt_tokens": prompt,
            "completion_tokens": len(pieces),
            "total_tokens": prompt + len(pieces),
        }
        base = {"id": f"chatcmpl-fake{count['chat']}", "created": int(time.time()), "model": body["model"]}
        want = bool(body.get("logprobs"))
        if not body.get("stream"):
            message = {"role": "assistant", "content": "".join(pieces), "tool_calls": []}
            choice = {
                "index": 0,
                "message": message,
                "logprobs": logprobs(pieces, want),
                "finish_reason": finish,
            }
            return JSONResponse({**base, "object": "chat.completion", "choices": [choice], "usage": usage})
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        return StreamingResponse(
            events(base, pieces, finish, want, usage, include_usage), media_type="text/event-stream"
        )

    async def completions(request: Request) -> Response:
        count["chat"] += 1
        body = await request.json()
        if body.get("model") not in served:
            return error(404, f"The model `{body.get('model')}` does not exist.", "NotFoundError")
        if body.get("suffix") is not None:
            return error(400, "suffix is not currently supported", "BadRequestError")
        prompts = body["prompt"] if isinstance(body.get("prompt"), list) else [str(body.get("prompt", ""))]
        n, lp, max_tokens = int(body.get("n") or 1), body.get("logprobs"), int(body.get("max_tokens") or 16)
        base = {"id": f"cmpl-fake{count['chat']}", "object": "text_completion", "created": int(time.time()),
                "model": body["model"]}  # fmt: skip
        choices, used = [], 0
        for i, prompt in enumerate(prompts):
            pieces = WORD.findall(" vllm continuation of: " + prompt[:60])
            finish = "length" if len(pieces) > max_tokens else "stop"
            pieces = pieces[:max_tokens]
            for j in range(n):
                logp = None
                if lp is not None:
                    tops = [{p: -0.125, **{f"alt{k}": -4.0 - k for k in range(lp)}} for p in pieces]
                    offsets = [len(prompt) + len("".join(pieces[:k])) for k in range(len(pieces))]
                    logp = {"tokens": pieces, "token_logprobs": [-0.125] * len(pieces), "top_logprobs": tops,
                            "text_offset": offsets}  # fmt: skip
                text = (prompt if body.get("echo") else "") + "".join(pieces)
                choices.append({"index": i * n + j, "text": text, "logprobs": logp, "finish_reason": finish})
                used += len(pieces)
        prompt_tokens = sum(len(p.split()) + 1 for p in prompts)
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": used,
            "total_tokens": prompt_tokens + used,
        }
        if not body.get("stream"):
            return JSONResponse({**base, "choices": choices, "usage": usage})

        async def stream() -> AsyncIterator[bytes]:
            for ch in choices:
                yield b"data: " + json.dumps({**base, "choices": [ch]}).encode() + b"\n\n"
            if (body.get("stream_options") or {}).get("include_usage"):
                yield b"data: " + json.dumps({**base, "choices": [], "usage": usage}).encode() + b"\n\n"
            yield b"data: [DONE]\n\n"

        return StreamingResponse(stream(), media_type="text/event-stream")

    async def embeddings(request: Request) -> Response:
        count["chat"] += 1
        if crash_after is not None and count["chat"] > crash_after:
            os.kill(os.getpid(), signal.SIGKILL)
        body = await request.json()
        seen = os.environ.get("FAKE_VLLM_REQUESTS_FILE")  # tripwires: every embedding request too
        if seen:
            note(seen, {"model": args.model_tag, "input": body.get("input")})
        if not pooling:
            return error(400, "The model does not support Embeddings API", "BadRequestError")
        if body.get("model") not in served:
            return error(404, f"The model `{body.get('model')}` does not exist.", "NotFoundError")
        raw = body.get("input")
        items = [raw] if isinstance(raw, str) or (raw and isinstance(raw[0], int)) else list(raw or [])
        if not items:
            return error(400, "Input cannot be empty", "BadRequestError")
        if body.get("dimensions") is not None:
            message = (
                f'Model "{args.model_tag}" does not support matryoshka representation, '
                "changing output dimensions will lead to poor results."
            )
            return error(400, message, "BadRequestError")
        data, total = [], 0
        for i, item in enumerate(items):
            text = item if isinstance(item, str) else " ".join(f"t{t}" for t in item)
            n = len(text.split()) + 2 if isinstance(item, str) else len(item)  # [CLS] ... [SEP]
            if n > limit:
                return error(400, f"This model's maximum context length is {limit} tokens. However, you "
                             f"requested {n} tokens in the input for embedding generation. Please reduce "
                             "the length of the input.", "BadRequestError")  # fmt: skip
            total += n
            vec: Any = vector(text, args.model_tag, dims)
            if body.get("encoding_format") == "base64":
                vec = base64.b64encode(array.array("f", vec).tobytes()).decode()
            data.append({"index": i, "object": "embedding", "embedding": vec})
        return JSONResponse({"id": f"embd-fake{count['chat']}", "object": "list", "created": int(time.time()),
                             "model": body["model"], "data": data,
                             "usage": {"prompt_tokens": total, "total_tokens": total, "completion_tokens": 0,
                                       "prompt_tokens_details": None}})  # fmt: skip

    async def events(
        base: dict[str, Any],
        pieces: list[str],
        finish: str,
        want: bool,
        usage: dict[str, int],
        include_usage: bool,
    ) -> AsyncIterator[bytes]:
        base = {**base, "object": "chat.completion.chunk"}

        def chunk(delta: dict[str, Any], lp: Any = None, reason: str | None = None) -> bytes:
            choice = {"index": 0, "delta": delta, "logprobs": lp, "finish_reason": reason}
            return b"data: " + json.dumps({**base, "choices": [choice]}).encode() + b"\n\n"

        yield chunk({"role": "assistant", "content": ""})
        for piece in pieces:
            yield chunk({"content": piece}, logprobs([piece], want))
        yield chunk({}, None, finish)
        if include_usage:
            yield b"data: " + json.dumps({**base, "choices": [], "usage": usage}).encode() + b"\n\n"
        yield b"data: [DONE]\n\n"

    app = Starlette(
        routes=[
            Route("/health", health, methods=["GET"]),
            Route("/v1/models", models, methods=["GET"]),
            Route("/v1/chat/completions", chat, methods=["POST"]),
            Route("/v1/completions", completions, methods=["POST"]),
            Route("/v1/embeddings", embeddings, methods=["POST"]),
        ]
    )
    say(f"Starting vLLM API server on http://{args.host or '0.0.0.0'}:{args.port}")
    sys.stdout.flush()
    uvicorn.run(app, host=args.host or "0.0.0.0", port=args.port, log_level="warning", lifespan="off")


def vector(text: str, model: str, dims: int) -> list[float]:
    """A unit vector for `text` in `model`'s space: the sum of one dense pseudo-random vector per word
    (seeded by model and word), so texts sharing words are close, a truncated vector still carries the
    text, and the same model gives the same vector on any server."""
    vec = [0.0] * dims
    for word in re.findall(r"\w+", text.lower()):
        rng = random.Random(hashlib.sha256(f"{model}\0{word}".encode()).digest())
        vec = [x + rng.gauss(0.0, 1.0) for x in vec]
    norm = math.sqrt(sum(x * x for x in vec)) or 1.0
    return [x / norm for x in vec]


def logprobs(pieces: list[str], want: bool) -> dict[str, Any] | None:
    if not want:
        return None
    content = [{"token": p, "logprob": -0.125, "bytes": list(p.encode()), "top_logprobs": []} for p in pieces]
    return {"content": content}


def error(status: int, message: str, etype: str) -> Response:
    from starlette.responses import JSONResponse

    # vLLM's ErrorResponse: the OpenAI shape, with the HTTP status as an integer `code`.
    body = {"error": {"message": message, "type": etype, "param": None, "code": status}}
    return JSONResponse(body, status_code=status)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
