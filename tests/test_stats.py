"""The pure summary behind /v1/localroute/stats, the dashboard and `localroute report`."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from localroute.observe.stats import LATENCY_BOUNDS_MS, parse_since, summarize

NOW = datetime(2026, 11, 22, 12, 0, 0, tzinfo=UTC)


def rec(ago_s: float, **kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "ts": (NOW - timedelta(seconds=ago_s)).isoformat(timespec="milliseconds"),
        "id": f"req-{ago_s}",
        "privacy": {"class": "public", "reason": "default", "kinds": []},
        "status": 200,
        "latency_ms": 100.0,
        "model": "small",
        "tier": 0,
        "local": True,
        "route": "policy:score<=0.45",
        "escalations": 0,
        "moves": [],
        "tokens": {"prompt": 10, "completion": 5},
        "cost_usd": 0.0001,
        "baseline_usd": 0.001,
    }
    base.update(kw)
    return base


RECORDS = [
    rec(300, latency_ms=40.0),
    rec(200, latency_ms=60.0, privacy={"class": "private", "reason": "header", "kinds": []}),
    rec(100, model="top", tier=10, local=False, route="escalated:low_confidence", escalations=1,
        moves=["escalated:low_confidence"], latency_ms=900.0, cost_usd=0.0011, baseline_usd=0.001),
    rec(50, model=None, tier=None, local=None, status=404, latency_ms=1.0, cost_usd=0.0, baseline_usd=0.0,
        tokens=None, route=None),
]  # fmt: skip


def test_totals_and_models() -> None:
    s = summarize(RECORDS, None, NOW)
    t = s["totals"]
    assert (t["requests"], t["ok"], t["errors"], t["local"]) == (4, 3, 1, 2)
    assert t["local_share"] == pytest.approx(2 / 3, abs=1e-4)
    assert t["escalated"] == 1 and t["escalation_rate"] == pytest.approx(1 / 3, abs=1e-4)
    assert t["cost_usd"] == pytest.approx(0.0013)
    assert t["baseline_usd"] == pytest.approx(0.003)
    assert t["saved_usd"] == pytest.approx(0.0017)
    assert t["savings_pct"] == pytest.approx(56.67, abs=0.01)
    assert t["tokens"] == {"prompt": 30, "completion": 15}
    assert t["latency_ms"] == {"p50": 60.0, "p95": 900.0}  # nearest rank over the 3 served
    assert [(m["model"], m["requests"], m["local"]) for m in s["models"]] == [
        ("small", 2, True),
        ("top", 1, False),
    ]
    top = s["models"][1]
    assert top["savings_pct"] == pytest.approx(-10.0)  # an escalation costs more than going straight up
    assert s["escalations"] == {"low_confidence": 1}
    assert s["privacy"] == {"private": 1, "public": 3}
    assert s["routes"] == {"policy:score<=0.45": 2, "escalated:low_confidence": 1}


def test_histogram_series_and_recent() -> None:
    s = summarize(RECORDS, None, NOW)
    h = s["latency_histogram"]
    assert h["bounds_ms"] == list(LATENCY_BOUNDS_MS)
    assert len(h["counts"]) == len(LATENCY_BOUNDS_MS) + 1 and sum(h["counts"]) == 3
    assert h["counts"][LATENCY_BOUNDS_MS.index(50.0)] == 1  # 40 ms: (25, 50]
    assert h["counts"][LATENCY_BOUNDS_MS.index(1000.0)] == 1  # 900 ms: (500, 1000]
    assert s["bucket_s"] == 60  # 5 minutes of data: one-minute points
    assert sum(p["requests"] for p in s["series"]) == 4
    assert sum(p["cost_usd"] for p in s["series"]) == pytest.approx(0.0013)
    assert [p["t"] for p in s["series"]] == sorted(p["t"] for p in s["series"])
    assert [r["id"] for r in s["recent"]] == ["req-50", "req-100", "req-200", "req-300"]  # newest first
    assert s["recent"][0]["status"] == 404 and s["recent"][0]["model"] is None
    assert all("content" not in r and "messages" not in r for r in s["recent"])


def test_since_filters_and_empty_window() -> None:
    s = summarize(RECORDS, NOW - timedelta(seconds=150), NOW)
    assert s["totals"]["requests"] == 2
    assert s["since"] == (NOW - timedelta(seconds=150)).isoformat(timespec="seconds")
    empty = summarize(RECORDS, NOW + timedelta(seconds=1), NOW)
    assert empty["totals"]["requests"] == 0
    assert empty["totals"]["savings_pct"] is None and empty["totals"]["latency_ms"]["p50"] is None
    assert empty["models"] == [] and empty["recent"] == [] and empty["series"] == []


def test_old_or_damaged_records_count_as_zero() -> None:
    """A record from an older log, without `local`, `moves` or costs, is still counted."""
    old = {
        "ts": "2026-11-22T11:59:00.000+00:00",
        "status": 200,
        "model": "small",
        "latency_ms": 10,
        "attempts": [{"model": "small", "remote": False}],
    }
    s = summarize([old, {"ts": "not a time"}, {"no": "ts"}], None, NOW)
    assert s["totals"]["requests"] == 1 and s["totals"]["local"] == 1
    assert s["totals"]["cost_usd"] == 0.0


@pytest.mark.parametrize(
    ("text", "back_s"),
    [("90s", 90), ("15m", 900), ("1h", 3600), ("7d", 7 * 86400), ("1.5h", 5400)],
)
def test_parse_since_spans(text: str, back_s: float) -> None:
    assert parse_since(text, NOW) == NOW - timedelta(seconds=back_s)


def test_parse_since_times() -> None:
    assert parse_since("2026-11-22T10:00:00Z", NOW) == datetime(2026, 11, 22, 10, tzinfo=UTC)
    assert parse_since("2026-11-22T10:00:00", NOW) == datetime(2026, 11, 22, 10, tzinfo=UTC)
    for bad in ("yesterday", "", "-1h", "1y", "99999999999d"):
        with pytest.raises(ValueError, match="since"):
            parse_since(bad, NOW)
