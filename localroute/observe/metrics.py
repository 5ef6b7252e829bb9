"""Prometheus metrics for `GET /metrics`, one registry per app (no process-global state).

Label values come from the config and from the router's fixed vocabulary (model names, tiers,
route reasons, privacy classes, status codes): never request ids, user text or client-chosen
strings, so cardinality is bounded by the config.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import get_args

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from localroute.observe.stats import LATENCY_BOUNDS_MS
from localroute.protocol.records import RequestRecord
from localroute.protocol.wire import EngineHealth, EngineState

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_SECONDS = tuple(b / 1000 for b in LATENCY_BOUNDS_MS)
_TTFT_SECONDS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
ENGINE_STATES: tuple[str, ...] = get_args(EngineState)


class _Engines(Collector):
    """Engine state, queue depth and RSS, read from the engines' health at scrape time."""

    def __init__(self, health: Callable[[], Mapping[str, EngineHealth]]) -> None:
        self._health = health

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        state = GaugeMetricFamily(
            "localroute_engine_state", "1 for the engine's current state", labels=["model", "state"]
        )
        queue = GaugeMetricFamily(
            "localroute_queue_depth", "Requests waiting for an engine slot", labels=["model"]
        )
        in_flight = GaugeMetricFamily(
            "localroute_in_flight", "Requests admitted to an engine (running or queued)", labels=["model"]
        )
        rss = GaugeMetricFamily(
            "localroute_engine_rss_bytes", "Resident memory of the engine's process", labels=["model"]
        )
        for name, h in self._health().items():
            current = str(h.get("state", "stopped"))
            for s in sorted({*ENGINE_STATES, current}):
                state.add_metric([name, s], 1.0 if s == current else 0.0)
            queue.add_metric([name], float(h.get("queued") or 0))
            in_flight.add_metric([name], float(h.get("in_flight") or 0))
            if (rss_mib := h.get("rss_mib")) is not None:
                rss.add_metric([name], float(rss_mib) * 1024 * 1024)
        yield from (state, queue, in_flight, rss)
        yield from _endpoints(self._health())


CIRCUITS = ("closed", "open", "half_open")


def _endpoints(health: Mapping[str, EngineHealth]) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
    """Per engine endpoint of a rung (`endpoints = [...]`): its URL from the config is the label."""
    labels = ["model", "endpoint"]
    up = GaugeMetricFamily("localroute_endpoint_up", "1 if its last health check passed", labels=labels)
    outstanding = GaugeMetricFamily(
        "localroute_endpoint_outstanding", "Requests sent to the endpoint and not finished", labels=labels
    )
    circuit = GaugeMetricFamily(
        "localroute_endpoint_circuit", "1 for the endpoint's circuit state", labels=[*labels, "circuit"]
    )
    served = CounterMetricFamily("localroute_endpoint_served", "Requests it answered", labels=labels)
    failures = CounterMetricFamily(
        "localroute_endpoint_failures", "Failed requests and health checks of the endpoint", labels=labels
    )
    for name, h in health.items():
        listed = h.get("endpoints")
        for ep in listed if isinstance(listed, list) else []:
            key = [name, str(ep["url"])]
            up.add_metric(key, 1.0 if ep["state"] == "up" else 0.0)
            outstanding.add_metric(key, float(ep["outstanding"]))
            for c in CIRCUITS:
                circuit.add_metric([*key, c], 1.0 if ep["circuit"] == c else 0.0)
            served.add_metric(key, float(ep["served"]))
            failures.add_metric(key, float(ep["failures"]))
    yield from (up, outstanding, circuit, served, failures)


class Metrics:
    """The gateway's counters and histograms; `observe` takes one finished request's record."""

    def __init__(self, health: Callable[[], Mapping[str, EngineHealth]]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "localroute_requests", "Requests served or refused, by the API called",
            ["model", "tier", "route", "privacy", "status", "api"], registry=r,
        )  # fmt: skip
        self.tokens = Counter("localroute_tokens", "Tokens processed", ["model", "kind"], registry=r)
        self.cost = Counter(
            "localroute_cost_usd", "What requests cost, every rung tried", ["model"], registry=r
        )
        self.baseline = Counter(
            "localroute_baseline_cost_usd", "What the same requests would cost on the baseline model",
            ["model"], registry=r,
        )  # fmt: skip
        self.compute = Counter(
            "localroute_compute_seconds", "CPU- or GPU-seconds local engines spent", ["model"], registry=r
        )
        self.escalations = Counter(
            "localroute_escalations", "Requests moved up the ladder, by reason", ["reason"], registry=r
        )
        self.outputs = Counter(
            "localroute_structured_outputs", "JSON and tool-call answers, by whether they kept the "
            "request's contract (schema, declared tool, valid arguments)", ["model", "valid"], registry=r,
        )  # fmt: skip
        self.latency = Histogram(
            "localroute_request_duration_seconds", "Time to the last byte",
            ["model", "stream"], buckets=_SECONDS, registry=r,
        )  # fmt: skip
        self.ttft = Histogram(
            "localroute_time_to_first_token_seconds", "Streams: time to the first content chunk",
            ["model"], buckets=_TTFT_SECONDS, registry=r,
        )  # fmt: skip
        self.state_errors = Counter(
            "localroute_state_errors", "Calls to the shared state store ([state] url) that failed or "
            "timed out; each fell back to this replica's own state", registry=r,
        )  # fmt: skip
        r.register(_Engines(health))
        self._rows: dict[tuple[str, ...], _Row] = {}

    def observe(self, rec: RequestRecord) -> None:
        model = rec.get("model") or "none"
        tier = rec.get("tier")
        status = int(rec.get("status", 0))
        key = (model, "" if tier is None else str(tier), rec.get("route") or "none",
               (rec.get("privacy") or {}).get("class", "unknown"), str(status),
               rec.get("api") or "chat")  # fmt: skip
        row = self._rows.get(key)
        if row is None:  # a label set's children are looked up once (the set is bounded by the config)
            row = self._rows[key] = _Row(self, key)
        row.requests.inc()
        tokens = rec.get("tokens")
        if tokens and tokens.get("prompt"):
            row.prompt.inc(tokens["prompt"])
        if tokens and tokens.get("completion"):
            row.completion.inc(tokens["completion"])
        row.cost.inc(rec.get("cost_usd") or 0.0)
        row.baseline.inc(rec.get("baseline_usd") or 0.0)
        if rec.get("compute_s"):
            row.compute.inc(rec["compute_s"])
        if (valid := rec.get("output_valid")) is not None:
            self.outputs.labels(model, "true" if valid else "false").inc()
        for move in rec.get("moves") or ():
            self.escalations.labels(move.split(":", 1)[-1]).inc()
        if 200 <= status < 300:
            (row.latency_stream if rec.get("stream") else row.latency).observe(
                rec.get("latency_ms", 0.0) / 1000
            )
            ttft = rec.get("ttft_ms")
            if ttft is not None:
                row.ttft.observe(ttft / 1000)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _Row:
    """The labelled children one kind of request updates."""

    def __init__(self, m: Metrics, key: tuple[str, ...]) -> None:
        model = key[0]
        self.requests = m.requests.labels(*key)
        self.prompt = m.tokens.labels(model, "prompt")
        self.completion = m.tokens.labels(model, "completion")
        self.cost = m.cost.labels(model)
        self.baseline = m.baseline.labels(model)
        self.compute = m.compute.labels(model)
        self.latency = m.latency.labels(model, "false")
        self.latency_stream = m.latency.labels(model, "true")
        self.ttft = m.ttft.labels(model)
