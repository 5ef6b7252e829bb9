"""Throughput with `serve --workers 1` and `--workers 2`, in one run, in front of the same mock upstream.

    python -m bench.workers [--workers 1,2] [--concurrency 16,64] [--seconds 5] [--rounds 2] [--append]

One remote rung pointed at `bench/mock_upstream.py` (the audit log on, as by default): the gateway's own
work is all there is to scale. For each worker count and client count, `--rounds` closed-loop sweeps
(`bench/loadclient.py`, keep-alive connections) alternate between the configurations; requests per
second (median of rounds), p99 and errors, and the gateway processes' CPU time per reply (all workers).
The load client runs in this process: on a 2-core box it takes a core of its own, which caps what a
second worker can add; the table says how many cores there were.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
from pathlib import Path

from bench import servers
from bench.common import append_result, median, pct
from bench.loadclient import closed_loop
from bench.overhead import cpu_seconds, make_target


def start(workdir: Path, mock_port: int, workers: int) -> servers.Child:
    workdir.mkdir()
    cfg = workdir / "models.toml"
    cfg.write_text(servers.localroute_config(mock_port, workdir, True), encoding="utf-8")
    port = servers.free_port()
    cmd = [sys.executable, "-m", "localroute", "serve", "--config", str(cfg), "--host", "127.0.0.1",
           "--port", str(port), "--workers", str(workers)]  # fmt: skip
    env = {servers.KEY_ENV: "sk-bench-mock", "LOCALROUTE_AUDIT_PATH": str(workdir / "audit.jsonl")}
    child = servers.spawn(f"workers{workers}", cmd, port, workdir, env)
    servers.wait_ready(child, "/health", 90)
    return child


async def sweep(port: int, pid: int, clients: int, seconds: float) -> tuple[float, float, int, float]:
    t = make_target("gw", port, None, pid)
    cpu0 = cpu_seconds(pid)
    res = await closed_loop("127.0.0.1", port, t.payloads["json"], False, clients, seconds, 1.0, 2_000_000)
    cpu_us = (cpu_seconds(pid) - cpu0) / res.completed * 1e6 if res.completed else float("nan")
    lat = [(r.end - r.start) * 1000 for r in res.replies]
    return res.rps, pct(lat, 0.99) if lat else float("nan"), res.errors, cpu_us


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--concurrency", default="16,64")
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--append", action="store_true", help="record the table in bench/RESULTS.md")
    args = ap.parse_args()
    counts = [int(x) for x in args.workers.split(",")]
    levels = [int(x) for x in args.concurrency.split(",")]
    rows: dict[tuple[int, int], list[tuple[float, float, int, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="lr-workers-") as tmp:
        mock = servers.start_mock(Path(tmp))
        gws = {}
        try:
            for n in counts:
                gws[n] = start(Path(tmp) / f"w{n}", mock.port, n)
            load0 = os.getloadavg()[0]
            for c in levels:
                for rnd in range(args.rounds):
                    for n in counts if rnd % 2 == 0 else counts[::-1]:
                        r = asyncio.run(sweep(gws[n].port, gws[n].proc.pid, c, args.seconds))
                        rows.setdefault((n, c), []).append(r)
                        print(
                            f"  workers={n} c={c}: {r[0]:.0f} rps, p99 {r[1]:.1f} ms, {r[2]} errors",
                            flush=True,
                        )
            load1 = os.getloadavg()[0]
        finally:
            for g in gws.values():
                g.stop()
            mock.stop()
    lines = [
        "| workers | clients | requests/s | p99 ms | errors | gateway CPU µs/request |",
        "|---|---|---|---|---|---|",
    ]
    for (n, c), rs in sorted(rows.items()):
        lines.append(f"| {n} | {c} | {median([r[0] for r in rs]):.0f} | {median([r[1] for r in rs]):.1f} | "
                     f"{sum(r[2] for r in rs)} | {median([r[3] for r in rs]):.0f} |")  # fmt: skip
    table = "\n".join(lines)
    notes = (
        f"{os.cpu_count()} cores; the load client shares them. Load average {load0:.2f} before, "
        f"{load1:.2f} after. Median of rounds; the worker counts alternate within each round."
    )
    if args.append:
        append_result("bench.workers", "Gateway workers (bench.workers)", table, notes, ("uvicorn",))
    else:
        print(f"\n{table}\n\n{notes}")


if __name__ == "__main__":
    main()
