"""Before and after, in one run: this tree's gateway against a git ref's, on the same machine, interleaved.

    python -m bench.compare REF [--reps 400] [--seconds 30] [--concurrency 1,16] [--sweep-seconds 4]
                                [--rounds 3] [--stream-only] [--no-audit] [--append]

A regression guard that is not a timed test: run it before and after every change on the hot path.
REF (a commit, a branch, `HEAD~1`) is checked out into a temporary git worktree; `localroute serve` runs
once from that tree and once from this one (each by `python -m localroute` with its own PYTHONPATH, the
same venv and the same dependencies), both with one remote rung in front of the same mock upstream
(`bench/mock_upstream.py`), the audit log on as by default.

1. Latency, one client: each round sends one JSON and one streaming request to `direct` (the mock),
   `ref` and `tree` in a shuffled order, so that a noisy neighbour hits both gateways alike. Added
   latency = the gateway's percentile minus direct's; TTFT is the first body byte of the stream.
2. CPU per request: for each `--concurrency` level, `--rounds` closed-loop sweeps alternate between
   the two gateways (ref first on even rounds, tree first on odd ones); the gateway process's CPU time
   (psutil) divided by the replies it served, and requests per second.

It prints the two sides and the ratio tree / ref for each figure (below 1: the tree is cheaper or
faster). Nothing is asserted: the numbers are for a human, with the machine's load printed beside them.
`--append` records the table in bench/RESULTS.md.

`--otel` measures what tracing costs: the `tree` gateway exports OpenTelemetry spans (OTLP/HTTP, to a
receiver in this process that keeps nothing) and the `ref` one does not; give the same commit as REF
(`HEAD`) so that tracing is the only difference.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import servers
from bench.common import append_result, median, pct
from bench.loadclient import Connection, closed_loop
from bench.overhead import MODES, Target, cpu_seconds, make_target

SIDES = ("ref", "tree")


def checkout(ref: str, where: Path) -> str:
    """A detached worktree of `ref` at `where`; returns the commit it resolved to."""
    rev = ["git", "rev-parse", "--verify", f"{ref}^{{commit}}"]
    sha = subprocess.run(rev, cwd=servers.ROOT, capture_output=True, text=True)
    if sha.returncode != 0:
        raise SystemExit(f"bench.compare: {ref!r} is not a commit here: {sha.stderr.strip()}")
    subprocess.run(
        ["git", "worktree", "add", "--detach", "--quiet", str(where), sha.stdout.strip()],
        cwd=servers.ROOT, check=True,
    )  # fmt: skip
    return sha.stdout.strip()[:10]


def otlp_sink() -> tuple[str, object]:
    """A loopback OTLP/HTTP receiver that answers 200 and drops what it gets."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Sink(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("content-length") or 0))
            self.send_response(200)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            return None

    server = ThreadingHTTPServer(("127.0.0.1", 0), Sink)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}", server


def start_gateway(
    name: str, tree: Path, mock_port: int, work: Path, audit: bool, extra: dict[str, str] | None = None
) -> servers.Child:
    """`python -m localroute serve` from `tree`, one remote rung on the mock (as bench.overhead runs it)."""
    side = work / name
    side.mkdir()
    cfg = side / "models.toml"
    cfg.write_text(servers.localroute_config(mock_port, side, audit), encoding="utf-8")
    port = servers.free_port()
    cmd = [sys.executable, "-m", "localroute", "serve", "--config", str(cfg), "--host", "127.0.0.1",
           "--port", str(port)]  # fmt: skip
    env = {
        servers.KEY_ENV: "sk-bench-mock",
        "LOCALROUTE_AUDIT_PATH": str(side / "audit.jsonl"),
        "PYTHONPATH": str(tree),
        **(extra or {}),
    }
    # `python -m` imports from its working directory before PYTHONPATH: run each side in its own tree,
    # or both sides import this one (as every bench.compare run before this fix did).
    child = servers.spawn(name, cmd, port, side, env, cwd=tree)
    servers.wait_ready(child, "/health", 60)
    return child


Latency = dict[tuple[str, str], list[list[float]]]


async def latency(targets: list[Target], reps: int, seconds: float) -> Latency:
    """(target, mode) -> [totals ms, ttfts ms], rounds shuffled, after 10 % warm-up rounds."""
    conns = {t.name: await Connection.open("127.0.0.1", t.port) for t in targets}
    out: Latency = {(t.name, m): [[], []] for t in targets for m in MODES}
    cells = [(t, m) for t in targets for m in MODES]
    rng = random.Random(1)
    t0 = time.monotonic()
    for rep in range(reps + reps // 10):
        rng.shuffle(cells)
        for t, mode in cells:
            r = await conns[t.name].request(t.payloads[mode], mode == "stream")
            if r.ok and rep >= reps // 10:
                out[(t.name, mode)][0].append((r.end - r.start) * 1000)
                out[(t.name, mode)][1].append((r.first - r.start) * 1000)
        if time.monotonic() - t0 > seconds:
            break
    for c in conns.values():
        c.close()
    return out


async def cpu_sweeps(
    targets: dict[str, Target], levels: list[int], rounds: int, seconds: float, mode: str
) -> dict[tuple[int, str], tuple[list[float], list[float], int]]:
    """(clients, side) -> ([µs CPU per reply per round], [rps per round], errors)."""
    out: dict[tuple[int, str], tuple[list[float], list[float], int]] = {}
    for clients in levels:
        for rnd in range(rounds):
            order = SIDES if rnd % 2 == 0 else SIDES[::-1]
            for side in order:
                t = targets[side]
                cpu0 = cpu_seconds(t.pid)
                res = await closed_loop(
                    "127.0.0.1", t.port, t.payloads[mode], mode == "stream", clients, seconds, 1.0, 2_000_000
                )
                cpu, rps, errors = out.setdefault((clients, side), ([], [], 0))
                if res.completed:
                    cpu.append((cpu_seconds(t.pid) - cpu0) / res.completed * 1e6)
                rps.append(res.rps)
                out[(clients, side)] = (cpu, rps, errors + res.errors)
                await asyncio.sleep(0.3)
    return out


def ratio(tree: float, ref: float) -> str:
    return f"{tree / ref:.3f}" if ref > 0 else "n/a"


def table(
    lat: Latency,
    sweeps: dict[tuple[int, str], tuple[list[float], list[float], int]],
    levels: list[int],
    mode: str,
) -> str:
    rows = ["| figure | ref | tree | tree / ref |", "|---|---|---|---|"]
    for m in MODES:
        d50 = pct(lat[("direct", m)][0], 0.5)
        d99 = pct(lat[("direct", m)][0], 0.99)
        dt = pct(lat[("direct", m)][1], 0.5)
        add = {s: (pct(lat[(s, m)][0], 0.5) - d50, pct(lat[(s, m)][0], 0.99) - d99) for s in SIDES}
        rows.append(f"| {m}: added p50 ms (n={len(lat[('tree', m)][0])}) | {add['ref'][0]:.3f} | "
                    f"{add['tree'][0]:.3f} | {ratio(add['tree'][0], add['ref'][0])} |")  # fmt: skip
        rows.append(f"| {m}: added p99 ms | {add['ref'][1]:.3f} | {add['tree'][1]:.3f} | "
                    f"{ratio(add['tree'][1], add['ref'][1])} |")  # fmt: skip
        if m == "stream":
            t = {s: pct(lat[(s, m)][1], 0.5) - dt for s in SIDES}
            rows.append(f"| stream: added TTFT p50 ms | {t['ref']:.3f} | {t['tree']:.3f} | "
                        f"{ratio(t['tree'], t['ref'])} |")  # fmt: skip
    for c in levels:
        cpu = {s: median(sweeps[(c, s)][0]) if sweeps[(c, s)][0] else float("nan") for s in SIDES}
        rps = {s: median(sweeps[(c, s)][1]) for s in SIDES}
        err = {s: sweeps[(c, s)][2] for s in SIDES}
        rows.append(f"| {mode} c={c}: gateway CPU µs/request (median of rounds) | {cpu['ref']:.0f} | "
                    f"{cpu['tree']:.0f} | {ratio(cpu['tree'], cpu['ref'])} |")  # fmt: skip
        rows.append(f"| {mode} c={c}: requests/s | {rps['ref']:.0f} | {rps['tree']:.0f} | "
                    f"{ratio(rps['tree'], rps['ref'])} |")  # fmt: skip
        rows.append(f"| {mode} c={c}: errors | {err['ref']} | {err['tree']} | |")
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("ref", help="the git ref to compare this tree against (e.g. HEAD~1, main)")
    ap.add_argument("--reps", type=int, default=400, help="latency rounds (each: JSON + stream per target)")
    ap.add_argument("--seconds", type=float, default=30.0, help="stop the latency rounds after this")
    ap.add_argument("--concurrency", default="1,16", help="comma-separated client counts for the CPU sweeps")
    ap.add_argument("--sweep-seconds", type=float, default=4.0, help="measured seconds per sweep")
    ap.add_argument("--rounds", type=int, default=3, help="alternating sweeps per side and level")
    ap.add_argument("--stream-only", action="store_true", help="sweep streams instead of JSON requests")
    ap.add_argument("--no-audit", action="store_true", help="both gateways with audit_enabled = false")
    ap.add_argument("--append", action="store_true", help="record the table in bench/RESULTS.md")
    ap.add_argument("--otel", action="store_true", help="the tree side exports traces; the ref side does not")
    args = ap.parse_args()
    levels = [int(x) for x in args.concurrency.split(",") if x.strip()]
    mode = "stream" if args.stream_only else "json"
    children: list[servers.Child] = []
    with tempfile.TemporaryDirectory(prefix="lr-compare-") as tmp:
        work = Path(tmp)
        ref_tree = work / "ref-tree"
        sha = checkout(args.ref, ref_tree)
        try:
            mock = servers.start_mock(work)
            children.append(mock)
            extra = None
            if args.otel:
                url, _sink = otlp_sink()
                extra = {"OTEL_EXPORTER_OTLP_ENDPOINT": url}
            gw = {
                "ref": start_gateway("ref", ref_tree, mock.port, work, not args.no_audit),
                "tree": start_gateway("tree", servers.ROOT, mock.port, work, not args.no_audit, extra),
            }
            children += gw.values()
            targets = {s: make_target(s, gw[s].port, None, gw[s].proc.pid) for s in SIDES}
            direct = make_target("direct", mock.port, None)
            load0 = os.getloadavg()[0]
            print(f"comparing this tree with {args.ref} ({sha}); load average {load0:.2f}", flush=True)
            lat = asyncio.run(latency([direct, *targets.values()], args.reps, args.seconds))
            sweeps = asyncio.run(cpu_sweeps(targets, levels, args.rounds, args.sweep_seconds, mode))
            load1 = os.getloadavg()[0]
        finally:
            for c in reversed(children):
                c.stop()
            drop = ["git", "worktree", "remove", "--force", str(ref_tree)]
            subprocess.run(drop, cwd=servers.ROOT, check=False)
    out = table(lat, sweeps, levels, mode)
    traced = " exporting traces (--otel)" if args.otel else ""
    notes = (
        f"ref = `{args.ref}` ({sha}), tree = the working tree{traced}; load average {load0:.2f} before, "
        f"{load1:.2f} after; both gateways in front of the same mock, requests interleaved."
    )
    if args.append:
        append_result("bench.compare", "Before/after (bench.compare)", out, notes, ("uvicorn", "starlette"))
    else:
        print(f"\n{out}\n\n{notes}")


if __name__ == "__main__":
    main()
