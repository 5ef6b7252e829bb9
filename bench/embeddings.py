"""Embeddings per second of the local embedding engine vs raw llama-cpp-python, same model, same run.

    python -m bench.embeddings [--reps 5] [--no-append]

Three sides embed the same inputs with the repo's all-MiniLM-L6-v2 (models.toml `all-minilm-l6-v2`,
F16 GGUF converted at pull): **raw**, `Llama(embedding=True).embed(inputs, normalize=True)` in this
process; **engine**, `LlamaCppEmbedder.embed` (the supervised worker process over its Unix socket);
**router**, `POST /v1/embeddings` on a real `localroute serve` (HTTP, parsing, privacy scan, routing,
record; float encoding). All load the GGUF with the config's n_ctx, n_batch (= n_ubatch) and threads.
Workloads: one request of many short inputs, one of long inputs, and several concurrent requests
(the engine batches them into shared decodes; raw embeds them one request after another, as a server
without cross-request batching would). Every repetition runs each cell once on every side, rotating
which side goes first; the table gives medians and the ratio to raw.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx

from bench.common import append_result
from bench.servers import free_port
from localroute.config.models import LlamaCppModel
from localroute.config.schema import load_config
from localroute.rungs.llamacpp.embedder import LlamaCppEmbedder, from_config

ROOT = Path(__file__).resolve().parent.parent
MODEL = "all-minilm-l6-v2"
WORDS = ("the quick brown fox jumps over a lazy dog while market prices rise and engineers ship "
         "small reliable services that embed documents for search retrieval ranking").split()  # fmt: skip


def sentence(i: int, n_words: int) -> str:
    return " ".join(WORDS[(i * 7 + k * 3) % len(WORDS)] for k in range(n_words)) + f" #{i}."


# (name, requests, inputs per request, words per input)
CELLS = [("64 short inputs, 1 request", 1, 64, 12), ("8 long inputs, 1 request", 1, 8, 200),
         ("8 concurrent requests of 4 short", 8, 4, 12)]  # fmt: skip
Workload = list[list[str]]


def workload(requests: int, per: int, words: int) -> Workload:
    return [[sentence(r * per + i, words) for i in range(per)] for r in range(requests)]


async def timed(fn: Callable[[Workload], Awaitable[None]], w: Workload) -> float:
    t0 = time.perf_counter()
    await fn(w)
    return time.perf_counter() - t0


async def bench(reps: int) -> tuple[str, str]:
    from llama_cpp import Llama

    cfg = load_config(ROOT / "models.toml")
    m = cfg.model(MODEL)
    assert isinstance(m, LlamaCppModel)
    path = cfg.model_path(m)
    # raw: as llama-cpp-python is set up to embed this model's whole context (n_batch = n_ubatch = n_ctx)
    size = max(m.n_ctx, m.n_batch)
    llm = Llama(model_path=str(path), embedding=True, n_ctx=size, n_batch=size, n_ubatch=size,
                n_threads=m.threads, n_threads_batch=m.threads, verbose=False)  # fmt: skip
    tmp = Path(tempfile.mkdtemp(prefix="bench-embed-"))
    (tmp / "rt").mkdir(mode=0o700)
    engine: LlamaCppEmbedder = from_config(cfg, m, tmp / "rt")
    await engine.start()
    port = free_port()
    env = {**os.environ, "LOCALROUTE_AUDIT_PATH": str(tmp / "audit.jsonl"), "LOCALROUTE_LOG_LEVEL": "warning"}
    env.pop("OPENAI_API_KEY", None)
    serve = ["-m", "localroute", "serve", "--config", str(ROOT / "models.toml"), "--port", str(port)]
    gw = await asyncio.create_subprocess_exec(
        sys.executable, *serve, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    client = httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=600)
    try:
        for _ in range(600):
            try:
                h = (await client.get("/health")).json()
                if h["engines"].get(MODEL, {}).get("state") == "ready":
                    break
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.2)
        else:
            raise SystemExit("the gateway did not get its embedding rung ready")

        async def raw(w: Workload) -> None:
            for req in w:  # one request at a time: llama-cpp-python has no cross-request batching
                await asyncio.to_thread(llm.embed, req, normalize=True)

        async def via_engine(w: Workload) -> None:
            await asyncio.gather(*(engine.embed({"model": MODEL, "input": req}) for req in w))

        async def via_router(w: Workload) -> None:
            async def one(req: list[str]) -> None:
                body = {"model": MODEL, "input": req, "encoding_format": "float"}
                r = await client.post("/v1/embeddings", json=body)
                r.raise_for_status()

            await asyncio.gather(*(one(req) for req in w))

        sides: dict[str, Callable[[Workload], Awaitable[None]]] = {
            "raw": raw, "engine": via_engine, "router": via_router}  # fmt: skip
        times: dict[tuple[str, str], list[float]] = {}
        for cell, n_req, per, words in CELLS:
            w = workload(n_req, per, words)
            for fn in sides.values():  # warm-up: first-use costs stay out of the figures
                await fn(w)
            for rep in range(reps):
                order = list(sides)[rep % 3 :] + list(sides)[: rep % 3]
                for side in order:
                    times.setdefault((cell, side), []).append(await timed(sides[side], w))
        rows = [
            "| workload | inputs | raw emb/s | engine emb/s | router emb/s | engine ÷ raw | router ÷ raw |",
            "|---|---|---|---|---|---|---|",
        ]
        for cell, n_req, per, _ in CELLS:
            n = n_req * per
            rate = {s: n / statistics.median(times[(cell, s)]) for s in sides}
            cells = [f"{rate[s]:.1f}" for s in sides] + [
                f"{rate[s] / rate['raw']:.2f}" for s in ("engine", "router")
            ]
            rows.append(f"| {cell} | {n} | " + " | ".join(cells) + " |")
        tokens = [len(llm.tokenize(workload(1, 1, words)[0][0].encode())) for *_, words in CELLS]
        load = os.getloadavg()[0]
        notes = (
            f"all-MiniLM-L6-v2 {m.source.outtype.upper() if hasattr(m.source, 'outtype') else ''} GGUF, "
            f"{m.threads} threads on every side; the engine packs {m.n_batch} tokens per decode (n_batch), "
            f"raw llama-cpp-python up to n_batch = n_ubatch = {size}; inputs of ~{tokens[0]} and "
            f"~{tokens[1]} tokens; medians of {reps} repetitions, the "
            "side that goes first rotating, after one warm-up each. raw: `Llama.embed` in the bench "
            "process, request after request; engine: `LlamaCppEmbedder.embed` (worker process, Unix "
            "socket, JSON), concurrent requests gathered; router: the same through `localroute serve` over "
            f"HTTP (float encoding). 1-minute load average at the end: {load:.2f} (the box is shared)."
        )
        return "\n".join(rows), notes
    finally:
        await client.aclose()
        gw.terminate()
        await gw.wait()
        await engine.aclose()


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.embeddings")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--no-append", action="store_true")
    args = p.parse_args()
    table, notes = asyncio.run(bench(args.reps))
    if args.no_append:
        print(table + "\n\n" + notes)
    else:
        append_result("bench.embeddings", "Local embeddings: engine and router vs raw llama-cpp-python",
                      table, notes, ("llama_cpp_python", "gguf"))  # fmt: skip


if __name__ == "__main__":
    main()
