"""Deadlines and clients that leave, through a real gateway, driven by events the test controls: a
stand-in provider that hangs or drips, a stand-in local engine (vLLM's, on loopback) that answers at
once, a stream the test stops reading. Nothing here depends on how fast the model or the box runs:
a deadline is only ever raced by something that cannot finish (a hang), and the small model is only
used under the default deadline of 600 s. Marked `timing`: CI runs them again under a CPU hog.

Where a test needs the gateway's deadline to be the only thing that can end a call, the remote
rung's own timeouts are an hour: a wrong answer would show as the client's 60 s timeout, a failure."""

from __future__ import annotations

import json
import os
import signal
import socket
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests import conftest
from tests.conftest import (
    Server,
    answering,
    remote_rung,
    start_gateway,
    wait_until,
    worker_health,
)
from tests.endpoint_servers import FakeEngine
from tests.standin_fixtures import STANDIN_KEY
from tests.standin_provider import StandinProvider

pytestmark = pytest.mark.timing

MODEL = "smollm2-135m"
LOCAL = "gpu-local"  # the stand-in local engine: instant, so a 3 s deadline cannot catch it
REMOTE = conftest.REMOTE_RUNG
KEY_ENV = "LR_DEADLINE_KEY"
COUNT_TO = "Count from 1 to 1000, separated by commas: 1, 2, 3,"


@pytest.fixture(scope="module")
def provider() -> Iterator[StandinProvider]:
    with StandinProvider(api_key=STANDIN_KEY) as p:
        yield p


@pytest.fixture(autouse=True)
def fresh(provider: StandinProvider) -> None:
    provider.set("ok")
    provider.requests.clear()


@pytest.fixture(scope="module")
def fake_local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The vLLM stand-in served directly (a GPU engine cannot run here): its root URL."""
    log = tmp_path_factory.mktemp("fake-local") / "fake.log"
    engine = FakeEngine(model="fake-org/Local-7B", args=("--max-model-len", "2048"), log=log).start()
    try:
        yield engine.url
    finally:
        engine.stop()


@pytest.fixture(scope="module")
def short(
    tmp_path_factory: pytest.TempPathFactory, provider: StandinProvider, fake_local: str
) -> Iterator[Server]:
    """A gateway whose every request must end within 3 s, in front of the stand-ins only."""
    models = [
        {"name": LOCAL, "engine": "vllm", "tier": 0, "model": "fake-org/Local-7B", "url": fake_local + "/v1"},
        remote_rung(provider.base_url, KEY_ENV, max_retries=0, read_timeout_s=3600, total_timeout_s=3600),
    ]
    # `auto` answers from the stand-in are always judged unsure: they escalate to the remote rung.
    cascade = {"min_mean_logprob": -0.0001, "min_length_tokens": 0}
    text = conftest.config_text(server={"request_timeout_s": 3}, models=models, cascade=cascade)
    srv = start_gateway(tmp_path_factory.mktemp("short"), text, {KEY_ENV: STANDIN_KEY}, until=answering)
    yield srv
    srv.stop()


def chat(srv: Server, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(srv.url + "/v1/chat/completions", json=body, timeout=60)


def records(srv: Server) -> list[dict[str, Any]]:
    return [json.loads(x) for x in srv.audit.read_text().splitlines()]


def test_the_total_deadline_holds_against_a_hanging_upstream(
    short: Server, provider: StandinProvider
) -> None:
    provider.set("hang")
    r = chat(short, {"model": REMOTE, "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 504 and r.json()["error"]["code"] == "deadline_exceeded"
    assert provider.requests  # it was the upstream that held it


def test_the_deadline_ends_a_stalled_stream_with_an_error_event(
    short: Server, provider: StandinProvider
) -> None:
    provider.set("stall", chunks=3)  # three events at once, then silence: only the deadline ends it
    body = {"model": REMOTE, "messages": [{"role": "user", "content": "tell me a story"}], "stream": True}
    with httpx.stream("POST", short.url + "/v1/chat/completions", json=body, timeout=60) as r:
        assert r.status_code == 200
        events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert len(events) >= 2 and events[-1] != "[DONE]"  # what came, then the deadline's error event
    assert json.loads(events[-1])["error"]["code"] == "deadline_exceeded"
    rec = records(short)[-1]
    assert rec["status"] == 504 and rec["error"] == "deadline_exceeded"


def test_an_escalation_still_thinking_at_the_deadline_keeps_the_local_answer(
    short: Server, provider: StandinProvider
) -> None:
    """The local answer is the stand-in's (instant); the escalation hangs until the deadline."""
    provider.set("hang")
    r = chat(short, {"model": "auto", "messages": [{"role": "user", "content": "Say hi"}], "max_tokens": 8})
    assert r.status_code == 200, r.text
    assert r.headers["x-localroute-route"] == "kept:escalation_failed"
    assert r.headers["x-localroute-model"] == LOCAL and r.json()["choices"][0]["message"]["content"]
    assert len(provider.requests) == 1  # the escalation was tried, and held


def test_a_body_trickled_past_the_deadline_is_a_408(short: Server) -> None:
    """request_timeout_s = 3 covers reading the body too: a slow sender holds nothing forever."""
    head = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", short.port), timeout=60) as s:
        s.sendall(head + b'{"model": ')
        s.settimeout(0.5)
        answer = b""
        for _ in range(240):  # a liveness bound (~2 min of trickling), not a measure of speed
            if b"\r\n\r\n" in answer:
                break
            try:
                s.sendall(b" ")  # one byte at a time, never the whole body
                answer += s.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                break
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]


# -- the real model, under the default deadline ------------------------------------------------------------


def test_a_client_that_leaves_mid_stream_is_recorded_as_gone_with_its_compute(server: Server) -> None:
    """Recorded as 499, charged for the tokens and compute the engine spent before the cut (the
    usage chunk never came), and the engine stops decoding: its 400 tokens are not all sampled."""
    worker = server.health()["engines"][MODEL]["pid"]  # type: ignore[index]
    before = worker_health(worker)["sampled"]
    body = {"model": MODEL, "temperature": 0, "stream": True, "max_tokens": 400,
            "messages": [{"role": "user", "content": COUNT_TO}]}  # fmt: skip
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, timeout=120) as r:
        lines = r.iter_lines()  # held: a discarded iterator would close the response early
        rid = r.headers["x-request-id"]
        got = [line for _, line in zip(range(12), lines, strict=False) if line.startswith("data: ")]
        assert len(got) >= 6 and "data: [DONE]" not in got
        os.kill(worker, signal.SIGSTOP)  # the engine cannot run ahead while the client leaves
    try:

        def recorded() -> dict[str, Any] | None:
            return next((x for x in records(server) if x["id"] == rid), None)

        assert wait_until(lambda: recorded() is not None, timeout=60)
    finally:
        os.kill(worker, signal.SIGCONT)
    rec = recorded()
    assert rec is not None and (rec["status"], rec["error"]) == (499, "client_gone")
    assert rec["tokens"]["prompt"] > 5 and rec["tokens"]["completion"] >= len(got) - 2
    assert rec["compute_s"] > 0 and rec["attempts"][0]["compute_s"] == rec["compute_s"]
    assert rec["attempts"][0]["tokens"]["completion"] == rec["tokens"]["completion"]
    assert wait_until(lambda: not worker_health(worker)["busy"], timeout=120)
    assert worker_health(worker)["sampled"] - before < 400  # cancelled, not decoded to the end
