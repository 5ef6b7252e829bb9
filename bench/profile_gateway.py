"""Where a request's time goes inside localroute: py-spy samples of `localroute serve` under load.

    python -m bench.profile_gateway [--seconds 15] [--clients 16] [--mode json|stream] [--rate 200]
                                    [--no-audit] [--out gateway-profile.txt]

Starts the mock upstream and `localroute serve` as `bench.overhead` does, drives `--clients`
closed-loop clients at it, and samples the gateway with `py-spy record --nonblocking` (it needs
ptrace: root, or CAP_SYS_PTRACE). The gateway's CPU time per request comes from its own process
counters (psutil), so it holds on a busy machine better than latency does. Printed:

- inclusive: share of the gateway's busy samples with a function on the stack (localroute frames,
  and the libraries it calls), and that share of the CPU time per request in µs;
- exclusive: every sample charged once, to the deepest localroute frame and the library it was in
  below it (`Gateway._record -> json`), or to the server/framework layer when no localroute frame
  is on the stack.

The raw collapsed stacks are written to `--out` (flamegraph.pl or speedscope read them).
"""

from __future__ import annotations

import argparse
import collections
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import servers
from bench.loadclient import closed_loop
from bench.overhead import make_target

FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::\d+)?\)$")
ENTRY = ("localroute/cli.py", "localroute/__main__.py")  # the process's entry: not request code
LIB_NAMES = {"_asyncio": "asyncio", "asyncio": "asyncio", "uvloop": "uvloop"}


def parse_frame(frame: str) -> tuple[str, str]:
    """(function, file) of one py-spy frame `func (path/file.py:123)`."""
    m = FRAME.match(frame.strip())
    return (m["func"], m["file"]) if m else (frame.strip(), "")


def package(file: str) -> str:
    """The top-level package of a frame's file as py-spy prints it (`httpx/_client.py` -> httpx)."""
    if "site-packages/" in file:
        file = file.rsplit("site-packages/", 1)[1]
    head = file.split("/", 1)[0].removesuffix(".py")
    if file.startswith("<") or "/lib/python3" in file:
        return "stdlib"
    return LIB_NAMES.get(head, head or "?")


def load_stacks(path: Path) -> list[tuple[list[tuple[str, str]], int]]:
    out = []
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        out.append(([parse_frame(f) for f in stack.split(";") if f], int(count)))
    return out


Counts = dict[str, int]


def breakdown(stacks: list[tuple[list[tuple[str, str]], int]]) -> tuple[int, Counts, Counts, Counts]:
    """(total samples, counts by stage, inclusive counts by function, exclusive counts by component)."""
    total = 0
    stages: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    exclusive: collections.Counter[str] = collections.Counter()
    for frames, n in stacks:
        total += n
        stages[stage(frames)] += n
        seen = set()
        for func, file in frames:
            key = func if file.startswith("localroute/") else f"[{package(file)}]"
            if key not in seen:
                seen.add(key)
                inclusive[key] += n
        idx = [
            i for i, (_, file) in enumerate(frames) if file.startswith("localroute/") and file not in ENTRY
        ]
        if idx:
            i = idx[-1]
            below = frames[i + 1 :]
            lib = package(below[0][1]) if below else ""
            exclusive[frames[i][0] + (f" -> {lib}" if lib else " (self)")] += n
        else:  # no request code on the stack: the server, the framework, the loop
            libs = [package(file) for _, file in frames]
            layer = next((lib for lib in ("starlette", "uvicorn", "httptools", "anyio") if lib in libs), None)
            exclusive[f"[{layer or (libs[-1] if libs else '?')}] outside request code"] += n
    return total, stages, inclusive, exclusive


# Stages of a request, by the function that enters them. A sample is charged to the deepest entry on
# its stack of the strongest kind present: localroute's own entries (and logging/metrics under them)
# first, then the HTTP client/response-send layers, then server and framework, then the loop itself.
# Functions not listed inherit their caller's stage, so a helper (Detector.scan) counts for whoever
# called it (classify, or the egress guard).
LOCAL_STAGES: tuple[tuple[str, str], ...] = (
    ("Gateway.chat", "Gateway.chat glue (ids, headers, response objects)"),
    ("_guarded", "Gateway.chat glue (ids, headers, response objects)"),
    ("create_app.<locals>.route", "Gateway.chat glue (ids, headers, response objects)"),
    ("parse_hints", "Gateway.chat glue (ids, headers, response objects)"),
    ("read_body", "read request body"),
    ("parse_chat_request", "parse + validate request (json + pydantic)"),
    ("Gateway.classify", "privacy classify (model_dump + PII scan)"),
    ("Router.decide", "routing decision (policy, backend health)"),
    ("Router.unavailable", "routing decision (policy, backend health)"),
    ("Router.cold", "routing decision (policy, backend health)"),
    ("Router._body", "engine body (model_dump)"),
    ("EgressGuard", "egress guard (PII re-scan of the outgoing body)"),
    ("Router.", "router bookkeeping (trace, attempts, answer)"),
    ("Trace.", "router bookkeeping (trace, attempts, answer)"),
    ("RemoteBackend._send", "upstream HTTP client (httpx/httpcore/anyio/h11)"),
    ("RemoteBackend._complete_once", "upstream HTTP client (httpx/httpcore/anyio/h11)"),
    ("RemoteBackend._open_stream", "upstream HTTP client (httpx/httpcore/anyio/h11)"),
    ("RemoteBackend._next_chunk", "upstream HTTP client (httpx/httpcore/anyio/h11)"),
    ("_json", "upstream JSON decode"),
    ("RemoteBackend.", "remote backend wrapper (deadline, retry loop, body copy)"),
    ("Gateway._record", "request record (cost, stats window, record dict)"),
    ("AuditLog.append", "audit append (canonical JSON, sha256, write + flush)"),
    ("Metrics.", "metrics (prometheus_client)"),
    ("encode", "SSE encode (json.dumps per chunk)"),
)
LIB_OVERRIDE = {
    "logging": "request log line (logging, JSON formatter)",
    "prometheus_client": "metrics (prometheus_client)",
}
SEND = (
    "Response.__call__",
    "StreamingResponse.__call__",
    "RequestResponseCycle.send",
    "StreamingResponse.stream_response",
)
LIB_FALLBACK = {
    "httpx": "upstream HTTP client (httpx/httpcore/anyio/h11)",
    "httpcore": "upstream HTTP client (httpx/httpcore/anyio/h11)",
    "h11": "upstream HTTP client (httpx/httpcore/anyio/h11)",
    "uvicorn": "HTTP server (uvicorn + httptools: parse, ASGI glue)",
    "httptools": "HTTP server (uvicorn + httptools: parse, ASGI glue)",
    "starlette": "framework (starlette routing, middleware, request)",
    "anyio": "upstream HTTP client (httpx/httpcore/anyio/h11)",
}
WEAK = {"anyio", "starlette", "uvicorn", "httptools"}  # below the others: they sit above every request


def stage(frames: list[tuple[str, str]]) -> str:
    """The stage one sample is charged to (see LOCAL_STAGES)."""
    best: dict[int, str] = {}
    for func, file in frames:  # root to leaf: a deeper entry of the same kind wins
        pkg = package(file)
        if file.startswith("localroute/"):
            if file in ENTRY:
                continue
            hit = next((name for prefix, name in LOCAL_STAGES if func.startswith(prefix)), None)
            if hit is None and func.endswith(".__call__"):  # an ASGI middleware of localroute's own
                hit = f"localroute middleware ({func.removesuffix('.__call__')})"
            best[3] = hit or best.get(3) or f"localroute, other ({func})"
        elif pkg in LIB_OVERRIDE and 3 in best:
            best[3] = LIB_OVERRIDE[pkg]
        elif func in SEND or pkg in LIB_FALLBACK:
            if best.get(3, "").startswith("localroute middleware"):
                del best[3]  # the middleware has handed the request on: what runs below is not its cost
            if func in SEND:
                best[2] = "response send (starlette Response -> uvicorn -> socket)"
            else:
                best[1 if pkg in WEAK else 2] = LIB_FALLBACK[pkg]
    for kind in (3, 2, 1):
        if kind in best:
            return best[kind]
    return "event loop (uvloop, C) and other"


def report(total: int, counts: dict[str, int], us_per_req: float, top: int, title: str) -> str:
    rows = [f"| {title} | share | µs/request |", "|---|---|---|"]
    for key, n in sorted(counts.items(), key=lambda kv: -kv[1])[:top]:
        share = n / total if total else 0.0
        rows.append(f"| {key} | {share:.1%} | {share * us_per_req:.0f} |")
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=15.0, help="seconds sampled under load")
    ap.add_argument("--clients", type=int, default=16, help="closed-loop clients")
    ap.add_argument("--mode", choices=("json", "stream"), default="json")
    ap.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    ap.add_argument("--no-audit", action="store_true", help="run localroute with audit_enabled = false")
    ap.add_argument("--top", type=int, default=30, help="rows per table")
    ap.add_argument("--out", type=Path, default=Path("gateway-profile.txt"), help="collapsed stacks go here")
    ap.add_argument("--analyze", type=Path, help="only print the tables for an existing stacks file")
    args = ap.parse_args()
    if args.analyze:
        total, stages, inclusive, exclusive = breakdown(load_stacks(args.analyze))
        print(report(total, stages, 0.0, args.top, "stage (each sample once)"))
        print()
        print(report(total, exclusive, 0.0, args.top, "exclusive: deepest localroute frame -> library"))
        return
    import psutil
    import uvloop

    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(spy).exists():
        raise SystemExit("bench.profile_gateway needs py-spy: pip install py-spy")
    children: list[servers.Child] = []
    with tempfile.TemporaryDirectory(prefix="localroute-profile-") as tmp:
        work = Path(tmp)
        try:
            mock = servers.start_mock(work)
            children.append(mock)
            lr = servers.start_localroute(mock.port, work, audit=not args.no_audit)
            children.append(lr)
            target = make_target("localroute", lr.port, None)
            # Warm the gateway (connections, caches) before sampling.
            payload, stream = target.payloads[args.mode], args.mode == "stream"
            uvloop.run(closed_loop("127.0.0.1", lr.port, payload, stream, args.clients, 1.0, 0.0, 10**7))
            proc = psutil.Process(lr.proc.pid)
            spy_cmd = [spy, "record", "--pid", str(lr.proc.pid), "--rate", str(args.rate), "--nonblocking",
                       "--format", "raw", "--output", str(args.out),
                       "--duration", str(int(args.seconds + 1))]  # fmt: skip
            sampler = subprocess.Popen(spy_cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            time.sleep(0.5)  # py-spy attaches
            cpu0 = proc.cpu_times()
            res = uvloop.run(
                closed_loop("127.0.0.1", lr.port, payload, stream, args.clients, args.seconds, 0, 10**7)
            )
            cpu1 = proc.cpu_times()
            spy_out = sampler.communicate(timeout=60)[0].decode(errors="replace")
        finally:
            for c in reversed(children):
                c.stop()
    if sampler.returncode != 0 or not args.out.exists():
        raise SystemExit(f"py-spy failed ({sampler.returncode}):\n{spy_out[-1000:]}")
    served = res.completed
    cpu_s = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
    us_per_req = cpu_s / served * 1e6 if served else 0.0
    total, stages, inclusive, exclusive = breakdown(load_stacks(args.out))
    print(
        f"localroute, {args.mode}, {args.clients} clients, {args.seconds:g} s: {res.rps:.0f} rps, "
        f"{res.errors} errors; gateway CPU {cpu_s:.2f} s = {us_per_req:.0f} µs/request "
        f"(user {cpu1.user - cpu0.user:.2f} s, system {cpu1.system - cpu0.system:.2f} s); "
        f"{total} busy samples; stacks in {args.out}\n"
    )
    print(report(total, stages, us_per_req, args.top, "stage (each sample once)"))
    print()
    print(report(total, exclusive, us_per_req, args.top, "exclusive: deepest localroute frame -> library"))
    print()
    print(report(total, inclusive, us_per_req, args.top, "inclusive: function or library on the stack"))


if __name__ == "__main__":
    main()
