"""What the endpoints balancer adds to a request: the rung (rungs/endpoints.py: pick by least outstanding,
the per-request peer check against `trusted_networks`, the fail-over wrapper) against the same HTTP client
calling one endpoint directly, in one run, against the deterministic mock upstream.

    python -m bench.endpoints_overhead [--reps 2000] [--no-append]

Three paths, measured in shuffled rounds in one asyncio loop, each over its own keep-alive connection(s):
`direct`: OpenAIHTTP over httpx with the lean transport (what the rung uses per endpoint) to one mock;
`balancer x1`: the endpoints rung with that one mock; `balancer x3`: the rung over three mock processes.
Every request is private, so each one is judged by its connected peer (loopback: trusted). Both a JSON
answer and a stream read to `[DONE]` are timed. The added latency is the path's percentile minus direct's.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx

from bench import servers
from bench.common import append_result, pct
from localroute.config.models import VllmModel
from localroute.config.privacy import ALL_KINDS
from localroute.privacy.detect import Detector
from localroute.privacy.guard import CURRENT, EgressGuard, Privacy
from localroute.privacy.trust import TrustedNetworks
from localroute.rungs.endpoints import EndpointsBackend
from localroute.rungs.lean_http import LeanTransport
from localroute.rungs.openai_http import OpenAIHTTP

HI = [{"role": "user", "content": "Hi"}]
BODY: dict[str, Any] = {"model": servers.MODEL, "messages": HI, "max_tokens": 8}
STREAM = {**BODY, "stream": True}
Call = Callable[[dict[str, Any]], Awaitable[object]]


def _rung(ports: list[int]) -> EndpointsBackend:
    cfg = VllmModel(
        name="lan", engine="vllm", model=servers.MODEL, endpoints=[f"http://127.0.0.1:{p}" for p in ports],
        balance={"health_path": "/v1/models", "health_every_s": 3600},
    )  # fmt: skip
    return EndpointsBackend(
        cfg, networks=TrustedNetworks(["127.0.0.0/8"]), egress_guard=EgressGuard(Detector(ALL_KINDS))
    )


async def _drain(agen: Any) -> None:
    async for _ in agen:
        pass


async def measure(ports: list[int], reps: int) -> dict[str, dict[str, list[float]]]:
    CURRENT.set(Privacy(True, "header"))
    direct_client = httpx.AsyncClient(base_url=f"http://127.0.0.1:{ports[0]}", transport=LeanTransport())
    direct = OpenAIHTTP(direct_client)
    one, three = _rung(ports[:1]), _rung(ports)
    await one.start()
    await three.start()
    paths: dict[str, tuple[Call, Call]] = {
        "direct": (direct.complete, lambda b: _drain(direct.stream(b))),
        "balancer x1": (one.complete, lambda b: _drain(one.stream(b))),
        "balancer x3": (three.complete, lambda b: _drain(three.stream(b))),
    }
    times: dict[str, dict[str, list[float]]] = {
        name: {"json": [], "stream": [], "json cpu": [], "stream cpu": []} for name in paths
    }
    order = list(paths)
    try:
        for rep in range(reps + 100):
            random.shuffle(order)
            for name in order:
                complete, stream = paths[name]
                for kind, call, body in (("json", complete, BODY), ("stream", stream, STREAM)):
                    t0, c0 = time.perf_counter(), time.process_time()
                    await call(body)
                    if rep >= 100:  # the first 100 rounds warm up connections and caches
                        times[name][kind].append((time.perf_counter() - t0) * 1e6)
                        times[name][kind + " cpu"].append((time.process_time() - c0) * 1e6)
    finally:
        await direct_client.aclose()
        await one.aclose()
        await three.aclose()
    return times


def table(times: dict[str, dict[str, list[float]]]) -> str:
    rows = [
        "| path | answer | p50 µs | p90 µs | p99 µs | added p50 µs | client CPU p50 µs | added CPU p50 µs |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for kind in ("json", "stream"):
        base, base_cpu = times["direct"][kind], times["direct"][kind + " cpu"]
        for name, by_kind in times.items():
            xs, cpu = by_kind[kind], by_kind[kind + " cpu"]
            added = "" if name == "direct" else f"{pct(xs, 0.5) - pct(base, 0.5):+.0f}"
            added_cpu = "" if name == "direct" else f"{pct(cpu, 0.5) - pct(base_cpu, 0.5):+.0f}"
            rows.append(
                f"| {name} | {kind} | {pct(xs, 0.5):.0f} | {pct(xs, 0.9):.0f} | {pct(xs, 0.99):.0f} "
                f"| {added} | {pct(cpu, 0.5):.0f} | {added_cpu} |"
            )
    return "\n".join(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=2000)
    p.add_argument("--no-append", action="store_true")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        mocks = [servers.start_mock(Path(tmp)) for _ in range(3)]
        try:
            times = asyncio.run(measure([m.port for m in mocks], args.reps))
        finally:
            for m in mocks:
                m.stop()
    out = table(times)
    notes = (
        f"{args.reps} rounds after 100 warm-up rounds; each round times every path once with a JSON answer "
        "and once with a stream read to [DONE], in a shuffled order. Client and mocks share this machine. "
        "Client CPU: this process's CPU time per request (the balancer's own cost, less noisy than wall time "
        "on a shared box)."
    )
    if args.no_append:
        print(out + "\n\n" + notes)
    else:
        append_result("bench.endpoints_overhead", "Endpoints balancer: added latency vs one endpoint direct",
                      out, notes, ("httpx",))  # fmt: skip


if __name__ == "__main__":
    main()
