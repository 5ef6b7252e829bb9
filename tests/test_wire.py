"""The wire types describe what the gateway really sends and writes: a real gateway's answers, stream
chunks, errors, model list, decision, health and stats, and the audit records it wrote for them,
validate against `protocol.wire` and `protocol.records` (pydantic, strict: no coercion). The pure
builders (error bodies, the stats summary) are checked without a server."""

from __future__ import annotations

import json
from typing import Any, get_args

import httpx
import pytest
from pydantic import TypeAdapter, ValidationError

from localroute import errors
from localroute.observe.stats import summarize
from localroute.protocol import backend, records, wire
from tests.conftest import Server
from tests.test_stats import NOW, RECORDS

pytestmark = pytest.mark.timeout(300)

CHAT = {"model": "auto", "messages": [{"role": "user", "content": "Say hi"}], "max_tokens": 4}


def check(t: Any, value: object) -> None:
    TypeAdapter(t).validate_python(value, strict=True)


def test_the_validation_bites() -> None:
    ok = {"error": {"message": "m", "type": "server_error", "param": None, "code": None}}
    check(wire.ErrorBody, ok)
    for bad in (
        {"error": {**ok["error"], "extra": 1}},  # closed
        {"error": {**ok["error"], "type": "oops"}},  # not an OpenAI error type
        {"error": {**ok["error"], "code": 404}},  # strict: no int for a string
    ):
        with pytest.raises(ValidationError):
            check(wire.ErrorBody, bad)
    chunk = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m", "choices": []}
    check(wire.ChatCompletionChunk, chunk)
    with pytest.raises(ValidationError):
        check(wire.ChatCompletion, chunk)


def test_every_error_body_is_an_error_body() -> None:
    kinds = [errors.APIError]
    while kinds:
        kind = kinds.pop()
        kinds += kind.__subclasses__()
        exc = kind.__new__(kind)  # through the base's constructor: some subclasses take other arguments
        errors.APIError.__init__(exc, "message", param="p")
        check(wire.ErrorBody, exc.body())


def test_engine_states_agree_with_the_backend_protocol() -> None:
    assert get_args(wire.EngineState) == get_args(backend.EngineState)


def test_the_stats_summary_is_stats() -> None:
    check(records.Stats, summarize(RECORDS, None, NOW))
    check(records.Stats, summarize([], None, NOW))


def _events(r: httpx.Response) -> list[Any]:
    lines = [line.removeprefix("data: ") for line in r.text.splitlines() if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    return [json.loads(line) for line in lines[:-1]]


def test_the_gateway_answers_and_records_as_typed(server: Server) -> None:
    with httpx.Client(base_url=server.url, timeout=120) as c:
        answer = c.post("/v1/chat/completions", json={**CHAT, "logprobs": True})
        assert answer.status_code == 200, answer.text
        check(wire.ChatCompletion, answer.json())
        assert answer.json()["choices"][0]["logprobs"]["content"]  # the logprobs were checked too

        stream = c.post(
            "/v1/chat/completions",
            json={**CHAT, "stream": True, "logprobs": True, "stream_options": {"include_usage": True}},
        )
        assert stream.status_code == 200, stream.text
        chunks = _events(stream)
        for chunk in chunks:
            check(wire.ChatCompletionChunk, chunk)
        assert chunks[-1]["usage"]["total_tokens"] > 0

        for bad in (c.post("/v1/chat/completions", json={**CHAT, "model": "nope"}),
                    c.post("/v1/chat/completions", content=b"{")):  # fmt: skip
            assert bad.status_code in (400, 404)
            check(wire.ErrorBody, bad.json())

        check(wire.ModelList, c.get("/v1/models").json())
        check(wire.Explanation, c.post("/v1/route/explain", json=CHAT).json())
        check(wire.Health, c.get("/health").json())
        check(records.Stats, c.get("/v1/localroute/stats").json())

    written = [json.loads(line) for line in server.audit.read_text().splitlines()]
    assert len(written) >= 3  # the two answers and the unknown model (bad JSON is refused unrecorded)
    for rec in written:
        check(records.RequestRecord, rec)
    served = [r for r in written if r["status"] == 200]
    assert served and all("decision" in r and r["attempts"] for r in served)
