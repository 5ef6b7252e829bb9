"""The llama.cpp embedding worker: one GGUF embedding model in its own process, served as OpenAI's
`/v1/embeddings` over HTTP on a Unix socket, like the chat worker (worker.py) and supervised the same way
(embedder.py). Run as `python -m localroute.rungs.llamacpp.embed_worker --socket ... --model-path ...`.

Its body is the engine body of the `Embedder` protocol: `{"model", "input": [str | [token id, ...], ...]}`;
its answer OpenAI's list of float vectors plus `x_localroute.compute_s`, this request's share of the
worker's CPU-seconds (the gateway prices it and removes it). The batching is in embed_batch.py.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from typing import Any

from localroute.errors import APIError, InternalError, InvalidRequestError
from localroute.rungs.llamacpp.embed_batch import EmbedRunner
from localroute.rungs.llamacpp.worker import _die_with_parent


def build_app(runner: EmbedRunner) -> Any:
    """/health and /v1/embeddings, nothing else."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    def error(exc: APIError) -> Response:
        return JSONResponse(exc.body(), status_code=exc.status)

    async def health(request: Request) -> Response:
        return JSONResponse(
            {
                "status": "ok",
                "model": runner.name,
                "n_ctx": runner.max_tokens,
                "n_embd": runner.n_embd,
                "busy": runner.busy,
                "served": runner.served,
                "batches": runner.batches,
                "pid": os.getpid(),
            }
        )

    async def embeddings(request: Request) -> Response:
        try:
            body = json.loads(await request.body())
        except ValueError:
            return error(InvalidRequestError("Request body is not valid JSON."))
        inputs = body.get("input") if isinstance(body, dict) else None
        if not isinstance(inputs, list) or not inputs:
            return error(InvalidRequestError("'input' must be a non-empty array.", param="input"))
        try:
            seqs = runner.tokens(inputs)
            vectors, compute_s = await runner.embed(seqs)
        except APIError as exc:
            return error(exc)
        except Exception as exc:  # one line to the gateway's log, never a traceback
            print(f"embed worker error: {exc.__class__.__name__}", file=sys.stderr, flush=True)
            return error(InternalError(f"llama.cpp failed: {exc.__class__.__name__}"))
        n = sum(len(s) for s in seqs)
        return JSONResponse(
            {
                "object": "list",
                "data": [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)],
                "model": runner.name,
                "usage": {"prompt_tokens": n, "total_tokens": n},
                "x_localroute": {"compute_s": round(compute_s, 6)},
            }
        )

    return Starlette(
        routes=[
            Route("/health", health, methods=["GET"]),
            Route("/v1/embeddings", embeddings, methods=["POST"]),
        ]
    )


def load_llama(args: argparse.Namespace) -> Any:
    from llama_cpp import Llama

    return Llama(
        model_path=args.model_path,
        embedding=True,
        # --n-batch is how many tokens one decode packs (embed_batch.py); llama.cpp's batch and
        # micro-batch hold the longest input whole, as non-causal attention needs.
        n_ctx=max(args.n_ctx, args.n_batch),
        n_batch=max(args.n_ctx, args.n_batch),
        n_ubatch=max(args.n_ctx, args.n_batch),
        n_threads=args.threads,
        n_threads_batch=args.threads,
        verbose=False,
    )


def main(argv: list[str] | None = None, loader: Callable[[argparse.Namespace], Any] = load_llama) -> int:
    p = argparse.ArgumentParser(prog="localroute-llamacpp-embed-worker")
    p.add_argument("--socket", required=True)
    p.add_argument("--model-path", required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--n-ctx", type=int, required=True)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--n-batch", type=int, default=512)
    p.add_argument("--parent-pid", type=int, default=os.getppid())
    # The chat worker's options, given by the shared launch code (engine.py); they mean nothing here.
    p.add_argument("--chat-format", default=None)
    p.add_argument("--no-cache-prompt", action="store_true")
    p.add_argument("--render-timeout-s", default=None)
    args = p.parse_args(argv)
    _die_with_parent(args.parent_pid)
    try:
        llm = loader(args)
        runner = EmbedRunner(llm, args.name, min(args.n_ctx, llm._model.n_ctx_train()), args.n_batch)
    except ImportError:
        print("llama-cpp-python is not installed: pip install 'localroute[cpu]'", file=sys.stderr)
        return 3
    except Exception as exc:
        reason = str(exc).replace(args.model_path, f"<{args.name}.gguf>")
        print(f"cannot load embedding model {args.name}: {reason}", file=sys.stderr)
        return 4
    import uvicorn

    uvicorn.run(
        build_app(runner),
        uds=args.socket,
        log_level="warning",
        access_log=False,
        lifespan="off",
        timeout_graceful_shutdown=2,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
