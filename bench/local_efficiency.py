"""Local efficiency: decode tok/s and TTFT through the gateway vs raw llama-cpp-python, in one run.

    python -m bench.local_efficiency [--model smollm2-135m] [--reps 5] [--max-tokens 128]

Both sides load the same GGUF with the same n_ctx, threads and batch size, run the same prompt at
temperature 0, streaming, and alternate (raw, router, raw, router, ...) so drift hits both equally.
Raw runs in this process; the router is a real `localroute serve` with its worker process.
Decode tok/s counts streamed chunks after the first over the time from first to last chunk.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time

import httpx

from bench.common import append_result, median
from localroute.config import load_config

PROMPT = [{"role": "user", "content": "Count from 1 to 300, separated by commas: 1, 2, 3,"}]


def raw_run(llm: object, max_tokens: int) -> tuple[float, float, int]:
    t0 = time.perf_counter()
    stamps: list[float] = []
    for chunk in llm.create_chat_completion(  # type: ignore[attr-defined]
        messages=PROMPT, max_tokens=max_tokens, temperature=0.0, stream=True
    ):
        if chunk["choices"][0]["delta"].get("content"):
            stamps.append(time.perf_counter())
    return _summ(t0, stamps)


def router_run(client: httpx.Client, model: str, max_tokens: int) -> tuple[float, float, int]:
    body = {
        "model": model,
        "messages": PROMPT,
        "max_tokens": max_tokens,
        "temperature": 0.0,
        "stream": True,
    }
    t0 = time.perf_counter()
    stamps: list[float] = []
    with client.stream("POST", "/v1/chat/completions", json=body) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if line.startswith("data: {"):
                chunk = json.loads(line[6:])
                if chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                    stamps.append(time.perf_counter())
    return _summ(t0, stamps)


def _summ(t0: float, stamps: list[float]) -> tuple[float, float, int]:
    ttft = stamps[0] - t0
    tps = (len(stamps) - 1) / (stamps[-1] - stamps[0]) if len(stamps) > 1 else 0.0
    return ttft, tps, len(stamps)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="models.toml")
    ap.add_argument("--model", default=None)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--max-tokens", type=int, default=128)
    args = ap.parse_args()
    cfg = load_config(args.config)
    m = cfg.model(args.model) if args.model else cfg.ladder()[0]
    assert m is not None, "unknown model"

    from llama_cpp import Llama

    llm = Llama(
        model_path=str(cfg.model_path(m)),
        n_ctx=m.n_ctx,
        n_threads=m.threads,
        n_threads_batch=m.threads,
        n_batch=m.n_batch,
        chat_format=m.chat_format,
        verbose=False,
    )
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "localroute", "serve", "--config", args.config, "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=300)
        for _ in range(600):
            try:
                if client.get("/health").json()["engines"][m.name]["state"] == "ready":
                    break
            except (httpx.TransportError, KeyError, ValueError):
                pass
            time.sleep(0.1)
        raw_run(llm, 8), router_run(client, m.name, 8)  # warm both
        raw: list[tuple[float, float, int]] = []
        via: list[tuple[float, float, int]] = []
        for _ in range(args.reps):
            raw.append(raw_run(llm, args.max_tokens))
            via.append(router_run(client, m.name, args.max_tokens))
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(30)

    r_ttft, v_ttft = median([x[0] for x in raw]), median([x[0] for x in via])
    r_tps, v_tps = median([x[1] for x in raw]), median([x[1] for x in via])
    toks = f"{median([x[2] for x in raw]):.0f} / {median([x[2] for x in via]):.0f}"
    table = (
        "| model | raw tok/s | router tok/s | ratio | raw TTFT ms | router TTFT ms | added TTFT ms "
        "| tokens raw/router |\n|---|---|---|---|---|---|---|---|\n"
        f"| {m.name} | {r_tps:.1f} | {v_tps:.1f} | **{v_tps / r_tps:.3f}** | {r_ttft * 1e3:.1f} | "
        f"{v_ttft * 1e3:.1f} | **{(v_ttft - r_ttft) * 1e3:+.1f}** | {toks} |"
    )
    notes = (
        f"Streaming, temperature 0, max_tokens {args.max_tokens}, {args.reps} interleaved "
        "repetitions, medians. Goal: ratio ≥ 0.97 and ≤ 5 ms added TTFT."
    )
    append_result(
        "Local efficiency (router vs raw llama-cpp-python)",
        table,
        notes,
        ("llama-cpp-python", "localroute", "uvicorn", "starlette", "httpx"),
    )


if __name__ == "__main__":
    main()
