"""OpenTelemetry traces of each request's route, off unless the standard `OTEL_*` variables ask for them.

With `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) set and the `otel` extra
installed, every request is one SERVER span, continued from an incoming `traceparent`, with children:
`localroute.decide` (the policy's choice), one span per rung tried (a CLIENT span named after the GenAI
convention, `chat <model>`, for the remote call), `localroute.confidence` for a cascade verdict and
`localroute.escalation` / `localroute.fallback` for each move up or across the ladder. Spans are
exported by the SDK's batch processor (off the request's path) over OTLP/HTTP.

What a span may hold is decided here and nowhere else: model, tier, route, privacy class, token
counts, cost, outcome and reason codes. Never prompt or answer text, whatever the settings, nor the
policy's reasons or the kinds of data the privacy scan found. Trace context goes to a remote
provider only with a public request (`outgoing`).

A private request's spans (ids, models, token counts: never text) go only to a collector whose address
is inside `[privacy] trusted_networks` (an IP literal, or `localhost`; a name could be re-pointed), unless
`[privacy] private_spans = "always"` opts in; `"never"` keeps them from any collector. Otherwise the
request is not traced at all, and `setup` logs one warning saying so (docs/observability.md).

Everything here is a no-op, one context-variable read, while tracing is off.
"""

from __future__ import annotations

import contextvars
import logging
import os
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from opentelemetry.trace import Span, Tracer

log = logging.getLogger("localroute.tracing")


class _Request:
    """The request's SERVER span, its class, and what happened under it, stamped as it happened;
    the child spans are made at `finish`, when the record has every attempt's tokens and cost."""

    __slots__ = ("marks", "offset_ns", "private", "span")

    def __init__(self, span: Span, private: bool, offset_ns: int) -> None:
        self.span = span
        self.private = private
        self.offset_ns = offset_ns  # Unix ns minus monotonic ns: one clock for every span of the request
        self.marks: list[tuple[str, float, float, str | None]] = []  # (what, start, end, detail)


_CURRENT: contextvars.ContextVar[_Request | None] = contextvars.ContextVar("localroute_span", default=None)
_tracer: Tracer | None = None
_provider: Any = None
_private_ok = False  # spans of private requests may be exported (see the module docstring)

PrivateSpans = Literal["trusted", "always", "never"]

ENDPOINT_VARS = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")


def wanted() -> bool:
    """Tracing is asked for: an OTLP endpoint is set and the SDK is not disabled."""
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if os.environ.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() == "none":
        return False
    return any(os.environ.get(v) for v in ENDPOINT_VARS)


def collector_trusted(trusted: Callable[[str], bool]) -> bool:
    """Whether the configured collector's host is inside the trusted networks (`trusted` judges an IP
    literal): an IP literal judged so, or `localhost` (judged as 127.0.0.1); any other name is not."""
    import ipaddress
    from urllib.parse import urlsplit

    raw = next((os.environ[v] for v in ENDPOINT_VARS if os.environ.get(v)), "")
    try:
        host = urlsplit(raw).hostname or ""
    except ValueError:
        return False
    if host == "localhost":
        host = "127.0.0.1"
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return trusted(host)


def private_exported(mode: PrivateSpans, trusted: Callable[[str], bool]) -> bool:
    """Whether spans of private requests go to the configured collector."""
    return mode == "always" or (mode == "trusted" and collector_trusted(trusted))


def setup(
    service_version: str = "",
    *,
    trusted: Callable[[str], bool] = lambda address: False,
    private_spans: PrivateSpans = "trusted",
) -> bool:
    """Start the SDK from the `OTEL_*` environment; False (and one log line) when off or not installed.
    `trusted` judges an IP literal against `[privacy] trusted_networks`; with `private_spans` it decides
    whether private requests are traced (the module docstring)."""
    global _tracer, _provider, _private_ok
    if _tracer is not None or not wanted():
        return _tracer is not None
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        log.warning(
            "OTEL_EXPORTER_OTLP_ENDPOINT is set but the otel extra is not installed "
            "(pip install 'localroute[otel]'); no traces"
        )
        return False
    # Resource.create reads OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES; ours are the defaults.
    attrs = {"service.name": "localroute", "service.version": service_version}
    resource = Resource.create({k: v for k, v in attrs.items() if v})
    if os.environ.get("OTEL_SERVICE_NAME"):
        resource = resource.merge(Resource.create({"service.name": os.environ["OTEL_SERVICE_NAME"]}))
    _provider = TracerProvider(resource=resource)  # honours OTEL_TRACES_SAMPLER(_ARG)
    _provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))  # OTEL_EXPORTER_OTLP_* config
    _tracer = _provider.get_tracer("localroute")
    _private_ok = private_exported(private_spans, trusted)
    log.info("tracing on: OTLP/HTTP to %s", _endpoint_host())
    if private_spans == "trusted" and not _private_ok:
        log.warning(
            "tracing: the OTLP collector %s is not inside [privacy] trusted_networks (an IP address or "
            'localhost there): private requests are not traced; [privacy] private_spans = "always" '
            "exports their spans too (ids, models, token counts; never text)",
            _endpoint_host(),
        )
    return True


def _endpoint_host() -> str:
    """The collector's address without credentials or query, for the log."""
    from urllib.parse import urlsplit

    raw = next((os.environ[v] for v in ENDPOINT_VARS if os.environ.get(v)), "")
    parts = urlsplit(raw)
    return f"{parts.scheme}://{parts.hostname or ''}{f':{parts.port}' if parts.port else ''}"


def shutdown() -> None:
    """Flush what is buffered and stop (the lifespan's end)."""
    global _tracer, _provider, _private_ok
    if _provider is not None:
        _provider.shutdown()
    _tracer, _provider, _private_ok = None, None, False


def _offset_ns() -> int:
    """Unix time minus monotonic time, in ns: a `time.monotonic()` stamp plus this is a span time."""
    return time.time_ns() - time.monotonic_ns()


def _ns(mono: float, offset: int) -> int:
    return offset + int(mono * 1e9)


def start_request(
    name: str, headers: Mapping[str, str], private: bool, t0: float, attrs: dict[str, Any]
) -> None:
    """Open this request's SERVER span (a child of the caller's `traceparent`, if any); none for a
    private request when its spans may not go to the collector."""
    if _tracer is None:
        return
    if private and not _private_ok:
        _CURRENT.set(None)  # no span, and nothing of an earlier request's in this context either
        return
    from opentelemetry.propagate import extract
    from opentelemetry.trace import SpanKind

    parent = extract({k: v for k, v in headers.items() if k in ("traceparent", "tracestate")})
    offset = _offset_ns()
    span = _tracer.start_span(
        name, context=parent, kind=SpanKind.SERVER, start_time=_ns(t0, offset), attributes=attrs
    )
    _CURRENT.set(_Request(span, private, offset))


def mark(what: str, start: float, detail: str | None = None) -> None:
    """Stamp a step of this request: `decide`, `attempt` (detail: the provider's model id for a
    remote rung), `move` (detail: the route). A no-op while tracing is off."""
    cur = _CURRENT.get()
    if cur is not None:
        cur.marks.append((what, start, time.monotonic(), detail))


def _child(
    cur: _Request, name: str, start: float, end: float, attrs: dict[str, Any], *, client: bool = False
) -> Span:
    assert _tracer is not None
    from opentelemetry.trace import SpanKind, set_span_in_context

    kind = SpanKind.CLIENT if client else SpanKind.INTERNAL
    context = set_span_in_context(cur.span)
    began = _ns(start, cur.offset_ns)
    span = _tracer.start_span(name, context=context, kind=kind, start_time=began, attributes=attrs)
    span.end(end_time=_ns(end, cur.offset_ns))
    return span


def _decide_span(cur: _Request, rec: Mapping[str, Any], start: float, end: float) -> None:
    d = rec.get("decision") or {}
    attrs: dict[str, Any] = {
        f"localroute.{k}": v for k, v in d.items() if k in ("model", "tier", "score", "route")
    }
    if "localroute.model" in attrs:
        attrs["localroute.rung"] = attrs.pop("localroute.model")
    _child(cur, "localroute.decide", start, end, attrs)


def _attempt_span(
    cur: _Request, a: Mapping[str, Any], start: float, end: float, provider_model: str | None, operation: str
) -> None:
    """One rung tried: a CLIENT span `<operation> <model>` (chat, embeddings) for a remote call, else
    `localroute.attempt`."""
    remote = bool(a.get("remote"))
    tokens = a.get("tokens") or {}
    model = str(a.get("model") or "")
    attrs: dict[str, Any] = {
        "gen_ai.operation.name": operation,
        "gen_ai.request.model": provider_model or model,
        "gen_ai.usage.input_tokens": int(tokens.get("prompt", 0)),
        "gen_ai.usage.output_tokens": int(tokens.get("completion", 0)),
        "localroute.rung": model,
        "localroute.remote": remote,
        "localroute.outcome": str(a.get("outcome")),
        "localroute.cost_usd": float(a.get("cost_usd") or 0.0),
    }
    if a.get("reason"):
        attrs["localroute.reason"] = str(a["reason"])
    name = f"{operation} {provider_model or model}" if remote else "localroute.attempt"
    span = _child(cur, name, start, end, attrs, client=remote)
    if a.get("outcome") not in ("ok", "escalated"):
        from opentelemetry.trace import Status, StatusCode

        span.set_status(Status(StatusCode.ERROR))
    if a.get("outcome") == "escalated" and a.get("reason"):
        _child(
            cur,
            "localroute.confidence",
            end,
            end,
            {"localroute.rung": model, "localroute.verdict": str(a["reason"])},
        )


def finish(rec: Mapping[str, Any]) -> None:
    """Close the request's span, and make its children, from its record (the same fields, never text)."""
    cur = _CURRENT.get()
    if cur is None:
        return
    _CURRENT.set(None)
    attempts = iter(rec.get("attempts") or ())
    operation = "embeddings" if rec.get("api") == "embeddings" else "chat"  # GenAI operation names
    for what, start, end, detail in cur.marks:
        if what == "decide":
            _decide_span(cur, rec, start, end)
        elif what == "attempt":
            a = next(attempts, None)
            if a is not None:
                _attempt_span(cur, a, start, end, detail, operation)
        elif what == "move" and detail:
            kind = "fallback" if detail.startswith("fallback") else "escalation"
            _child(cur, f"localroute.{kind}", start, end, {"localroute.route": detail})
    status = int(rec.get("status") or 0)
    tokens = rec.get("tokens") or {}
    attrs: dict[str, Any] = {
        "http.response.status_code": status,
        "localroute.privacy": (rec.get("privacy") or {}).get("class", "private"),
        "localroute.cost_usd": float(rec.get("cost_usd") or 0.0),
        "localroute.escalations": int(rec.get("escalations") or 0),
        "gen_ai.usage.input_tokens": int(tokens.get("prompt", 0)),
        "gen_ai.usage.output_tokens": int(tokens.get("completion", 0)),
    }
    for key, attr in (
        ("model", "gen_ai.response.model"),
        ("model", "localroute.rung"),
        ("tier", "localroute.tier"),
        ("route", "localroute.route"),
        ("error", "error.type"),
    ):
        if rec.get(key) is not None:
            attrs[attr] = rec[key]
    cur.span.set_attributes(attrs)
    if status >= 500:
        from opentelemetry.trace import Status, StatusCode

        cur.span.set_status(Status(StatusCode.ERROR))
    cur.span.end()


def outgoing() -> dict[str, str]:
    """Trace-context headers for a call to a remote provider: only for a public request."""
    cur = _CURRENT.get()
    if cur is None or cur.private:
        return {}
    from opentelemetry.propagate import inject
    from opentelemetry.trace import set_span_in_context

    carrier: dict[str, str] = {}
    inject(carrier, context=set_span_in_context(cur.span))
    return carrier
