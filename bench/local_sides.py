"""The two timed sides of bench.local_efficiency: raw llama-cpp-python in a child process that times
itself, and the gateway timed from the benchmark over HTTP. Both send the same prompt at temperature 0.

    python -m bench.local_sides --config CONFIG --model NAME    # the raw child (started by the benchmark)

The child reads one request a line on stdin (`stream 128` or `complete 128`) and answers one JSON line
`[seconds, tok/s, tokens]`; between requests it idles, so its llama.cpp threads do not compete with the
router side. A sample's seconds are the time to the first content token when streaming, and to the whole
answer when not.
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Literal

import httpx

from localroute.config.models import LlamaCppModel
from localroute.config.schema import load_config

PROMPT = [{"role": "user", "content": "Count from 1 to 300, separated by commas: 1, 2, 3,"}]
Mode = Literal["stream", "complete"]
Sample = tuple[float, float, int]  # seconds (TTFT or total), tok/s, completion tokens


def _stream_sample(t0: float, stamps: list[float]) -> Sample:
    """Decode rate counts the chunks after the first over the time from the first to the last."""
    if not stamps:
        raise RuntimeError("the stream carried no content")
    tps = (len(stamps) - 1) / (stamps[-1] - stamps[0]) if len(stamps) > 1 else 0.0
    return stamps[0] - t0, tps, len(stamps)


def _whole_sample(seconds: float, tokens: int) -> Sample:
    return seconds, tokens / seconds, tokens


def raw_run(llm: Any, mode: Mode, max_tokens: int) -> Sample:
    kw: dict[str, Any] = {"messages": PROMPT, "max_tokens": max_tokens, "temperature": 0.0}
    t0 = time.perf_counter()
    if mode == "complete":
        out = llm.create_chat_completion(**kw, stream=False)
        seconds = time.perf_counter() - t0
        return _whole_sample(seconds, int(out["usage"]["completion_tokens"]))
    stamps: list[float] = []
    for chunk in llm.create_chat_completion(**kw, stream=True):
        if chunk["choices"][0]["delta"].get("content"):
            stamps.append(time.perf_counter())
    return _stream_sample(t0, stamps)


def router_run(client: httpx.Client, model: str, mode: Mode, max_tokens: int) -> Sample:
    body = {"model": model, "messages": PROMPT, "max_tokens": max_tokens, "temperature": 0.0}
    t0 = time.perf_counter()
    if mode == "complete":
        r = client.post("/v1/chat/completions", json=body)  # returns with the whole body read
        seconds = time.perf_counter() - t0
        r.raise_for_status()
        return _whole_sample(seconds, int(r.json()["usage"]["completion_tokens"]))
    stamps: list[float] = []
    with client.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            now = time.perf_counter()  # when the chunk arrived, before this client parses it
            if line.startswith("data: {"):
                chunk = json.loads(line[6:])
                if chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                    stamps.append(now)
    return _stream_sample(t0, stamps)


def http_client(port: int) -> httpx.Client:
    # TCP_NODELAY: httpx writes headers and body in two sends, so without it Nagle holds the body
    # until the server's delayed ACK (~10-40 ms after an idle gap); that is the client's cost, not ours.
    nodelay = httpx.HTTPTransport(socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)])
    return httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=300, transport=nodelay)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RawSide:
    """A raw llama-cpp-python child for one model of `config`, loaded as the gateway's worker loads it."""

    def __init__(self, config: Path, model: str, env: dict[str, str], same_cache: bool = False) -> None:
        cmd = [sys.executable, "-m", "bench.local_sides", "--config", str(config), "--model", model]
        self.proc = subprocess.Popen(
            [*cmd, "--same-cache"] if same_cache else cmd,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env,
        )  # fmt: skip

    def run(self, mode: Mode, max_tokens: int) -> Sample:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(f"{mode} {max_tokens}\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the raw llama-cpp-python child exited ({self.proc.poll()})")
        seconds, tps, n = json.loads(line)
        return float(seconds), float(tps), int(n)

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


def raw_child(path: Path, m: LlamaCppModel, same_cache: bool = False) -> None:
    """The same Llama arguments as localroute.rungs.llamacpp.worker.load_llama, and the same
    prompt-cache policy as its Runner: with cache_prompt off, the context is reset before each request.
    `same_cache`: the worker's prompt evaluation too (rungs/llamacpp/prompt_cache.py: an exact repeat of
    the last prompt reuses its logits and evaluates nothing), so both sides do the same llama.cpp work."""
    from llama_cpp import Llama

    llm = Llama(
        model_path=str(path), n_ctx=m.n_ctx, n_threads=m.threads, n_threads_batch=m.threads,
        n_batch=m.n_batch, chat_format=m.chat_format, verbose=False,
    )  # fmt: skip
    if same_cache:
        from localroute.rungs.llamacpp import prompt_cache

        prompt_cache.install(llm)
    for line in sys.stdin:
        mode, max_tokens = line.split()
        if not m.cache_prompt:
            llm.reset()
        sample = raw_run(llm, "stream" if mode == "stream" else "complete", int(max_tokens))
        print(json.dumps(sample), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--same-cache", action="store_true", help="evaluate prompts as the worker does")
    args = ap.parse_args()
    cfg = load_config(args.config)
    m = cfg.model(args.model)
    if not isinstance(m, LlamaCppModel):
        raise SystemExit(f"{args.model}: not a llama_cpp model in {args.config}")
    raw_child(cfg.model_path(m), m, args.same_cache)


if __name__ == "__main__":
    main()
