"""Whose CPU is it: the gateway's CPU per request split by thread (event loop vs helper threads).

    python -m bench.gateway_threads [--seconds 6] [--clients 1,16] [--rounds 2]

`localroute serve` in front of the mock (bench.servers), once with the feedback store on (default) and
once off, sweeps alternated; each thread's user + system time (psutil, /proc/<pid>/task) before and
after a closed-loop sweep, divided by the replies. The event loop is the thread whose id is the
process id; the others are the feedback writer, the OpenTelemetry exporter (when on), uvicorn's
and anyio's pools. It answers why the store costs more in the server than `FeedbackStore.remember`
does in-process: the writer thread's own CPU, plus what the event loop pays for it.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from bench import servers
from bench.common import median
from bench.loadclient import closed_loop
from bench.overhead import make_target


def threads_cpu(pid: int) -> dict[int, float]:
    import psutil

    return {t.id: t.user_time + t.system_time for t in psutil.Process(pid).threads()}


def sweep(port: int, pid: int, clients: int, seconds: float) -> tuple[float, float, int, int]:
    """(event loop µs/request, other threads µs/request, busiest other thread's share, replies)."""
    import uvloop

    target = make_target("x", port, None, pid)
    before = threads_cpu(pid)
    res = uvloop.run(
        closed_loop("127.0.0.1", port, target.payloads["json"], False, clients, seconds, 1.0, 10**7)
    )
    after = threads_cpu(pid)
    n = max(res.completed, 1)
    delta = {tid: after[tid] - before.get(tid, 0.0) for tid in after}
    loop = delta.pop(pid, 0.0)
    others = sum(delta.values())
    busiest = max(delta.values(), default=0.0)
    return loop / n * 1e6, others / n * 1e6, int(busiest / n * 1e6), res.completed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--clients", default="1,16")
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    levels = [int(c) for c in args.clients.split(",")]
    rows = [
        "| clients | feedback store | event loop µs/req | other threads µs/req | busiest other | total |",
        "|---|---|---|---|---|---|",
    ]
    load0 = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="localroute-threads-") as tmp:
        work = Path(tmp)
        mock = servers.start_mock(work)
        gws: dict[bool, servers.Child] = {}
        try:
            for fb in (True, False):
                side = work / f"fb-{fb}"
                side.mkdir()
                gws[fb] = servers.start_localroute(mock.port, side, audit=True, feedback=fb)
            for c in levels:
                got: dict[bool, list[tuple[float, float, int, int]]] = {True: [], False: []}
                for rnd in range(args.rounds):
                    for fb in (True, False) if rnd % 2 == 0 else (False, True):
                        g = gws[fb]
                        got[fb].append(sweep(g.port, g.proc.pid, c, args.seconds))
                for fb in (True, False):
                    loop = median([r[0] for r in got[fb]])
                    other = median([r[1] for r in got[fb]])
                    busiest = median([float(r[2]) for r in got[fb]])
                    rows.append(f"| {c} | {'on' if fb else 'off'} | {loop:.0f} | {other:.0f} | "
                                f"{busiest:.0f} | {loop + other:.0f} |")  # fmt: skip
        finally:
            for g in gws.values():
                g.stop()
            mock.stop()
    print("\n".join(rows))
    load1 = os.getloadavg()[0]
    print(f"\nload average {load0:.2f} before, {load1:.2f} after; medians of {args.rounds} rounds")


if __name__ == "__main__":
    main()
