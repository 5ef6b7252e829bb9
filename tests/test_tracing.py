"""OpenTelemetry: a real gateway exports its spans over OTLP/HTTP to a receiver in this test.

The span trees of a local answer, an escalated answer and a private request that fails closed; the
caller's `traceparent` continued; trace context sent to the provider only for a public request; and
no prompt text, nor the personal data detected in it, in any exported byte.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from localroute.observe.tracing import PrivateSpans, private_exported
from localroute.privacy.trust import TrustedNetworks
from tests import conftest
from tests.conftest import (
    DEFAULT_MODEL,
    REMOTE_RUNG,
    Server,
    remote_rung,
    repo_rung,
    start_gateway,
    wait_until,
)
from tests.standin_fixtures import STANDIN_KEY
from tests.standin_provider import StandinProvider

KEY_ENV = "TRACING_TEST_PROVIDER_KEY"
CANARY = "zebra-canary-5e1f0c"
EMAIL = "mara.quist@example.org"
CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
EMBEDDER = "all-minilm-l6-v2"


class Receiver:
    """An OTLP/HTTP trace receiver on loopback: keeps every export's raw bytes."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                if self.path == "/v1/traces":
                    outer.bodies.append(body)
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def spans(self) -> list[Any]:
        out = []
        for body in list(self.bodies):
            req = ExportTraceServiceRequest()
            req.ParseFromString(body)
            for rs in req.resource_spans:
                for ss in rs.scope_spans:
                    out.extend(ss.spans)
        return out

    def tree(self, request_id: str) -> tuple[Any, list[Any]]:
        """The SERVER span of `request_id` and its children, once all have arrived."""

        def server() -> Any:
            return next(
                (s for s in self.spans() if attrs(s).get("localroute.request_id") == request_id), None
            )

        assert wait_until(lambda: server() is not None, timeout=30), f"no span for {request_id}"
        root = server()
        kids = [s for s in self.spans() if s.parent_span_id == root.span_id and s.trace_id == root.trace_id]
        return root, sorted(kids, key=lambda s: s.start_time_unix_nano)


def attrs(span: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kv in span.attributes:
        v = kv.value
        out[kv.key] = getattr(v, v.WhichOneof("value")) if v.WhichOneof("value") else None
    return out


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.server.shutdown()


@pytest.fixture(scope="module")
def provider() -> Iterator[StandinProvider]:
    with StandinProvider(api_key=STANDIN_KEY) as p:
        yield p


@pytest.fixture(scope="module")
def traced(
    tmp_path_factory: pytest.TempPathFactory, receiver: Receiver, provider: StandinProvider
) -> Iterator[Server]:
    models = [
        repo_rung(DEFAULT_MODEL, cache_prompt=False, n_ctx=512, default_max_tokens=32),
        repo_rung(EMBEDDER),  # the real local embedder
        remote_rung(provider.base_url, KEY_ENV, max_retries=0),
    ]
    # Every local answer judged unsure: `auto` escalates a public request to the stand-in.
    cascade = {"min_mean_logprob": -0.01, "min_length_tokens": 0}
    text = conftest.config_text(models=models, cascade=cascade, privacy={"default": "public"})
    env = {KEY_ENV: STANDIN_KEY, "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url, "OTEL_BSP_SCHEDULE_DELAY": "50",
           "OTEL_SERVICE_NAME": "localroute-test"}  # fmt: skip
    srv = start_gateway(Path(tmp_path_factory.mktemp("otel")), text, env)
    yield srv
    srv.stop()


def chat(srv: Server, content: str, model: str = "auto", **headers: str) -> httpx.Response:
    body = {"model": model, "max_tokens": 8, "messages": [{"role": "user", "content": content}]}
    return httpx.post(srv.url + "/v1/chat/completions", json=body, headers=headers, timeout=120)


def test_a_local_answer_is_one_attempt_under_the_callers_trace(traced: Server, receiver: Receiver) -> None:
    r = chat(traced, f"Say hello. {CANARY}", DEFAULT_MODEL, traceparent=f"00-{CALLER_TRACE}-{CALLER_SPAN}-01")
    assert r.status_code == 200, r.text
    root, kids = receiver.tree(r.headers["x-request-id"])
    assert root.trace_id.hex() == CALLER_TRACE and root.parent_span_id.hex() == CALLER_SPAN
    assert root.name == "POST /v1/chat/completions" and root.kind == root.SPAN_KIND_SERVER
    a = attrs(root)
    assert a["gen_ai.response.model"] == DEFAULT_MODEL and a["localroute.privacy"] == "public"
    assert a["http.response.status_code"] == 200 and a["gen_ai.usage.output_tokens"] > 0
    assert [k.name for k in kids] == ["localroute.decide", "localroute.attempt"]
    attempt = attrs(kids[1])
    assert (attempt["localroute.rung"], attempt["localroute.outcome"], attempt["localroute.remote"]) == (
        DEFAULT_MODEL, "ok", False,
    )  # fmt: skip


def test_an_escalation_shows_the_verdict_the_move_and_the_remote_call(
    traced: Server, receiver: Receiver, provider: StandinProvider
) -> None:
    provider.requests.clear()
    r = chat(traced, f"Explain entropy. {CANARY}")
    assert r.status_code == 200 and r.headers["x-localroute-model"] == REMOTE_RUNG, r.text
    root, kids = receiver.tree(r.headers["x-request-id"])
    names = [k.name for k in kids]
    assert names == [
        "localroute.decide", "localroute.attempt", "localroute.confidence", "localroute.escalation",
        "chat standin-frontier",
    ], names  # fmt: skip
    local, verdict, move, remote = (attrs(k) for k in kids[1:])
    assert local["localroute.outcome"] == "escalated" and verdict["localroute.verdict"] == "low_confidence"
    assert move["localroute.route"] == "escalated:low_confidence"
    assert kids[4].kind == kids[4].SPAN_KIND_CLIENT and remote["gen_ai.request.model"] == "standin-frontier"
    assert remote["localroute.remote"] is True and remote["gen_ai.usage.output_tokens"] > 0
    # The provider got the trace context of this public request.
    (sent,) = provider.requests
    assert sent.headers["traceparent"].split("-")[1] == root.trace_id.hex()


def test_a_private_request_fails_closed_with_no_remote_span_and_no_data(
    traced: Server, receiver: Receiver, provider: StandinProvider
) -> None:
    provider.requests.clear()
    long = f"Write to {EMAIL} about this. {CANARY} " + "word " * 900  # beyond n_ctx = 512: no local fit
    r = chat(traced, long)
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded", r.text
    assert provider.requests == []
    root, kids = receiver.tree(r.headers["x-request-id"])
    assert attrs(root)["localroute.privacy"] == "private" and attrs(root)["http.response.status_code"] == 400
    assert [k.name for k in kids] == ["localroute.decide", "localroute.attempt"]
    assert attrs(kids[1])["localroute.outcome"] == "error"
    assert not any(k.kind == k.SPAN_KIND_CLIENT for k in kids)


def test_no_prompt_text_or_detected_data_in_any_span(traced: Server, receiver: Receiver) -> None:
    r = chat(traced, f"Mail {EMAIL}: {CANARY}", DEFAULT_MODEL)
    assert r.status_code == 200
    receiver.tree(r.headers["x-request-id"])
    raw = b"".join(receiver.bodies)
    assert receiver.spans() and CANARY.encode() not in raw and EMAIL.encode() not in raw
    assert b"email" not in raw  # not even the kind of data that was found


def test_an_embeddings_request_is_traced_with_genai_attributes_and_no_text(
    traced: Server, receiver: Receiver
) -> None:
    body = {"model": EMBEDDER, "input": [f"{CANARY} first", "second"]}
    r = httpx.post(traced.url + "/v1/embeddings", json=body, timeout=120)
    assert r.status_code == 200, r.text
    used = r.json()["usage"]["prompt_tokens"]
    root, kids = receiver.tree(r.headers["x-request-id"])
    assert root.name == "POST /v1/embeddings" and root.kind == root.SPAN_KIND_SERVER
    a = attrs(root)
    assert (a["gen_ai.operation.name"], a["localroute.api"], a["gen_ai.response.model"]) == (
        "embeddings", "embeddings", EMBEDDER,
    )  # fmt: skip
    assert a["gen_ai.usage.input_tokens"] == used > 0 and a["http.response.status_code"] == 200
    assert [k.name for k in kids] == ["localroute.decide", "localroute.attempt"]
    attempt = attrs(kids[1])
    assert attempt["gen_ai.operation.name"] == "embeddings" and attempt["localroute.rung"] == EMBEDDER
    assert attempt["gen_ai.usage.input_tokens"] == used and attempt["localroute.outcome"] == "ok"
    assert CANARY.encode() not in b"".join(receiver.bodies)


# -- private spans and the collector's address ---------------------------------------------------------


@pytest.fixture(scope="module")
def untrusted_collector(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Receiver]]:
    """A gateway whose `[privacy] trusted_networks` leaves out loopback, where its collector is."""
    receiver = Receiver()
    models = [repo_rung(DEFAULT_MODEL, cache_prompt=False, n_ctx=512, default_max_tokens=8)]
    privacy = {"default": "public", "trusted_networks": ["10.0.0.0/8"]}
    text = conftest.config_text(models=models, privacy=privacy)
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url, "OTEL_BSP_SCHEDULE_DELAY": "50"}
    srv = start_gateway(Path(tmp_path_factory.mktemp("otel-untrusted")), text, env)
    yield srv, receiver
    srv.stop()
    receiver.server.shutdown()


def test_a_collector_outside_trusted_networks_gets_no_private_span(
    untrusted_collector: tuple[Server, Receiver],
) -> None:
    srv, receiver = untrusted_collector
    private = chat(srv, f"Write to {EMAIL}. {CANARY}", DEFAULT_MODEL)
    assert private.status_code == 200, private.text  # private: the e-mail address (as in the test above)
    public = chat(srv, "Say hello.", DEFAULT_MODEL)
    assert public.status_code == 200, public.text
    # The public request ended after the private one: its span is exported in the same or a later batch.
    receiver.tree(public.headers["x-request-id"])
    ids = {attrs(s).get("localroute.request_id") for s in receiver.spans()}
    assert public.headers["x-request-id"] in ids and private.headers["x-request-id"] not in ids
    assert all(attrs(s).get("localroute.privacy") != "private" for s in receiver.spans())
    log = srv.log.read_text(errors="replace")
    assert "private requests are not traced" in log and 'private_spans = \\"always\\"' in log


@pytest.mark.parametrize(
    ("endpoint", "mode", "exported"),
    [
        ("http://127.0.0.1:4318", "trusted", True),
        ("http://localhost:4318", "trusted", True),
        ("http://[::1]:4318/v1/traces", "trusted", True),
        ("http://10.1.2.3:4318", "trusted", False),  # outside loopback
        ("http://otel.example.net:4318", "trusted", False),  # a name could be re-pointed
        ("http://otel.example.net:4318", "always", True),  # the explicit opt-in
        ("http://127.0.0.1:4318", "never", False),
    ],
)
def test_which_collector_gets_private_spans(
    monkeypatch: pytest.MonkeyPatch, endpoint: str, mode: PrivateSpans, exported: bool
) -> None:
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", raising=False)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
    loopback = TrustedNetworks(["127.0.0.0/8", "::1/128"])
    assert private_exported(mode, loopback.__contains__) is exported
