"""RemoteBackend against a real stand-in provider over loopback: success, retries, deadlines, errors."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from localroute.config.models import RemoteModel
from localroute.config.privacy import ALL_KINDS
from localroute.config.schema import Config
from localroute.errors import (
    APIError,
    EngineUnavailableError,
    InvalidRequestError,
    OverloadedError,
    UpstreamError,
)
from localroute.privacy.detect import Detector
from localroute.privacy.guard import CURRENT, EgressGuard, Privacy, PrivacyViolationError
from localroute.protocol.backend import Backend
from localroute.rungs.registry import build_backend
from localroute.rungs.remote import RemoteBackend, RemoteTimeoutError
from tests.standin_fixtures import STANDIN_KEY, standin_fixture  # noqa: F401
from tests.standin_provider import StandinProvider

ENV = {"STANDIN_API_KEY": STANDIN_KEY}
QUESTION = "What is the capital of France, and why is it there?"
ANSWER = "Remote answer to: " + QUESTION[:40]
BODY: dict[str, Any] = {
    "model": "frontier",
    "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": QUESTION}],
    "max_tokens": 64,
}


class RecordingGuard(EgressGuard):
    """The real egress guard, keeping every body it was shown."""

    def __init__(self) -> None:
        super().__init__(Detector(ALL_KINDS))
        self.seen: list[dict[str, Any]] = []

    def __call__(self, body: dict[str, Any]) -> None:
        self.seen.append(body)
        super().__call__(body)


def remote(base_url: str, env: dict[str, str] = ENV, **overrides: Any) -> RemoteBackend:
    """A remote rung with the real egress guard (the only way to build one)."""
    return RemoteBackend(model(base_url, **overrides), env=env, egress_guard=EgressGuard(Detector(ALL_KINDS)))


def model(base_url: str, **overrides: Any) -> RemoteModel:
    fields: dict[str, Any] = {
        "name": "frontier",
        "engine": "remote",
        "base_url": base_url,
        "model": "standin-frontier",
        "api_key_env": "STANDIN_API_KEY",
    }
    return RemoteModel(**{**fields, **overrides})


def complete(backend: RemoteBackend, body: dict[str, Any] = BODY) -> dict[str, Any]:
    async def go() -> dict[str, Any]:
        await backend.start()
        try:
            return await backend.complete(body)
        finally:
            await backend.aclose()

    return asyncio.run(go())


def stream(
    backend: RemoteBackend, body: dict[str, Any] = BODY
) -> tuple[list[dict[str, Any]], Exception | None]:
    """Every chunk the caller received, and the exception that ended the stream (None: clean end)."""

    async def go() -> tuple[list[dict[str, Any]], Exception | None]:
        chunks: list[dict[str, Any]] = []
        await backend.start()
        try:
            async for chunk in backend.stream(body):
                chunks.append(chunk)
        except Exception as exc:
            return chunks, exc
        finally:
            await backend.aclose()
        return chunks, None

    return asyncio.run(go())


def text_of(chunks: list[dict[str, Any]]) -> str:
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(autouse=True)
def public_request() -> Iterator[None]:
    """The router marked this request public: the guard lets it leave (unless it carries private data)."""
    token = CURRENT.set(Privacy(False, "public-header"))
    yield
    CURRENT.reset(token)


@pytest.fixture(autouse=True)
def key_never_logged(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    caplog.set_level(logging.DEBUG)
    yield
    assert STANDIN_KEY not in caplog.text


# -- success -------------------------------------------------------------------------------------------


def test_complete_sends_provider_model_and_key(standin: StandinProvider) -> None:
    backend = remote(standin.base_url)
    result = complete(backend)
    assert result["choices"][0]["message"]["content"] == ANSWER
    assert result["id"].startswith("chatcmpl-")
    (req,) = standin.requests
    assert req.path == "/v1/chat/completions"
    assert req.headers["authorization"] == f"Bearer {STANDIN_KEY}"
    assert req.body == {**BODY, "model": "standin-frontier", "stream": False}
    assert BODY["model"] == "frontier"  # the caller's body is not mutated
    assert backend.attempts == 1
    health = backend.health()
    assert health["state"] == "ready" and health["served"] == 1 and health["failures"] == 0
    assert (health["engine"], health["host"], health["model"]) == ("remote", "127.0.0.1", "standin-frontier")


def test_stream_joins_to_answer_with_usage_and_logprobs(standin: StandinProvider) -> None:
    body = {**BODY, "stream_options": {"include_usage": True}, "logprobs": True}
    backend = remote(standin.base_url)
    chunks, error = stream(backend, body)
    assert error is None
    assert text_of(chunks) == ANSWER
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == len(ANSWER.split())
    lps = [
        lp
        for c in chunks
        if c["choices"] and c["choices"][0]["logprobs"]
        for lp in c["choices"][0]["logprobs"]["content"]
    ]
    assert "".join(lp["token"] for lp in lps) == ANSWER and {lp["logprob"] for lp in lps} == {-0.05}
    assert standin.requests[0].body["stream"] is True
    assert backend.attempts == 1 and backend.health()["served"] == 1


def test_no_authorization_header_without_api_key_env() -> None:
    with StandinProvider() as provider:
        complete(remote(provider.base_url, api_key_env=None))
        assert "authorization" not in provider.requests[0].headers


def test_registry_builds_a_remote_backend() -> None:
    cfg = model("https://api.example.com/v1/")
    guard = EgressGuard(Detector(ALL_KINDS))
    backend = build_backend(Config(models=[cfg]), cfg, Path("."), guard)
    assert isinstance(backend, RemoteBackend) and isinstance(backend, Backend)
    assert backend._egress_guard is guard  # the registry hands the guard to the only egress
    assert backend.url == "https://api.example.com/v1/chat/completions"
    assert backend.health()["host"] == "api.example.com"


# -- disabled ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("env", [{}, {"STANDIN_API_KEY": ""}])
def test_missing_key_disables_without_network(
    standin: StandinProvider, env: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    backend = remote(standin.base_url, env)
    health = backend.health()
    assert health["state"] == "unavailable"
    assert health["last_error"] == "API key variable STANDIN_API_KEY is not set"

    async def go() -> None:
        await backend.start()
        await backend.start()
        with pytest.raises(EngineUnavailableError) as info:
            await backend.complete(BODY)
        assert info.value.code == "remote_disabled" and "STANDIN_API_KEY" in info.value.message
        with pytest.raises(EngineUnavailableError) as info:
            async for _ in backend.stream(BODY):
                pass
        assert info.value.code == "remote_disabled"
        await backend.aclose()

    asyncio.run(go())
    warnings = [r for r in caplog.records if r.name == "localroute.remote" and r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "STANDIN_API_KEY" in warnings[0].getMessage()
    assert standin.requests == [] and backend.attempts == 0


# -- retries -------------------------------------------------------------------------------------------


def test_retries_503_then_succeeds(standin: StandinProvider) -> None:
    standin.set("fail", status=503, times=2)
    backend = remote(standin.base_url)
    assert complete(backend)["choices"][0]["message"]["content"] == ANSWER
    assert backend.attempts == 3 and len(standin.requests) == 3
    assert len(backend.retry_delays) == 2


def test_5xx_after_retries_is_unavailable(standin: StandinProvider) -> None:
    standin.set("fail", status=502)
    backend = remote(standin.base_url, max_retries=1)
    with pytest.raises(EngineUnavailableError) as info:
        complete(backend)
    assert info.value.code == "remote_unavailable" and "frontier" in info.value.message
    assert backend.attempts == 2 and len(standin.requests) == 2
    # /health shows the kind of failure only: a provider's text can echo request content.
    assert backend.health()["failures"] == 1
    assert backend.health()["last_error"] == "EngineUnavailableError: remote_unavailable"


def test_429_retry_after_is_honoured(standin: StandinProvider) -> None:
    standin.set("fail", status=429, retry_after=0.5, times=1)
    backend = remote(standin.base_url)
    complete(backend)
    assert list(backend.retry_delays) == [0.5]  # the backoff alone would wait 0.1-0.2 s
    assert backend.attempts == 2


def test_429_after_retries_is_overloaded_with_retry_after(standin: StandinProvider) -> None:
    standin.set("fail", status=429, retry_after=3)
    backend = remote(standin.base_url, max_retries=0)
    with pytest.raises(OverloadedError) as info:
        complete(backend)
    assert info.value.status == 429 and info.value.headers == {"Retry-After": "3"}
    assert info.value.code == "remote_rate_limited" and backend.attempts == 1


def test_a_404_is_the_operators_mistake_and_not_retried(standin: StandinProvider) -> None:
    # A wrong base_url or model in models.toml: not the client's fault, so not a 404 to the client.
    standin.set("fail", status=404, message="no such model", code="model_not_found")
    backend = remote(standin.base_url)
    with pytest.raises(UpstreamError) as info:
        complete(backend)
    assert info.value.status == 502 and info.value.code == "remote_not_found"
    assert backend.attempts == 1 and len(standin.requests) == 1


@pytest.mark.parametrize("status", [400, 422])
def test_client_errors_are_not_retried(standin: StandinProvider, status: int) -> None:
    standin.set("fail", status=status, message="temperature is out of range", code="invalid_value")
    backend = remote(standin.base_url)
    with pytest.raises(InvalidRequestError) as info:
        complete(backend)
    assert info.value.code == "invalid_value" and info.value.status == 400
    assert "frontier" in info.value.message and "temperature is out of range" in info.value.message
    assert backend.attempts == 1 and len(standin.requests) == 1


def test_rejected_credentials_are_502_and_never_echo_the_key(standin: StandinProvider) -> None:
    # The stand-in echoes the key it got in its 401 message, as real providers do.
    wrong = "sk-wrong-key-0123456789"
    backend = remote(standin.base_url, {"STANDIN_API_KEY": wrong})
    with pytest.raises(UpstreamError) as info:
        complete(backend)
    error = info.value
    assert error.status == 502 and "rejected localroute's credentials" in error.message
    dumped = json.dumps([error.body(), str(error), repr(backend), backend.health()])
    assert wrong not in dumped and backend.attempts == 1
    standin.set("fail", status=401, message=f"Incorrect API key provided: {STANDIN_KEY}")
    with pytest.raises(UpstreamError) as info:
        complete(remote(standin.base_url))
    assert STANDIN_KEY not in json.dumps([info.value.body(), str(info.value)])


def test_provider_messages_never_carry_the_key(standin: StandinProvider) -> None:
    standin.set("fail", status=400, message=f"key {STANDIN_KEY} may not use this model")
    with pytest.raises(InvalidRequestError) as info:
        complete(remote(standin.base_url))
    assert STANDIN_KEY not in json.dumps(info.value.body()) and "[redacted]" in info.value.message


def test_standin_models_and_auth(standin: StandinProvider) -> None:
    ok = httpx.get(standin.base_url + "/models", headers={"Authorization": f"Bearer {STANDIN_KEY}"})
    assert ok.status_code == 200 and ok.json()["data"][0]["id"] == standin.model
    denied = httpx.get(standin.base_url + "/models")
    assert denied.status_code == 401 and denied.json()["error"]["code"] == "invalid_api_key"
    assert [r.path for r in standin.requests] == ["/v1/models", "/v1/models"]


def test_reset_connection_is_a_connection_error(standin: StandinProvider) -> None:
    standin.set("reset", times=1)
    with pytest.raises(httpx.TransportError):
        httpx.post(
            standin.base_url + "/chat/completions",
            json=BODY,
            headers={"Authorization": f"Bearer {STANDIN_KEY}"},
        )
    assert len(standin.requests) == 1


def test_reset_is_retried(standin: StandinProvider) -> None:
    standin.set("reset", times=1)
    backend = remote(standin.base_url)
    assert complete(backend)["choices"][0]["message"]["content"] == ANSWER
    assert backend.attempts == 2 and len(standin.requests) == 2


def test_reset_every_time_is_unavailable(standin: StandinProvider) -> None:
    standin.set("reset")
    backend = remote(standin.base_url, max_retries=1)
    chunks, error = stream(backend)
    assert chunks == [] and isinstance(error, EngineUnavailableError)
    assert error.code == "remote_unavailable" and backend.attempts == 2


def test_connect_refused_is_unavailable() -> None:
    backend = remote(f"http://127.0.0.1:{closed_port()}/v1", max_retries=1)
    with pytest.raises(EngineUnavailableError) as info:
        complete(backend)
    assert info.value.code == "remote_unavailable" and "could not be reached" in info.value.message
    assert backend.attempts == 2


# -- streams ---------------------------------------------------------------------------------------------


def test_stream_break_after_first_chunks_is_not_retried(standin: StandinProvider) -> None:
    standin.set("stream_break", chunks=2)
    backend = remote(standin.base_url)
    chunks, error = stream(backend)
    assert len(chunks) == 2 and text_of(chunks) == "Remote"
    assert isinstance(error, APIError) and "frontier" in error.message
    assert backend.attempts == 1 and len(standin.requests) == 1
    assert backend.health()["served"] == 0 and backend.health()["failures"] == 1


def test_stream_break_before_first_chunk_is_retried(standin: StandinProvider) -> None:
    standin.set("stream_break", chunks=0, times=1)
    backend = remote(standin.base_url)
    chunks, error = stream(backend)
    assert error is None and text_of(chunks) == ANSWER
    assert backend.attempts == 2 and len(standin.requests) == 2


def test_stream_error_status_before_first_chunk(standin: StandinProvider) -> None:
    standin.set("fail", status=400, message="bad messages")
    chunks, error = stream(remote(standin.base_url))
    assert chunks == [] and isinstance(error, InvalidRequestError)


# -- timeouts ------------------------------------------------------------------------------------------


@pytest.mark.timing
def test_slow_beyond_read_timeout_times_out_after_retries(standin: StandinProvider) -> None:
    standin.set("slow", delay_s=5)
    backend = remote(standin.base_url, read_timeout_s=0.2, max_retries=1)
    with pytest.raises(RemoteTimeoutError) as info:
        complete(backend)
    assert info.value.status == 504 and info.value.code == "remote_timeout"
    assert backend.attempts == 2 and len(standin.requests) == 2


@pytest.mark.timing
@pytest.mark.parametrize("streaming", [False, True])
def test_hang_is_cut_by_the_total_deadline(standin: StandinProvider, streaming: bool) -> None:
    standin.set("hang")
    backend = remote(standin.base_url, total_timeout_s=1, read_timeout_s=60)
    if streaming:
        chunks, error = stream(backend)
        assert chunks == []
    else:
        with pytest.raises(RemoteTimeoutError) as info:
            complete(backend)
        error = info.value
    assert isinstance(error, RemoteTimeoutError) and "total_timeout_s=1s" in error.message  # not the read's
    assert backend.attempts == 1


@pytest.mark.timing
def test_drip_within_read_timeout_is_cut_by_the_total_deadline(standin: StandinProvider) -> None:
    standin.set("drip", delay_s=0.02)
    backend = remote(standin.base_url, total_timeout_s=1, read_timeout_s=2)
    _, error = stream(backend)
    assert isinstance(error, RemoteTimeoutError) and "total_timeout_s" in error.message
    assert backend.attempts == 1


def test_drip_completes_when_the_deadline_allows(standin: StandinProvider) -> None:
    standin.set("drip", delay_s=0.0005)
    backend = remote(standin.base_url, read_timeout_s=2)
    assert complete(backend)["choices"][0]["message"]["content"] == ANSWER


# -- egress guard ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("streaming", [False, True])
def test_egress_guard_refusal_propagates_before_any_send(standin: StandinProvider, streaming: bool) -> None:
    guard = RecordingGuard()
    CURRENT.set(Privacy(True, "header"))  # a private request that reached the remote rung anyway
    backend = RemoteBackend(model(standin.base_url), env=ENV, egress_guard=guard)
    if streaming:
        _, error = stream(backend)
        assert isinstance(error, PrivacyViolationError)
    else:
        with pytest.raises(PrivacyViolationError):
            complete(backend)
    assert standin.requests == [] and backend.attempts == 0
    assert guard.seen[0]["model"] == "standin-frontier"
    assert backend.health()["failures"] == 0


def test_egress_guard_refuses_private_data_in_a_public_request(standin: StandinProvider) -> None:
    body = {**BODY, "messages": [{"role": "user", "content": "Mail jane.doe@example.com the answer."}]}
    with pytest.raises(PrivacyViolationError, match="email"):
        complete(remote(standin.base_url), body)
    assert standin.requests == []


def test_egress_guard_sees_every_attempt(standin: StandinProvider) -> None:
    guard = RecordingGuard()
    standin.set("fail", status=503, times=1)
    complete(RemoteBackend(model(standin.base_url), env=ENV, egress_guard=guard))
    assert len(guard.seen) == 2 == len(standin.requests)


# -- malformed provider output (the stand-in speaks valid OpenAI, so a mock transport plays broken) ---------


def broken(content: bytes, content_type: str) -> httpx.MockTransport:
    return httpx.MockTransport(
        lambda _: httpx.Response(200, content=content, headers={"content-type": content_type})
    )


def test_malformed_json_is_upstream_malformed() -> None:
    backend = RemoteBackend(
        model("http://provider.test/v1"),
        env=ENV,
        egress_guard=EgressGuard(Detector(ALL_KINDS)),
        transport=broken(b"{not json", "application/json"),
    )
    with pytest.raises(UpstreamError) as info:
        complete(backend)
    assert info.value.code == "upstream_malformed" and backend.attempts == 1


@pytest.mark.parametrize(
    ("sse", "code"),
    [
        (b"data: {not json\n\n", "upstream_malformed"),
        (b'data: {"error": {"message": "overloaded", "type": "server_error", "code": "boom"}}\n\n', "boom"),
        (b'data: {"choices": []}\n\n', "upstream_incomplete"),
    ],
)
def test_malformed_or_failed_streams(sse: bytes, code: str) -> None:
    backend = RemoteBackend(
        model("http://provider.test/v1", max_retries=0),
        env=ENV,
        egress_guard=EgressGuard(Detector(ALL_KINDS)),
        transport=broken(sse, "text/event-stream"),
    )
    _, error = stream(backend)
    assert isinstance(error, APIError) and error.code == code
