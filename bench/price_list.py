"""What each part of one default non-streamed remote request costs, in-process: a price list.

    python -m bench.price_list [--n 2000]

Each part of the gateway's work on bench.overhead's request (two messages, a remote rung in front of
`bench/mock_upstream.py`, privacy default public, audit log, request log, metrics and the feedback
store on, as shipped) is timed alone with real objects built from the same config `bench.servers`
gives `localroute serve`: process CPU time over `--n` calls, after one warm-up call. The remote call
runs on uvloop against the real mock in its own process (this process's CPU only). What is not here,
uvicorn + Starlette and the middleware, is priced by `bench.floors` (`fixed`) and `bench.cprofile_gateway`.
Parts measured alone miss what running together costs (cache misses, the writer thread taking the
GIL): `bench.gateway_threads` gives the whole-server figures to hold them against.
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


def timed(label: str, fn: Callable[[], object], n: int) -> Row:
    fn()
    c0 = time.process_time()
    for _ in range(n):
        fn()
    return label, (time.process_time() - c0) / n * 1e6


def parts(work: Path, mock_port: int, n: int) -> list[Row]:
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
    rows: list[Row] = [timed("parse_chat_request (json + pydantic)", lambda: parse_chat_request(body), n)]

    def classify() -> object:
        texts = tuple(body_texts(req.model_dump(exclude_none=True, by_alias=True)))
        kinds = detector.kinds_in(texts)
        if not kinds:
            SCANNED_CLEAN.set(texts)
        return resolve(config.privacy, None, None, kinds)

    privacy = classify()
    rows.append(timed("classify: dump + PII scan of every text", classify, n))
    CURRENT.set(privacy)  # type: ignore[arg-type]
    decide = "Router.decide (policy: features, keyword signals, rungs)"
    rows.append(timed(decide, lambda: router.decide(req), n))
    m = config.ladder()[0]
    rows.append(timed("Router._body (the body for the rung)", lambda: router._body(req, m, False), n))
    out = {**router._body(req, m, False), "model": m.name, "stream": False}
    rows.append(timed("egress guard (texts already scanned clean)", lambda: guard(out), n))
    rows.append(timed("request id (os.urandom)", lambda: "req-" + os.urandom(10).hex(), n))

    remote = backends[m.name]

    async def calls() -> float:
        await remote.start()
        CURRENT.set(privacy)  # type: ignore[arg-type]
        await remote.complete(dict(out))
        c0 = time.process_time()
        for _ in range(n):
            await remote.complete(dict(out))
        spent = (time.process_time() - c0) / n * 1e6
        await remote.aclose()
        return spent

    import uvloop

    call = "RemoteBackend.complete (guard, send, read, JSON decode; one connection)"
    rows.append((call, uvloop.run(calls())))
    answer = json.loads(servers_completion())
    rows.append(timed("JSONResponse (json.dumps of the answer)", lambda: JSONResponse(answer), n))
    rec = record_like()
    metrics = Metrics(lambda: {})
    rows.append(timed("Metrics.observe", lambda: metrics.observe(rec), n))  # type: ignore[arg-type]
    handler = logging.StreamHandler((work / "requests.log").open("w", encoding="utf-8"))
    handler.setFormatter(JSONFormatter())
    lg = logging.getLogger(REQUEST_LOGGER)
    lg.handlers[:], lg.propagate = [handler], False
    lg.setLevel(logging.INFO)

    def log_line() -> None:
        line = lg.makeRecord(REQUEST_LOGGER, logging.INFO, "", 0, "request", (), None, extra={"fields": rec})
        lg.handle(line)

    rows.append(timed("request log line (JSON to a file)", log_line, n))
    audit = AuditLog(work / "audit-bench.jsonl")
    append = "AuditLog.append (canonical JSON, SHA-256, write + flush)"
    rows.append(timed(append, lambda: audit.append(rec), n))
    featurize = recipe_featurizer()
    rows.append(timed("feedback: featurise (writer thread)", lambda: featurize(req), n))
    store = FeedbackStore(work / "fb.sqlite3", config.feedback, featurize)
    count = iter(range(10**9))

    def remember() -> None:
        store.remember(f"r{next(count)}", req, rung=m.name, tier=m.tier, local=False, decided=m.name,
                       score=0.1, route="policy", private=False)  # fmt: skip

    rows.append(timed("feedback: featurise + insert, batched commits (writer thread)", remember, n))
    store.close()
    answer_text = answer["choices"][0]["message"]["content"]
    rows.append(timed("stickiness: remember the answer's digest", lambda: router.conversations.remember(
        answer_text, m.name, m.tier, ""), n))  # fmt: skip
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
    args = ap.parse_args()
    load0 = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="localroute-prices-") as tmp:
        work = Path(tmp)
        mock = servers.start_mock(work)
        try:
            rows = parts(work, mock.port, args.n)
        finally:
            mock.stop()
    print("| part (in-process, alone) | CPU µs/call |\n|---|---|")
    for label, us in rows:
        print(f"| {label} | {us:.1f} |")
    print(f"\nload average {load0:.2f} before, {os.getloadavg()[0]:.2f} after; {args.n} calls each")


if __name__ == "__main__":
    main()
