"""What one hop between processes costs on this machine: the floor under the router's added TTFT.

    python -m bench.wake_floor [--samples 200] [--gap 0.02]

A first token through the router crosses six wakeups that raw llama-cpp-python does not: client →
gateway (TCP), gateway → worker (Unix socket), worker loop → decode thread, decode thread → worker loop,
worker → gateway (Unix socket), gateway → client (TCP). This measures one such wakeup alone: a parent
writes a `time.monotonic()` stamp to a child blocked in a read on a Unix socket pair, after an idle
`--gap`; the child reports when it woke. It runs twice: on an otherwise idle pair of cores, and while
two other processes spin, one per core (as llama.cpp's two threads do while they decode the next token, right
when the first token is on its way out).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import socket
import time
from multiprocessing.connection import Connection
from typing import Any

from bench.common import median, pct


def _echo(sock: socket.socket, out: Connection) -> None:
    lags = []
    while True:
        data = sock.recv(64)
        now = time.monotonic()
        if not data or data == b"end":
            break
        lags.append(now - float(data))
    out.send(lags)


def _spin(stop: Any) -> None:
    while not stop.is_set():
        sum(range(1000))


def one_way(samples: int, gap: float) -> list[float]:
    a, b = socket.socketpair()
    recv, send = mp.Pipe(duplex=False)
    child = mp.Process(target=_echo, args=(b, send))
    child.start()
    for _ in range(samples):
        time.sleep(gap)
        a.send(f"{time.monotonic():.9f}".encode())
    time.sleep(gap)
    a.send(b"end")
    lags: list[float] = recv.recv()
    child.join()
    return lags


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--samples", type=int, default=200)
    ap.add_argument("--gap", type=float, default=0.02)
    args = ap.parse_args()
    load = os.getloadavg()[0]
    quiet = one_way(args.samples, args.gap)
    stop = mp.Event()
    spinners = [mp.Process(target=_spin, args=(stop,)) for _ in range(2)]  # one per core, no shared GIL
    for p in spinners:
        p.start()
    time.sleep(0.2)
    busy = one_way(args.samples, args.gap)
    stop.set()
    for p in spinners:
        p.join()
    print("| condition | one-way wakeup p50 ms | p90 ms | p99 ms |\n|---|---|---|---|")
    for name, xs in (("cores otherwise idle", quiet), ("two processes spinning (one per core)", busy)):
        ms = [x * 1e3 for x in xs]
        print(f"| {name} | {median(ms):.3f} | {pct(ms, 0.9):.3f} | {pct(ms, 0.99):.3f} |")
    print(
        f"\n{args.samples} samples each, {args.gap:g} s idle before each; load average {load:.2f} at start."
    )


if __name__ == "__main__":
    main()
