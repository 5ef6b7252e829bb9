"""What each part of one default non-streamed remote request costs, in-process: a price list.

    python -m bench.price_list [--n 2000] [--cold]

Each part of the gateway's work on bench.overhead's request (two messages, a remote rung in front of
`bench/mock_upstream.py`, privacy default public, audit log, request log, metrics and the feedback
store on, as shipped) is timed alone with real objects built from the same config `bench.servers`
gives `localroute serve`: process CPU time over `--n` calls, after one warm-up call. The remote call
runs on uvloop against the real mock in its own process (this process's CPU only). What is not here,
uvicorn + Starlette and the middleware, is priced by `bench.floors` (`fixed`) and `bench.cprofile_gateway`.
Parts measured alone miss what running together costs (cache misses, the writer thread taking the
GIL): `bench.gateway_threads` gives the whole-server figures to hold them against.

`--cold` runs the event loop's parts in a request's order, each request after a 0.5 ms sleep and an
8 MiB copy: what they cost when one client's requests come one at a time, the client, the kernel and
the mock running in between (`bench.floors --clients 1` pays the same coldness: its `raw` costs 2.6x
its 16-client price). The writer thread's parts are priced warm either way: rows reach it in batches.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import servers
from bench.overhead import MESSAGES

Row = tuple[str, float]
Step = tuple[str, Callable[[], Any], bool]  # label, the call, whether it returns an awaitable
GAP_S = 0.0005  # --cold: about the gap between one client's requests in bench.floors at 1 client
SWEEP = bytearray(8 << 20)  # --cold: copied before each request, 4x this machine's L2
SINK = bytearray(8 << 20)


def timed(label: str, fn: Callable[[], object], n: int) -> Row:
    fn()
    c0 = time.process_time()
    for _ in range(n):
        fn()
    return label, (time.process_time() - c0) / n * 1e6


async def warm(steps: list[Step], n: int) -> list[Row]:
    """Each step alone, back to back: its price with its code and data in the caches."""
    rows: list[Row] = []
    for label, fn, is_async in steps:
        if not is_async:
            rows.append(timed(label, fn, n))
            continue
        await fn()
        c0 = time.process_time()
        for _ in range(n):
            await fn()
        rows.append((label, (time.process_time() - c0) / n * 1e6))
    return rows


async def cold(steps: list[Step], n: int) -> list[Row]:
    """The steps in a request's order, each request after an idle gap and a cache sweep: what each
    costs when one client's requests come one at a time (between two of them the client, the kernel
    and the mock run, and leave the caches to the next request colder than a loop leaves them; the
    steps of one request still warm each other, as in the server). Less the clock's own cost."""
    spent = dict.fromkeys((label for label, _, _ in steps), 0.0)
    clock = 0.0
    for _ in range(n):
        # Blocking on purpose: uvloop rounds a 0.5 ms asyncio.sleep down to none; the CPU must idle.
        time.sleep(GAP_S)  # noqa: ASYNC251
        SINK[:] = SWEEP
        for label, fn, is_async in steps:
            c0 = time.process_time()
            if is_async:
                await fn()
            else:
                fn()
            spent[label] += time.process_time() - c0
        c0 = time.process_time()
        clock += time.process_time() - c0
    return [(label, (us - clock) / n * 1e6) for label, us in spent.items()]


def parts(work: Path, mock_port: int, n: int, is_cold: bool) -> list[Row]:
    from starlette.responses import JSONResponse

    from localroute.config.schema import parse_config
    from localroute.observe.feedback import FeedbackStore
    from localroute.observe.logs import REQUEST_LOGGER, JSONFormatter
    from localroute.observe.metrics import Metrics
    from localroute.privacy.audit import AuditLog
    from localroute.privacy.detect import Detector
    from localroute.privacy.guard import CURRENT, SCANNED_CLEAN, EgressGuard, body_texts, resolve
    from localroute.protocol.chat import parse_chat_request
    from localroute.routing.router import Router
    from localroute.routing.traffic_features import recipe_featurizer
    from localroute.rungs.registry import build_backends

    os.environ[servers.KEY_ENV] = "sk-bench-mock"
    config = parse_config(servers.localroute_config(mock_port, work, audit=True))
    raw = json.dumps({"model": servers.MODEL, "messages": MESSAGES, "max_tokens": 64, "temperature": 0.2})
    body = raw.encode()
    detector = Detector(config.privacy.detect, config.privacy.extra_patterns)
    guard = EgressGuard(detector, redacting=config.privacy.redact)
    backends = build_backends(config, work, guard)
    router = Router(config, backends, detector)
    req = parse_chat_request(body)

    def classify() -> object:
        texts = tuple(body_texts(req.model_dump(exclude_none=True, by_alias=True)))
        kinds = detector.kinds_in(texts)
        if not kinds:
            SCANNED_CLEAN.set(texts)
        return resolve(config.privacy, None, None, kinds)

    privacy = classify()
    CURRENT.set(privacy)  # type: ignore[arg-type]
    m = config.ladder()[0]
    out = {**router._body(req, m, False), "model": m.name, "stream": False}
    remote = backends[m.name]
    answer = json.loads(servers_completion())
    answer_text = answer["choices"][0]["message"]["content"]
    rec = record_like()
    metrics = Metrics(lambda: {})
    handler = logging.StreamHandler((work / "requests.log").open("w", encoding="utf-8"))
    handler.setFormatter(JSONFormatter())
    lg = logging.getLogger(REQUEST_LOGGER)
    lg.handlers[:], lg.propagate = [handler], False
    lg.setLevel(logging.INFO)

    def log_line() -> None:
        line = lg.makeRecord(REQUEST_LOGGER, logging.INFO, "", 0, "request", (), None, extra={"fields": rec})
        lg.handle(line)

    audit = AuditLog(work / "audit-bench.jsonl")
    featurize = recipe_featurizer()
    store = FeedbackStore(work / "fb.sqlite3", config.feedback, featurize)
    count = iter(range(10**9))

    def remember() -> None:
        store.remember(f"r{next(count)}", req, rung=m.name, tier=m.tier, local=False, decided=m.name,
                       score=0.1, route="policy", private=False)  # fmt: skip

    # In the order one request runs them on the event loop.
    steps: list[Step] = [
        ("parse_chat_request (json + pydantic)", lambda: parse_chat_request(body), False),
        ("classify: dump + PII scan of every text", classify, False),
        ("Router.decide (policy: features, keyword signals, rungs)", lambda: router.decide(req), False),
        ("Router._body (the body for the rung)", lambda: router._body(req, m, False), False),
        ("egress guard (texts already scanned clean)", lambda: guard(out), False),
        ("request id (os.urandom)", lambda: "req-" + os.urandom(10).hex(), False),
        ("RemoteBackend.complete (guard, send, read, JSON decode; one connection)",
         lambda: remote.complete(dict(out)), True),
        ("JSONResponse (json.dumps of the answer)", lambda: JSONResponse(answer), False),
        ("Metrics.observe", lambda: metrics.observe(rec), False),  # type: ignore[arg-type]
        ("request log line (JSON to a file)", log_line, False),
        ("AuditLog.append (canonical JSON, SHA-256, write + flush)", lambda: audit.append(rec), False),
        ("stickiness: remember the answer's digest",
         lambda: router.conversations.remember(answer_text, m.name, m.tier, ""), False),
    ]  # fmt: skip
    # The writer thread's part: rows reach it in batches (warm after the first), so priced warm.
    writer: list[Step] = [
        ("feedback: featurise (writer thread)", lambda: featurize(req), False),
        ("feedback: featurise + insert, batched commits (writer thread)", remember, False),
    ]

    async def run() -> list[Row]:
        await remote.start()
        CURRENT.set(privacy)  # type: ignore[arg-type]
        await remote.complete(dict(out))
        rows = await (cold(steps, n) if is_cold else warm(steps, n))
        await remote.aclose()
        return rows + await warm(writer, n)

    import uvloop

    rows = uvloop.run(run())
    store.close()
    return rows


def servers_completion() -> bytes:
    from bench.mock_upstream import COMPLETION

    return COMPLETION.split(b"\r\n\r\n", 1)[1]


def record_like() -> dict[str, Any]:
    """A request record as the gateway writes it for this request (gateway/record.py)."""
    return {
        "ts": "2026-12-03T22:00:00.123+00:00", "id": "req-" + os.urandom(10).hex(), "api": "chat",
        "privacy": {"class": "public", "reason": "default", "kinds": []}, "status": 200, "error": None,
        "stream": False, "latency_ms": 3.2, "ttft_ms": None,
        "decision": {"model": servers.MODEL, "tier": 10, "score": 0.1234, "route": "policy", "sticky": False},
        "route": "policy", "model": servers.MODEL, "tier": 10, "local": False, "escalations": 0, "moves": [],
        "attempts": [{"model": servers.MODEL, "tier": 10, "outcome": "ok", "remote": True,
                      "cost_usd": 1.2e-05, "latency_ms": 2.1}],
        "tokens": {"prompt": 30, "completion": 20}, "compute_s": 0.0, "cost_usd": 1.2e-05,
        "baseline_usd": 1.2e-05, "output_valid": None, "confidence": {},
    }  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2000, help="calls per part")
    ap.add_argument("--cold", action="store_true", help="requests after a gap and a cache sweep")
    args = ap.parse_args()
    load0 = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="localroute-prices-") as tmp:
        work = Path(tmp)
        mock = servers.start_mock(work)
        try:
            rows = parts(work, mock.port, args.n, args.cold)
        finally:
            mock.stop()
    how = "cold: in a request's order, after a gap and a cache sweep" if args.cold else "warm: alone"
    print(f"| part (in-process, {how}) | CPU µs/call |\n|---|---|")
    for label, us in rows:
        print(f"| {label} | {us:.1f} |")
    loop = [us for label, us in rows if "writer thread" not in label]
    print(f"| all of the above on the event loop | {sum(loop):.1f} |")
    print(f"\nload average {load0:.2f} before, {os.getloadavg()[0]:.2f} after; {args.n} calls each")


if __name__ == "__main__":
    main()
