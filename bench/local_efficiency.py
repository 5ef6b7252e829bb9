"""Local efficiency: decode tok/s and TTFT through the gateway vs raw llama-cpp-python, in one run.

    python -m bench.local_efficiency [--model smollm2-135m] [--reps 5] [--max-tokens 128]

Both sides load the same GGUF with the same n_ctx, threads and batch size, run the same prompt at
temperature 0, streaming, and alternate (raw, router, raw, router, ...) so drift hits both equally.
Raw llama-cpp-python runs in a child process that times itself in-process and idles between runs
(loaded in this process, its llama.cpp threads slowed the router side by ~15 ms TTFT); the router is
a real `localroute serve` with its worker process, timed from this process over HTTP.
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
from pathlib import Path

import httpx

from bench.common import append_result, median
from localroute.config import LlamaCppModel, load_config

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


def raw_child(path: Path, m: LlamaCppModel) -> None:
    """Serve timing requests on stdin: one line with max_tokens in, one JSON result line out."""
    from llama_cpp import Llama

    llm = Llama(
        model_path=str(path), n_ctx=m.n_ctx, n_threads=m.threads, n_threads_batch=m.threads,
        n_batch=m.n_batch, chat_format=m.chat_format, verbose=False,
    )  # fmt: skip
    for line in sys.stdin:
        print(json.dumps(raw_run(llm, int(line))), flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="models.toml")
    ap.add_argument("--model", default=None)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--max-tokens", type=int, default=128)
    # llama.cpp's threads spin for a while after a decode; on 2 cores the side that just ran would
    # steal CPU from the side that runs next, so both sides get the same idle gap before they run.
    ap.add_argument("--gap", type=float, default=0.5)
    ap.add_argument("--raw-child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    cfg = load_config(args.config)
    m = cfg.model(args.model) if args.model else cfg.ladder()[0]
    assert m is not None, "unknown model"
    if args.raw_child:
        raw_child(cfg.model_path(m), m)
        return

    raw_proc = subprocess.Popen(
        [sys.executable, "-m", "bench.local_efficiency", "--config", args.config, "--model", m.name,
         "--raw-child"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    assert raw_proc.stdin is not None and raw_proc.stdout is not None
    pipe_in, pipe_out = raw_proc.stdin, raw_proc.stdout

    def raw_remote(max_tokens: int) -> tuple[float, float, int]:
        pipe_in.write(f"{max_tokens}\n")
        pipe_in.flush()
        ttft, tps, n = json.loads(pipe_out.readline())
        return float(ttft), float(tps), int(n)

    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "localroute", "serve", "--config", args.config, "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        # TCP_NODELAY: httpx writes headers and body in two sends, so without it Nagle holds the body
        # until the server's delayed ACK (~10-40 ms after an idle gap); that is the client's cost, not ours.
        nodelay = httpx.HTTPTransport(socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)])
        client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=300, transport=nodelay)
        for _ in range(600):
            try:
                if client.get("/health").json()["engines"][m.name]["state"] == "ready":
                    break
            except (httpx.TransportError, KeyError, ValueError):
                pass
            time.sleep(0.1)
        raw_remote(8), router_run(client, m.name, 8)  # warm both
        raw: list[tuple[float, float, int]] = []
        via: list[tuple[float, float, int]] = []
        for _ in range(args.reps):
            time.sleep(args.gap)
            raw.append(raw_remote(args.max_tokens))
            time.sleep(args.gap)
            via.append(router_run(client, m.name, args.max_tokens))
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(30)
        raw_proc.kill()

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
        "bench.local_efficiency",
        "Local efficiency (router vs raw llama-cpp-python)",
        table,
        notes,
        ("llama-cpp-python", "localroute", "uvicorn", "starlette", "httpx"),
    )


if __name__ == "__main__":
    main()
