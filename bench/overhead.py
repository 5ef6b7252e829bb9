"""Gateway overhead: latency and throughput added by localroute, and by the LiteLLM proxy, in front of
the same deterministic OpenAI-compatible mock, measured in one run.

    python -m bench.overhead [--reps 1000] [--latency-seconds 60] [--concurrency 1,8,32,128]
                             [--sweep-seconds 5] [--warmup 1] [--mock-latency-ms 0] [--no-audit]
                             [--no-litellm] [--no-install] [--sweep-stream] [--floor]
                             [--order blocks|shuffled] [--no-append]

Three targets answer the same request bytes (model `mock-1`): the mock itself (`direct`, a raw
asyncio server on uvloop in its own process, `bench/mock_upstream.py`), `localroute serve` with one
remote rung pointed at the mock (audit log on, as by default, in a temporary folder), and the LiteLLM
proxy (`bench/litellm_env.py`: its own venv, installed on first use, one worker, offline settings).
If LiteLLM cannot be installed or started the run says why and goes on without it. `--floor` adds
a fourth, bench.floors' `raw` forwarder (uvicorn + Starlette + a raw keep-alive upstream pool, the
JSON parsed and dumped once, a stream relayed untouched): what any Python gateway on this stack adds.

1. Latency, one client, over one keep-alive connection per target, all within `--latency-seconds`:
   about `--reps` measured requests of each kind (non-streaming, streaming) per target, after a
   warm-up (`--reps`/10, 10 to 100, of each kind; in blocks, whole rounds of them). `--order blocks`
   (the default): rounds of one block of 24 requests per target, the targets shuffled each round,
   json and stream alternating, a 50 ms pause before each block and its first 4 requests unmeasured,
   so that what a target does after answering (LiteLLM logs and runs callbacks after its response)
   is not charged to the next target's requests. `--order shuffled`, the method until 2026-12-04:
   each round one request per target and kind in a shuffled order (`python -m bench.neighbour_spill`
   measured localroute's added JSON p50 at 1.40-1.57 ms with LiteLLM in that rotation, 0.78-0.83
   without it).
   Added latency = the target's percentile minus direct's. Streaming: time to the last byte
   (`[DONE]`), and TTFT (first body byte).
2. Throughput: for each `--concurrency` level and target, that many closed-loop keep-alive clients;
   after `--warmup` seconds, and once every client has had a reply (a slow server's queue has
   filled), `--sweep-seconds` are measured: requests per second, p50/p99, errors (non-200, cut
   short, connection failures, no reply), and the serving process's CPU time per reply.

The client (`bench/loadclient.py`) is one asyncio Protocol on uvloop, the same for all targets, with
TCP_NODELAY; it runs in this process, so on a small machine it competes for the CPU with the server
it measures (the `direct` column is the ceiling of client + mock). `--no-append` prints the tables
without recording them in bench/RESULTS.md. Profile the gateway with `python -m bench.profile_gateway`.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import random
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench import litellm_env, servers
from bench.common import append_result, pct
from bench.loadclient import Connection, closed_loop, request_bytes

MESSAGES = [
    {"role": "system", "content": "You are a concise assistant."},
    {
        "role": "user",
        "content": "Write a haiku about the sea at night, then explain its imagery in one sentence.",
    },
]
MODES = ("json", "stream")
GOAL_P50_MS, GOAL_P99_MS, GOAL_RATIO, GOAL_RPS = 0.5, 2.0, 10.0, 1500.0
WARMUP_REPS = 100


@dataclass
class Target:
    name: str
    port: int
    payloads: dict[str, bytes] = field(default_factory=dict)
    pid: int | None = None  # the serving process, for its CPU time per request


def make_target(name: str, port: int, token: str | None, pid: int | None = None) -> Target:
    body: dict[str, object] = {
        "model": servers.MODEL,
        "messages": MESSAGES,
        "max_tokens": 64,
        "temperature": 0.2,
    }
    stream = {**body, "stream": True, "stream_options": {"include_usage": True}}
    path = "/v1/chat/completions"
    return Target(
        name,
        port,
        {
            "json": request_bytes("127.0.0.1", port, path, body, token),
            "stream": request_bytes("127.0.0.1", port, path, stream, token),
        },
        pid,
    )


@dataclass
class Samples:
    total: list[float] = field(default_factory=list)  # ms
    ttft: list[float] = field(default_factory=list)  # ms
    errors: int = 0


BLOCK, BLOCK_SKIP = 24, 4  # --order blocks: requests per block (json and stream alternating), unmeasured
BLOCK_GAP_S = 0.05  # --order blocks: a pause before each block, for the last target's after-work
ORDERS = {  # how each order is described in the results
    "blocks": f"in blocks of {BLOCK} requests per target after a {BLOCK_GAP_S * 1000:g} ms pause, "
    f"the first {BLOCK_SKIP} of each unmeasured",
    "shuffled": "one request per target and kind per round, shuffled",
}


async def latency_phase(
    targets: list[Target], reps: int, seconds: float, order: str = "blocks"
) -> dict[tuple[str, str], Samples]:
    """`order = "blocks"`: rounds of one block per target (shuffled each round), a block being `BLOCK`
    requests to one target, json and stream alternating, its first `BLOCK_SKIP` not measured, after a
    `BLOCK_GAP_S` pause. What a target does after it has answered (LiteLLM's logging and callbacks run
    after the response) then lands on its own next request, or in the pause, not on another target's
    measured one. `order = "shuffled"` (the earlier method): each round, one request of each (target,
    mode) in a shuffled order, so a fast target's request often follows LiteLLM's and pays for it."""
    conns = {t.name: await Connection.open("127.0.0.1", t.port) for t in targets}
    out = {(t.name, m): Samples() for t in targets for m in MODES}
    rng = random.Random(0)
    warm = min(WARMUP_REPS, max(10, reps // 10))
    t0 = time.monotonic()

    async def one(t: Target, mode: str, measured: bool) -> None:
        s = out[(t.name, mode)]
        try:
            r = await conns[t.name].request(t.payloads[mode], mode == "stream")
        except OSError:
            s.errors += 1
            conns[t.name] = await Connection.open("127.0.0.1", t.port)
            return
        if not r.ok:
            s.errors += 1
        elif measured:
            s.total.append((r.end - r.start) * 1000)
            s.ttft.append((r.first - r.start) * 1000)

    if order == "shuffled":
        cells = [(t, m) for t in targets for m in MODES]
        for rep in range(warm + reps):
            measured = rep >= warm
            if not measured and time.monotonic() - t0 > seconds * 0.15:
                continue  # a slow machine: the warm-up may take at most 15 % of the time
            rng.shuffle(cells)
            for t, mode in cells:
                await one(t, mode, measured)
            if measured and time.monotonic() - t0 > seconds:
                break
    else:
        order_ = list(targets)
        per_block = (BLOCK - BLOCK_SKIP) // len(MODES)  # measured requests of each kind per block
        warm_rounds = -(-warm // per_block)
        for rnd in range(warm_rounds + -(-reps // per_block)):
            measured = rnd >= warm_rounds
            if not measured and time.monotonic() - t0 > seconds * 0.15:
                continue
            rng.shuffle(order_)
            for t in order_:
                await asyncio.sleep(BLOCK_GAP_S)
                for i in range(BLOCK):
                    await one(t, MODES[i % len(MODES)], measured and i >= BLOCK_SKIP)
            if measured and time.monotonic() - t0 > seconds:
                break
    for c in conns.values():
        c.close()
    return out


@dataclass
class Cell:
    rps: float
    p50: float
    p99: float
    errors: int
    cpu_us: float  # the target's process CPU time per reply, warm-up included


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU time of a process and its children (0 when unknown)."""
    if pid is None:
        return 0.0
    import psutil

    try:
        procs = [psutil.Process(pid)]
        procs += procs[0].children(recursive=True)
    except psutil.Error:
        return 0.0
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
        except psutil.Error:
            continue
        total += t.user + t.system
    return total


async def sweep_phase(
    targets: list[Target], levels: list[int], seconds: float, warmup: float, mode: str
) -> dict[tuple[int, str], Cell]:
    out: dict[tuple[int, str], Cell] = {}
    for i, clients in enumerate(levels):
        order = targets[i % len(targets) :] + targets[: i % len(targets)]  # who goes first rotates
        for t in order:
            cpu0 = cpu_seconds(t.pid)
            res = await closed_loop(
                "127.0.0.1", t.port, t.payloads[mode], mode == "stream", clients, seconds, warmup, 2_000_000
            )
            cpu_us = (
                (cpu_seconds(t.pid) - cpu0) / res.completed * 1e6 if res.completed and t.pid else float("nan")
            )
            lat = [(r.end - r.start) * 1000 for r in res.replies]
            nan = float("nan")
            x = Cell(
                res.rps, pct(lat, 0.5) if lat else nan, pct(lat, 0.99) if lat else nan, res.errors, cpu_us
            )
            out[(clients, t.name)] = x
            print(
                f"  {mode} c={clients} {t.name}: {x.rps:.0f} rps, p99 {ms(x.p99)} ms, {x.errors} errors, "
                f"{x.cpu_us:.0f} µs CPU/req"
            )
            gc.collect()
            await asyncio.sleep(0.3)
    return out


def ms(x: float) -> str:
    return "n/a" if x != x else (f"{x:.3f}" if abs(x) < 10 else f"{x:.1f}")


def latency_table(lat: dict[tuple[str, str], Samples], names: list[str]) -> tuple[str, dict[str, float]]:
    """The single-client table, and the numbers the goals are judged on."""
    cols = ("mode", "target", "n", "p50 ms", "p99 ms", "added p50 ms", "added p99 ms", "TTFT p50 ms",
            "added TTFT p50 ms", "errors")  # fmt: skip
    rows = ["| " + " | ".join(cols) + " |", "|---" * len(cols) + "|"]
    facts: dict[str, float] = {}
    for mode in MODES:
        d = lat[("direct", mode)]
        d50, d99, dt = pct(d.total, 0.5), pct(d.total, 0.99), pct(d.ttft, 0.5)
        for name in names:
            s = lat[(name, mode)]
            if not s.total:
                rows.append(f"| {mode} | {name} | 0 | | | | | | | {s.errors} |")
                continue
            p50, p99, t50 = pct(s.total, 0.5), pct(s.total, 0.99), pct(s.ttft, 0.5)
            add = name != "direct"
            ttft = ms(t50) if mode == "stream" else ""
            add_ttft = ms(t50 - dt) if mode == "stream" and add else ""
            added = (ms(p50 - d50), ms(p99 - d99)) if add else ("", "")
            cells = (mode, name, str(len(s.total)), ms(p50), ms(p99), *added, ttft, add_ttft, str(s.errors))
            rows.append("| " + " | ".join(cells) + " |")
            facts[f"{name}.{mode}.add50"] = p50 - d50
            facts[f"{name}.{mode}.add99"] = p99 - d99
            facts[f"{name}.{mode}.errors"] = s.errors
    return "\n".join(rows), facts


def sweep_table(cells: dict[tuple[int, str], Cell], levels: list[int], names: list[str], mode: str) -> str:
    rows = [
        f"Throughput, {mode}, closed loop (CPU: the serving process's own time per reply):",
        "",
        "| clients | target | rps | p50 ms | p99 ms | errors | CPU µs/req |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in levels:
        for n in names:
            x = cells[(c, n)]
            cpu = "n/a" if x.cpu_us != x.cpu_us else f"{x.cpu_us:.0f}"
            rows.append(f"| {c} | {n} | {x.rps:.0f} | {ms(x.p50)} | {ms(x.p99)} | {x.errors} | {cpu} |")
    return "\n".join(rows)


def goals(
    facts: dict[str, float], cells: dict[tuple[int, str], Cell], levels: list[int], litellm: bool
) -> str:
    def mark(ok: bool) -> str:
        return "met" if ok else "NOT met"

    add50 = max(facts["localroute.json.add50"], facts["localroute.stream.add50"])
    add99 = max(facts["localroute.json.add99"], facts["localroute.stream.add99"])
    lr_cells = [cells[(c, "localroute")] for c in levels]
    peak = max(x.rps for x in lr_cells)
    errors = sum(x.errors for x in lr_cells)
    out = [
        f"- added p50 ≤ {GOAL_P50_MS} ms (json/stream, worse): {ms(add50)} ms, {mark(add50 <= GOAL_P50_MS)}",
        f"- added p99 ≤ {GOAL_P99_MS} ms (json/stream, worse): {ms(add99)} ms, {mark(add99 <= GOAL_P99_MS)}",
    ]
    if litellm:
        rs = []
        for mode in MODES:
            lr, ll = facts[f"localroute.{mode}.add50"], facts[f"litellm.{mode}.add50"]
            rs.append(ll / lr if lr > 0 else float("inf"))
        worst = min(rs)
        out.append(
            f"- overhead ≥ {GOAL_RATIO:g}x lower than LiteLLM (added p50, json / stream): "
            f"{rs[0]:.1f}x / {rs[1]:.1f}x, {mark(worst >= GOAL_RATIO)}"
        )
        cpu = [cells[(c, "litellm")].cpu_us / cells[(c, "localroute")].cpu_us for c in levels]
        out.append(
            f"  (the same in gateway CPU time per request, which a busy machine distorts less: "
            f"{min(cpu):.1f}x to {max(cpu):.1f}x over {', '.join(map(str, levels))} clients)"
        )
    else:
        out.append(f"- overhead ≥ {GOAL_RATIO:g}x lower than LiteLLM: not measured (no LiteLLM)")
    if "raw.json.add50" in facts:
        floor = [facts[f"raw.{m}.add50"] for m in MODES]
        own = [facts[f"localroute.{m}.add50"] - f for m, f in zip(MODES, floor, strict=True)]
        line = (
            f"- the latency floor (bench.floors' `raw`: uvicorn + Starlette, a raw upstream pool, "
            f"no other work) adds {ms(floor[0])} / {ms(floor[1])} ms p50 (json / stream); "
            f"localroute adds {ms(own[0])} / {ms(own[1])} ms beyond it"
        )
        if litellm:
            allow = [facts[f"litellm.{m}.add50"] / GOAL_RATIO - f for m, f in zip(MODES, floor, strict=True)]
            line += f"; the LiteLLM goal leaves {ms(allow[0])} / {ms(allow[1])} ms beyond it"
        out.append(line)
    out.append(
        f"- ≥ {GOAL_RPS:,.0f} rps with 0 errors: peak {peak:,.0f} rps, {errors} errors over all levels, "
        f"{mark(peak >= GOAL_RPS and errors == 0)}"
    )
    return "\n".join(out)


def start_targets(
    args: argparse.Namespace, work: Path, children: list[servers.Child]
) -> tuple[list[Target], str]:
    """Start mock, localroute and (if it can be had) LiteLLM; returns the targets and a line on LiteLLM."""
    mock = servers.start_mock(work, args.mock_latency_ms)
    children.append(mock)
    lr = servers.start_localroute(mock.port, work, audit=not args.no_audit)
    children.append(lr)
    floor: list[Target] = []
    if args.floor:
        from bench.floors import start_floor  # bench.floors imports this module

        raw = start_floor("raw", mock.port, work)
        children.append(raw)
        floor.append(make_target("raw", raw.port, None, raw.proc.pid))
    if args.no_litellm:
        direct, local = (
            make_target("direct", mock.port, None, mock.proc.pid),
            make_target("localroute", lr.port, None, lr.proc.pid),
        )
        return [direct, *floor, local], "LiteLLM: skipped (--no-litellm)."
    venv = litellm_env.venv_dir()
    exe, info = litellm_env.ensure_installed(venv, args.litellm_spec, work, install=not args.no_install)
    ll, token, why = (None, None, info) if exe is None else litellm_env.start(exe, mock.port, work)
    targets = [
        make_target("direct", mock.port, token, mock.proc.pid),
        *floor,
        make_target("localroute", lr.port, token, lr.proc.pid),
    ]
    if ll is None:
        return targets, f"LiteLLM: not measured: {why}"
    children.append(ll)
    targets.append(make_target("litellm", ll.port, token, ll.proc.pid))
    return targets, (
        f"LiteLLM {info} (proxy, 1 uvicorn worker, no database, LITELLM_LOG=ERROR, bundled cost map)."
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--reps", type=int, default=1000, help="single-client rounds (each: 2 requests per target)"
    )
    ap.add_argument("--latency-seconds", type=float, default=60.0, help="stop the latency rounds after this")
    ap.add_argument("--concurrency", default="1,8,32,128", help="comma-separated client counts")
    ap.add_argument(
        "--order",
        choices=("blocks", "shuffled"),
        default="blocks",
        help="see latency_phase",
    )
    ap.add_argument("--sweep-seconds", type=float, default=5.0, help="measured seconds per sweep cell")
    ap.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds before each sweep cell")
    ap.add_argument("--sweep-stream", action="store_true", help="also sweep streaming requests")
    ap.add_argument("--mock-latency-ms", type=float, default=0.0, help="upstream delay before its first byte")
    ap.add_argument("--no-audit", action="store_true", help="run localroute with audit_enabled = false")
    ap.add_argument("--no-litellm", action="store_true", help="skip the LiteLLM column")
    ap.add_argument("--floor", action="store_true", help="add bench.floors' `raw` forwarder: a latency floor")
    ap.add_argument("--no-install", action="store_true", help="do not pip-install LiteLLM when missing")
    ap.add_argument("--litellm-spec", default=litellm_env.SPEC, help="what to pip-install for LiteLLM")
    ap.add_argument("--no-append", action="store_true", help="print only; do not append to bench/RESULTS.md")
    args = ap.parse_args()
    levels = [int(x) for x in args.concurrency.split(",") if x.strip()]
    try:
        import uvloop
    except ImportError:  # without it the numbers would be the client's, not the servers'
        raise SystemExit("bench.overhead needs uvloop: pip install uvloop") from None

    load0 = os.getloadavg()[0]
    children: list[servers.Child] = []
    with tempfile.TemporaryDirectory(prefix="localroute-overhead-") as tmp:
        try:
            targets, litellm_line = start_targets(args, Path(tmp), children)
            names = [t.name for t in targets]
            print(litellm_line)
            print(
                f"targets up: {', '.join(f'{t.name}:{t.port}' for t in targets)}; load {load0:.2f}",
                flush=True,
            )
            gc.collect()
            gc.disable()  # the client's own collections would land on whichever target is in flight
            try:
                lat = uvloop.run(latency_phase(targets, args.reps, args.latency_seconds, args.order))
                lat_table, facts = latency_table(lat, names)
                print("\nSingle client:\n\n" + lat_table + "\n", flush=True)
                modes = ["json", "stream"] if args.sweep_stream else ["json"]
                sweeps = {
                    m: uvloop.run(sweep_phase(targets, levels, args.sweep_seconds, args.warmup, m))
                    for m in modes
                }
            finally:
                gc.enable()
            dead = [c.name for c in children if c.proc.poll() is not None]
            if dead:
                raise RuntimeError(f"{', '.join(dead)} exited during the run")
        finally:
            for c in reversed(children):
                c.stop()

    load1 = os.getloadavg()[0]
    table = (
        f"Single client, one keep-alive connection per target, interleaved ({ORDERS[args.order]}):\n\n"
        + lat_table
        + "\n\n"
        + "\n\n".join(sweep_table(sweeps[m], levels, names, m) for m in sweeps)
    )
    busy = " (other processes were busy: treat the numbers as noisy)" if max(load0, load1) > 1.0 else ""
    notes = (
        "Goals (issue 7), judged on localroute:\n\n"
        f"{goals(facts, sweeps['json'], levels, 'litellm' in names)}"
        f"\n\n{litellm_line} localroute: one remote rung to the mock, audit log "
        f"{'off' if args.no_audit else 'on'}, privacy default public. Mock upstream latency "
        f"{args.mock_latency_ms:g} ms. Client, mock and gateways share {os.cpu_count()} cores; load average "
        f"{load0:.2f} before, {load1:.2f} after{busy}. Where localroute's time goes, and what to cut: "
        "docs/bench-overhead.md (`bench.profile_gateway`, `bench.cprofile_gateway`, `bench.floors`)."
    )
    print()
    if args.no_append:
        print(table + "\n\n" + notes)
    else:
        append_result(
            "bench.overhead", "Gateway overhead (localroute vs LiteLLM, loopback mock)", table, notes,
            ("localroute", "starlette", "uvicorn", "httpx", "uvloop"),
        )  # fmt: skip


if __name__ == "__main__":
    main()
