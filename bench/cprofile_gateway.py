"""CPU time and Python calls per request inside localroute, by stage: cProfile in the gateway process.

    python -m bench.cprofile_gateway [--seconds 10] [--clients 8] [--mode json|stream] [--no-audit]
                                     [--no-feedback] [--out gateway.pstats]

Where `bench.profile_gateway` samples (and so counts a thread that waits for a CPU as busy: on a
loaded machine, socket writes look expensive), this runs `localroute serve` under cProfile with a
CPU-time clock, switched on for the measured window only (SIGUSR1 / SIGUSR2). Deterministic
profiling slows Python calls about 1.5-3x, so read the times as shares; the call counts are exact
and machine-independent. Printed: inclusive CPU µs per request of each stage's entry function
(nested as they call each other; a coroutine's time counts only while it runs), and Python function
calls per request by package. `--out` keeps the pstats file (snakeviz, `python -m pstats`).

Only the event loop's thread is profiled, but the clock is the process's: a helper thread's CPU
(the feedback writer) is charged to whatever the loop was doing while it ran, mostly the calls that
release the GIL (socket and file writes, `os.urandom`). `--no-feedback` gives the clean picture;
`python -m bench.gateway_threads` measures the threads apart.
"""

from __future__ import annotations

import argparse
import os
import pstats
import signal
import sys
import tempfile
import time
from pathlib import Path

from bench import servers
from bench.loadclient import closed_loop
from bench.overhead import make_target

WRAPPER = """
import cProfile, signal, sys, time
out = sys.argv[1]
sys.argv = ["localroute", *sys.argv[2:]]
prof = cProfile.Profile(time.process_time)
def start(*_): prof.enable()
def stop(*_):
    prof.disable()
    prof.dump_stats(out)
signal.signal(signal.SIGUSR1, start)
signal.signal(signal.SIGUSR2, stop)
from localroute.cli import main
sys.exit(main())
"""
# (label, file the function is defined in, its name): inclusive CPU per request, in call order.
ENTRIES: tuple[tuple[str, str, str], ...] = (
    ("Guard (middleware: header size, API key, rate limit)", "localroute/gateway/security.py", "__call__"),
    ("  Guard.check", "localroute/gateway/security.py", "check"),
    ("Gateway.chat (the handler, all of it)", "localroute/gateway/handlers.py", "chat"),
    ("  read_body", "localroute/gateway/body.py", "read_body"),
    ("  parse_chat_request (json + pydantic)", "localroute/protocol/chat.py", "parse_chat_request"),
    ("  Gateway.serve", "localroute/gateway/handlers.py", "serve"),
    ("    Gateway.classify (model_dump + PII scan)", "localroute/gateway/handlers.py", "classify"),
    ("    tracing.start_request", "localroute/observe/tracing.py", "start_request"),
    ("    Billing.admit", "localroute/gateway/budget.py", "admit"),
    ("    Router.complete", "localroute/routing/router.py", "complete"),
    ("    Router.stream (until the first chunk)", "localroute/routing/router.py", "stream"),
    ("      Router.decide (policy, backend health)", "localroute/routing/router.py", "decide"),
    ("        Policy.features (keyword signals)", "localroute/routing/policy.py", "features"),
    ("      Router._body (engine_body: model_dump)", "localroute/routing/router.py", "_body"),
    ("      RemoteBackend.complete", "localroute/rungs/remote.py", "complete"),
    ("        EgressGuard (PII re-scan)", "localroute/privacy/guard.py", "__call__"),
    ("        RemoteBackend._send (build, send, read)", "localroute/rungs/remote.py", "_send"),
    ("        remote _json (upstream JSON decode)", "localroute/rungs/remote.py", "_json"),
    ("    Recorder.record (per-request record)", "localroute/gateway/record.py", "record"),
    ("      Metrics.observe", "localroute/observe/metrics.py", "observe"),
    ("      Logger.info (request log line)", "logging/__init__.py", "info"),
    ("        JSONFormatter.format", "localroute/observe/logs.py", "format"),
    ("      AuditLog.append", "localroute/privacy/audit.py", "append"),
    ("    Billing.charge", "localroute/gateway/budget.py", "charge"),
    ("    Learning.answered (queue the feedback row)", "localroute/gateway/learn.py", "answered"),
    ("stream relay: Gateway.chat events() (the whole relay)", "localroute/gateway/handlers.py", "events"),
    (
        "  RemoteBackend.stream (open + per chunk: deadline, next chunk)",
        "localroute/rungs/remote.py",
        "stream",
    ),
    ("stream relay: sse.encode (json.dumps per chunk)", "localroute/protocol/sse.py", "encode"),
    ("JSONResponse.render (json.dumps)", "starlette/responses.py", "render"),
    ("uvicorn: HttpToolsProtocol.data_received", "uvicorn/protocols/http/httptools_impl.py", "data_received"),
    ("uvicorn: RequestResponseCycle.send", "uvicorn/protocols/http/httptools_impl.py", "send"),
)
GROUPS = (
    ("httpx + httpcore + anyio + h11 + sniffio", ("httpx/", "httpcore/", "anyio/", "h11/", "sniffio/")),
    ("localroute", ("localroute/",)),
    ("starlette", ("starlette/",)),
    ("uvicorn", ("uvicorn/",)),
    ("pydantic", ("pydantic/", "pydantic_core/")),
    ("logging", ("logging/",)),
    ("prometheus_client", ("prometheus_client/",)),
    ("json", ("json/",)),
    ("asyncio", ("asyncio/",)),
)


def summarize(stats_path: Path, requests: int) -> str:
    st = pstats.Stats(str(stats_path))
    raw: dict[tuple[str, int, str], tuple[int, int, float, float, object]] = st.stats  # type: ignore[attr-defined]
    rows = ["| stage entry (inclusive, nested) | CPU µs/request | calls/request |", "|---|---|---|"]
    for label, file, name in ENTRIES:
        hits = [v for (f, _, n), v in raw.items() if n == name and f.replace(os.sep, "/").endswith(file)]
        if not hits:
            continue
        cum = sum(v[3] for v in hits)
        calls = sum(v[1] for v in hits)  # primitive calls (a coroutine counts once per resumption)
        rows.append(f"| {label} | {cum / requests * 1e6:.0f} | {calls / requests:.1f} |")
    total_calls = sum(v[1] for v in raw.values())
    total_tt = sum(v[2] for v in raw.values())
    own: dict[str, list[float]] = {label: [0.0, 0.0] for label, _ in (*GROUPS, ("everything else", ()))}

    def group(file: str) -> str:
        path = file.replace(os.sep, "/")
        return next((lb for lb, parts in GROUPS if any(p in path for p in parts)), "everything else")

    for (file, _, _), v in raw.items():
        if file == "~":  # a C builtin (isinstance, dict.get, ...): charged to the packages calling it
            callers: dict[tuple[str, int, str], tuple[int, int, float, float]] = v[4]  # type: ignore[assignment]
            for (cfile, _, _), (_, ccalls, ctt, _) in callers.items():
                own[group(cfile)][0] += ctt
                own[group(cfile)][1] += ccalls
            continue
        own[group(file)][0] += v[2]
        own[group(file)][1] += v[1]
    rows += [
        "",
        "| package (own time; C builtins to their callers) | CPU µs/request | share | calls/request |",
        "|---|---|---|---|",
    ]
    for label, (tt, calls) in own.items():
        share = tt / total_tt if total_tt else 0.0
        rows.append(f"| {label} | {tt / requests * 1e6:.0f} | {share:.0%} | {calls / requests:.0f} |")
    rows.append(f"| all | {total_tt / requests * 1e6:.0f} | 100% | {total_calls / requests:.0f} |")
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=10.0, help="seconds profiled under load")
    ap.add_argument("--clients", type=int, default=8, help="closed-loop clients")
    ap.add_argument("--mode", choices=("json", "stream"), default="json")
    ap.add_argument("--no-audit", action="store_true", help="run localroute with audit_enabled = false")
    ap.add_argument("--no-feedback", action="store_true", help="run localroute with the feedback store off")
    ap.add_argument("--out", type=Path, help="keep the pstats file here")
    ap.add_argument("--analyze", type=Path, help="only summarize this pstats file")
    ap.add_argument("--requests", type=int, default=1, help="with --analyze: requests it covers")
    args = ap.parse_args()
    if args.analyze:
        print(summarize(args.analyze, args.requests))
        return
    import uvloop

    with tempfile.TemporaryDirectory(prefix="localroute-cprofile-") as tmp:
        work = Path(tmp)
        out = args.out or work / "gateway.pstats"
        mock = servers.start_mock(work)
        try:
            prefix = [sys.executable, "-c", WRAPPER, str(out.resolve())]
            lr = servers.start_localroute(
                mock.port, work, audit=not args.no_audit, prefix=prefix, feedback=not args.no_feedback
            )
            try:
                target = make_target("localroute", lr.port, None)
                payload, stream = target.payloads[args.mode], args.mode == "stream"
                uvloop.run(closed_loop("127.0.0.1", lr.port, payload, stream, args.clients, 1.0, 0.0, 10**7))
                os.kill(lr.proc.pid, signal.SIGUSR1)
                res = uvloop.run(
                    closed_loop("127.0.0.1", lr.port, payload, stream, args.clients, args.seconds, 0.0, 10**7)
                )
                os.kill(lr.proc.pid, signal.SIGUSR2)
                deadline = time.monotonic() + 30
                while not out.exists() and time.monotonic() < deadline:
                    time.sleep(0.2)
                time.sleep(0.5)  # the dump is written in one go; let it finish
            finally:
                lr.stop()
        finally:
            mock.stop()
        if not out.exists():
            raise SystemExit("the gateway wrote no profile")
        print(
            f"localroute under cProfile (CPU clock), {args.mode}, {args.clients} clients, "
            f"{args.seconds:g} s: {res.completed} requests, {res.errors} errors\n"
        )
        print(summarize(out, res.completed))


if __name__ == "__main__":
    main()
