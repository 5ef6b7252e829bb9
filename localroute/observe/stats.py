"""Totals and breakdowns over request records: what `/v1/localroute/stats`, the dashboard and
`localroute report` show. One pure function over records, so the live API (records kept in memory)
and the report (records read back from an audit log) agree by construction.

A record is the audit record of one request (`protocol.records.RequestRecord`); the summary is a
`protocol.records.Stats`. Records from older logs may lack some fields; they count as zero.
"""

from __future__ import annotations

import collections
import math
import re
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta

from localroute.observe.cost import savings_pct
from localroute.protocol.records import (
    Latency,
    ModelStats,
    Money,
    RecentRequest,
    RequestRecord,
    SeriesPoint,
    Spend,
    Stats,
)
from localroute.protocol.wire import PrivacyClass

# Latency bounds (ms) for the histogram; the Prometheus histograms use the same, in seconds.
LATENCY_BOUNDS_MS = (25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0)
RECENT = 20
_BUCKETS_S = (60, 300, 900, 3600, 6 * 3600, 86400)
_MAX_POINTS = 120
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhd])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_since(value: str, now: datetime) -> datetime:
    """`since` as an ISO-8601 time (UTC if it has no zone) or a span back from now: `90s`, `15m`,
    `1h`, `7d`. Raises ValueError with a message fit for a client."""
    text = value.strip()
    m = _DURATION.match(text.lower())
    if m:
        seconds = float(m.group(1)) * _UNIT_S[m.group(2)]
        if seconds > 100 * 365 * 86400:
            raise ValueError("'since' reaches back too far.")
        return now - timedelta(seconds=seconds)
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            "'since' must be an ISO-8601 time (2026-01-31T12:00:00Z) or a span such as 15m, 1h, 7d."
        ) from None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def record_time(rec: RequestRecord) -> datetime | None:
    ts = rec.get("ts")
    if not isinstance(ts, str):
        return None
    try:
        when = datetime.fromisoformat(ts.replace("Z", "+00:00"))
    except ValueError:
        return None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def _num(rec: Mapping[str, object], key: str) -> float:
    v = rec.get(key)
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) else 0.0


def _tokens(rec: RequestRecord) -> tuple[int, int]:
    t = rec.get("tokens")
    if not isinstance(t, dict):
        return 0, 0
    return int(_num(t, "prompt")), int(_num(t, "completion"))


def _quantile(sorted_xs: list[float], q: float) -> float | None:
    """Nearest-rank quantile; None for no data."""
    if not sorted_xs:
        return None
    return sorted_xs[min(len(sorted_xs) - 1, max(0, math.ceil(q * len(sorted_xs)) - 1))]


def _latency(xs: list[float]) -> Latency:
    s = sorted(xs)
    return {"p50": _quantile(s, 0.5), "p95": _quantile(s, 0.95)}


def _spend(cost: float, baseline: float) -> Spend:
    return {
        "cost_usd": round(cost, 8),
        "baseline_usd": round(baseline, 8),
        "saved_usd": round(baseline - cost, 8),
    }


def _money(cost: float, baseline: float) -> Money:
    pct = savings_pct(cost, baseline)
    return {**_spend(cost, baseline), "savings_pct": None if pct is None else round(pct, 2)}


def _privacy_class(rec: RequestRecord) -> PrivacyClass | None:
    cls = (rec.get("privacy") or {}).get("class")
    return cls if cls == "private" or cls == "public" else None


class _Model:
    def __init__(self, name: str) -> None:
        self.name = name
        self.tier: int | None = None
        self.local = False
        self.requests = 0
        self.escalated = 0
        self.cost = 0.0
        self.baseline = 0.0
        self.latency: list[float] = []
        self.prompt = 0
        self.completion = 0

    def as_json(self) -> ModelStats:
        return {
            "model": self.name,
            "tier": self.tier,
            "local": self.local,
            "requests": self.requests,
            "escalated": self.escalated,
            **_money(self.cost, self.baseline),
            "latency_ms": _latency(self.latency),
            "tokens": {"prompt": self.prompt, "completion": self.completion},
        }


def _bucket_s(span_s: float) -> int:
    for b in _BUCKETS_S:
        if span_s / b <= _MAX_POINTS:
            return b
    return _BUCKETS_S[-1]


def _is_local(rec: RequestRecord) -> bool:
    if isinstance(rec.get("local"), bool):
        return bool(rec["local"])
    attempts = rec.get("attempts") or ()  # records from before `local` was written
    answered = [a for a in attempts if isinstance(a, dict) and a.get("model") == rec.get("model")]
    return bool(answered) and not answered[-1].get("remote", True)


def summarize(records: Iterable[RequestRecord], since: datetime | None, now: datetime) -> Stats:
    """Totals, per-model breakdowns, a cost series and the latest decisions over the records at or
    after `since` (all when None)."""
    timed = ((record_time(rec), rec) for rec in records)
    return _summary([(w, r) for w, r in timed if w is not None], since, now)


def summarize_timed(
    timed: Iterable[tuple[datetime, RequestRecord]], since: datetime | None, now: datetime
) -> Stats:
    """`summarize` over records whose times are already known (the gateway keeps them parsed)."""
    return _summary(timed, since, now)


def _summary(timed: Iterable[tuple[datetime, RequestRecord]], since: datetime | None, now: datetime) -> Stats:
    picked = [(when, rec) for when, rec in timed if since is None or when >= since]
    picked.sort(key=lambda p: p[0])

    models: dict[str, _Model] = {}
    escalations: collections.Counter[str] = collections.Counter()
    routes: collections.Counter[str] = collections.Counter()
    privacy: collections.Counter[str] = collections.Counter()
    hist = [0] * (len(LATENCY_BOUNDS_MS) + 1)
    latency: list[float] = []
    ok = local = escalated = prompt = completion = 0
    cost = baseline = 0.0

    start = since if since is not None else (picked[0][0] if picked else now)
    bucket = _bucket_s(max((now - start).total_seconds(), 1.0))
    series: dict[int, list[float]] = {}

    for when, rec in picked:
        status = int(_num(rec, "status"))
        c, b = _num(rec, "cost_usd"), _num(rec, "baseline_usd")
        cost += c
        baseline += b
        p, o = _tokens(rec)
        prompt += p
        completion += o
        cls = _privacy_class(rec)
        if cls is not None:
            privacy[cls] += 1
        for move in rec.get("moves") or ():
            if isinstance(move, str):
                escalations[move.split(":", 1)[-1]] += 1
        key = int(when.timestamp()) // bucket * bucket
        point = series.setdefault(key, [0, 0.0, 0.0])
        point[0] += 1
        point[1] += c
        point[2] += b
        if not 200 <= status < 300:
            continue
        ok += 1
        ms = _num(rec, "latency_ms")
        latency.append(ms)
        hist[sum(1 for bound in LATENCY_BOUNDS_MS if ms > bound)] += 1
        is_local = _is_local(rec)
        local += is_local
        n_esc = int(_num(rec, "escalations"))
        escalated += n_esc > 0
        route = rec.get("route")
        if isinstance(route, str):
            routes[route] += 1
        name = rec.get("model")
        if isinstance(name, str) and name:
            m = models.setdefault(name, _Model(name))
            tier = rec.get("tier")
            m.tier = tier if isinstance(tier, int) else m.tier
            m.local = is_local
            m.requests += 1
            m.escalated += n_esc > 0
            m.cost += c
            m.baseline += b
            m.latency.append(ms)
            m.prompt += p
            m.completion += o

    return {
        "object": "localroute.stats",
        "since": since.isoformat(timespec="seconds") if since is not None else None,
        "until": now.isoformat(timespec="seconds"),
        "bucket_s": bucket,
        "totals": {
            "requests": len(picked),
            "ok": ok,
            "errors": len(picked) - ok,
            "local": local,
            "local_share": round(local / ok, 4) if ok else 0.0,
            "escalated": escalated,
            "escalation_rate": round(escalated / ok, 4) if ok else 0.0,
            "tokens": {"prompt": prompt, "completion": completion},
            **_money(cost, baseline),
            "latency_ms": _latency(latency),
        },
        "models": [m.as_json() for m in sorted(models.values(), key=lambda m: (m.tier or 0, m.name))],
        "escalations": dict(escalations.most_common()),
        "routes": dict(routes.most_common()),
        "privacy": {"private": privacy.get("private", 0), "public": privacy.get("public", 0)},
        "series": [_point(k, v) for k, v in sorted(series.items())],
        "latency_histogram": {"bounds_ms": list(LATENCY_BOUNDS_MS), "counts": hist},
        "recent": [_recent(rec) for _, rec in reversed(picked[-RECENT:])],
    }


def _point(start: int, v: list[float]) -> SeriesPoint:
    t = datetime.fromtimestamp(start, UTC).isoformat(timespec="seconds")
    return {"t": t, "requests": int(v[0]), **_spend(v[1], v[2])}


def _recent(rec: RequestRecord) -> RecentRequest:
    tier = rec.get("tier")
    return {
        "ts": rec.get("ts"),
        "id": rec.get("id"),
        "model": rec.get("model") or None,
        "tier": tier if isinstance(tier, int) else None,
        "route": rec.get("route") if isinstance(rec.get("route"), str) else None,
        "privacy": _privacy_class(rec),
        "status": int(_num(rec, "status")),
        "latency_ms": _num(rec, "latency_ms"),
        "cost_usd": _num(rec, "cost_usd"),
        "baseline_usd": _num(rec, "baseline_usd"),
        "escalations": int(_num(rec, "escalations")),
    }
