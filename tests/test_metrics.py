"""Prometheus metrics on their own: known request records in, `/metrics` text out, read back with
prometheus-client's own parser."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from localroute.observe.metrics import ENGINE_STATES, Metrics

LOCAL_OK: dict[str, Any] = {
    "model": "small", "tier": 0, "route": "policy:score<=0.45", "privacy": {"class": "public"},
    "status": 200, "stream": False, "tokens": {"prompt": 10, "completion": 4}, "cost_usd": 0.001,
    "baseline_usd": 0.01, "compute_s": 0.5, "latency_ms": 120.0,
}  # fmt: skip
ESCALATED_STREAM: dict[str, Any] = {
    "model": "top", "tier": 10, "route": "escalated:low_confidence", "privacy": {"class": "public"},
    "status": 200, "stream": True, "tokens": {"prompt": 12, "completion": 30}, "cost_usd": 0.02,
    "baseline_usd": 0.02, "moves": ["escalated:low_confidence"], "latency_ms": 900.0, "ttft_ms": 300.0,
}  # fmt: skip
REFUSED: dict[str, Any] = {
    "model": "small", "tier": 0, "route": "fallback:engine_error", "privacy": {"class": "private"},
    "status": 503, "moves": ["fallback:engine_error"], "latency_ms": 5.0,
}  # fmt: skip
HEALTH: dict[str, dict[str, Any]] = {
    "small": {"state": "ready", "queued": 2, "in_flight": 3, "rss_mib": 100},
    "top": {"state": "unavailable"},
}

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(m: Metrics) -> Samples:
    out: Samples = {}
    for family in text_string_to_metric_families(m.render().decode()):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def metrics(health: Mapping[str, Mapping[str, Any]] = HEALTH, *records: Mapping[str, Any]) -> Metrics:
    m = Metrics(lambda: health)
    for rec in records:
        m.observe(rec)
    return m


@pytest.fixture(scope="module")
def samples() -> Samples:
    return scrape(metrics(HEALTH, LOCAL_OK, LOCAL_OK, ESCALATED_STREAM, REFUSED))


@pytest.mark.parametrize(
    ("labels", "count"),
    [
        (("small", "0", "policy:score<=0.45", "public", "200", "chat"), 2.0),
        (("top", "10", "escalated:low_confidence", "public", "200", "chat"), 1.0),
        (("small", "0", "fallback:engine_error", "private", "503", "chat"), 1.0),
    ],
)
def test_requests_are_counted_by_their_labels(
    samples: Samples, labels: tuple[str, ...], count: float
) -> None:
    names = dict(zip(("model", "tier", "route", "privacy", "status", "api"), labels, strict=True))
    assert value(samples, "localroute_requests_total", **names) == count


@pytest.mark.parametrize(
    ("name", "labels", "want"),
    [
        ("localroute_tokens_total", {"model": "small", "kind": "prompt"}, 20.0),
        ("localroute_tokens_total", {"model": "small", "kind": "completion"}, 8.0),
        ("localroute_tokens_total", {"model": "top", "kind": "completion"}, 30.0),
        ("localroute_cost_usd_total", {"model": "small"}, 0.002),
        ("localroute_cost_usd_total", {"model": "top"}, 0.02),
        ("localroute_baseline_cost_usd_total", {"model": "small"}, 0.02),
        ("localroute_compute_seconds_total", {"model": "small"}, 1.0),
        ("localroute_escalations_total", {"reason": "low_confidence"}, 1.0),
        ("localroute_escalations_total", {"reason": "engine_error"}, 1.0),
        # Latency: answered requests only (the 503 is not observed), split by stream.
        ("localroute_request_duration_seconds_count", {"model": "small", "stream": "false"}, 2.0),
        ("localroute_request_duration_seconds_sum", {"model": "small", "stream": "false"}, 0.24),
        ("localroute_request_duration_seconds_count", {"model": "top", "stream": "true"}, 1.0),
        ("localroute_time_to_first_token_seconds_count", {"model": "top"}, 1.0),
        ("localroute_time_to_first_token_seconds_sum", {"model": "top"}, 0.3),
        ("localroute_time_to_first_token_seconds_count", {"model": "small"}, 0.0),
        ("localroute_queue_depth", {"model": "small"}, 2.0),
        ("localroute_in_flight", {"model": "small"}, 3.0),
        ("localroute_engine_rss_bytes", {"model": "small"}, 100 * 1024 * 1024),
        ("localroute_engine_rss_bytes", {"model": "top"}, None),  # no RSS reported: no sample
    ],
)
def test_counters_histograms_and_gauges(
    samples: Samples, name: str, labels: dict[str, str], want: float | None
) -> None:
    got = value(samples, name, **labels)
    assert got == (pytest.approx(want) if want is not None else None)


def test_engine_state_is_one_hot_over_every_state(samples: Samples) -> None:
    for model, current in (("small", "ready"), ("top", "unavailable")):
        states = {s: value(samples, "localroute_engine_state", model=model, state=s) for s in ENGINE_STATES}
        assert states == {s: 1.0 if s == current else 0.0 for s in ENGINE_STATES}


def test_an_unknown_engine_state_is_shown_too() -> None:
    s = scrape(metrics({"odd": {"state": "draining"}}))
    assert value(s, "localroute_engine_state", model="odd", state="draining") == 1.0
    assert value(s, "localroute_engine_state", model="odd", state="ready") == 0.0


def test_engines_are_read_at_scrape_time() -> None:
    health: dict[str, dict[str, Any]] = {"small": {"state": "starting"}}
    m = metrics(health)
    assert value(scrape(m), "localroute_engine_state", model="small", state="starting") == 1.0
    health["small"] = {"state": "ready", "queued": 4}
    s = scrape(m)
    assert value(s, "localroute_engine_state", model="small", state="ready") == 1.0
    assert value(s, "localroute_queue_depth", model="small") == 4.0


def test_a_bare_record_gets_placeholder_labels() -> None:
    s = scrape(metrics({}, {"status": 400}))
    labels = {
        "model": "none",
        "tier": "",
        "route": "none",
        "privacy": "unknown",
        "status": "400",
        "api": "chat",
    }
    assert value(s, "localroute_requests_total", **labels) == 1.0
    assert value(s, "localroute_request_duration_seconds_count", model="none", stream="false") == 0.0


def test_nothing_observed_renders_no_request_samples() -> None:
    s = scrape(metrics({}))
    assert not any(name == "localroute_requests_total" for name, _ in s)


def test_structured_answers_are_counted_by_whether_they_kept_the_contract() -> None:
    valid = {**LOCAL_OK, "output_valid": True}
    invalid = {**ESCALATED_STREAM, "output_valid": False}
    s = scrape(metrics(HEALTH, valid, valid, invalid, LOCAL_OK))  # plain text answers are not counted
    assert value(s, "localroute_structured_outputs_total", model="small", valid="true") == 2.0
    assert value(s, "localroute_structured_outputs_total", model="top", valid="false") == 1.0
    assert value(s, "localroute_structured_outputs_total", model="small", valid="false") is None
