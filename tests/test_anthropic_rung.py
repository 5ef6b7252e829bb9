"""The native Anthropic rung against the loopback Anthropic stand-in (no gateway), and the translation
between Anthropic's Messages requests and the internal chat form, both directions."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest

from localroute.config.models import RemoteModel, capabilities
from localroute.config.privacy import ALL_KINDS
from localroute.config.schema import parse_config
from localroute.errors import EngineUnavailableError, InvalidRequestError, OverloadedError, UpstreamError
from localroute.privacy.detect import Detector
from localroute.privacy.guard import CURRENT, EgressGuard, Privacy, PrivacyViolationError
from localroute.protocol.anthropic import MessagesRequest, parse_messages_request
from localroute.protocol.anthropic_answer import ChunkReader, MessagesStream
from localroute.protocol.anthropic_outbound import messages_body
from localroute.rungs.anthropic import AnthropicBackend
from localroute.rungs.registry import build_backend
from tests.anthropic_standin import AnthropicStandin
from tests.anthropic_standin import message_events as anthropic_events
from tests.test_remote import RecordingGuard, text_of

KEY = "sk-ant-standin-77aa-do-not-leak"
ENV = {"CLAUDE_KEY": KEY}
BODY: dict[str, Any] = {
    "model": "claude",
    "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello there"}],
    "max_tokens": 64,
}


@pytest.fixture
def claude() -> Iterator[AnthropicStandin]:
    with AnthropicStandin(api_key=KEY) as p:
        yield p


@pytest.fixture(autouse=True)
def public_request() -> Iterator[None]:
    token = CURRENT.set(Privacy(False, "public-header"))
    yield
    CURRENT.reset(token)


@pytest.fixture(autouse=True)
def key_never_logged(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    caplog.set_level(logging.DEBUG)
    yield
    assert KEY not in caplog.text


def model(base_url: str, **over: Any) -> RemoteModel:
    fields = {
        "name": "claude",
        "engine": "remote",
        "api": "anthropic",
        "base_url": base_url,
        "model": "claude-standin",
        "api_key_env": "CLAUDE_KEY",
        "max_retries": 0,
    }
    return RemoteModel(**{**fields, **over})


def rung(base_url: str, guard: EgressGuard | None = None, **over: Any) -> AnthropicBackend:
    return AnthropicBackend(
        model(base_url, **over), env=ENV, egress_guard=guard or EgressGuard(Detector(ALL_KINDS))
    )


def run(backend: AnthropicBackend, body: dict[str, Any] = BODY, *, stream: bool = False) -> Any:
    async def go() -> Any:
        await backend.start()
        try:
            if stream:
                return [c async for c in backend.stream({**body, "stream": True})]
            return await backend.complete(body)
        finally:
            await backend.aclose()

    return asyncio.run(go())


def test_the_registry_builds_it_from_models_toml(claude: AnthropicStandin) -> None:
    fields = (
        'name = "claude"',
        'engine = "remote"',
        'api = "anthropic"',
        f'base_url = "{claude.base_url}"',
        'model = "c"',
    )
    text = "\n".join(("[[models]]", *fields))
    cfg = parse_config(text)
    m = cfg.models[0]
    assert isinstance(m, RemoteModel) and m.api == "anthropic"
    assert capabilities(m) == {"tools", "vision"}  # no JSON mode, logprobs or n: routed elsewhere
    backend = build_backend(cfg, m, cfg.base_dir, EgressGuard(Detector(ALL_KINDS)))
    assert isinstance(backend, AnthropicBackend) and backend.url == claude.base_url + "/messages"


def test_complete_and_stream_give_the_same_chat_answer(claude: AnthropicStandin) -> None:
    guard = RecordingGuard()
    done = run(rung(claude.base_url, guard))
    chunks = run(rung(claude.base_url), stream=True)
    text = done["choices"][0]["message"]["content"]
    assert text == "Claude stand-in answer to: Hello there" == text_of(chunks)
    assert (
        done["choices"][0]["finish_reason"] == "stop" and chunks[-2]["choices"][0]["finish_reason"] == "stop"
    )
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == done["usage"]
    sent = claude.requests[0]
    assert sent.path == "/v1/messages" and sent.headers["x-api-key"] == KEY
    assert sent.headers["anthropic-version"] == "2023-06-01" and "authorization" not in sent.headers
    assert sent.body == {
        "model": "claude-standin",
        "max_tokens": 64,
        "stream": False,
        "system": [{"type": "text", "text": "Be brief."}],
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Hello there"}]}],
    }
    assert guard.seen == [sent.body]  # the guard saw exactly what left


def test_the_guard_refuses_before_anything_is_sent(claude: AnthropicStandin) -> None:
    CURRENT.set(Privacy(True, "header"))
    with pytest.raises(PrivacyViolationError):
        run(rung(claude.base_url))
    CURRENT.set(Privacy(False, "public-header"))
    leaky = {**BODY, "messages": [{"role": "user", "content": "Mail jane.doe@example.com"}]}
    with pytest.raises(PrivacyViolationError):
        run(rung(claude.base_url), leaky, stream=True)
    assert claude.requests == []


@pytest.mark.parametrize(
    ("status", "error", "tries"),
    [
        (529, EngineUnavailableError, 2),
        (500, EngineUnavailableError, 2),
        (429, OverloadedError, 2),
        (400, InvalidRequestError, 1),
        (401, UpstreamError, 1),
    ],
)
def test_errors_map_to_what_fallback_expects(
    claude: AnthropicStandin, status: int, error: type[Exception], tries: int
) -> None:
    claude.set("fail", status=status, message=f"stand-in says no with {KEY}")
    with pytest.raises(error) as info:
        run(rung(claude.base_url, max_retries=1))
    assert len(claude.requests) == tries  # 529 and 5xx are retried; a client error is not
    assert KEY not in str(info.value)


def test_a_529_then_success_is_retried(claude: AnthropicStandin) -> None:
    claude.set("fail", status=529, times=1)
    assert run(rung(claude.base_url, max_retries=1))["choices"][0]["message"]["content"]
    assert len(claude.requests) == 2


def test_a_missing_version_header_is_what_anthropic_refuses(claude: AnthropicStandin) -> None:
    """The stand-in refuses what Anthropic refuses: the rung passes only because it sends the header."""
    import httpx

    r = httpx.post(claude.base_url + "/messages", json=BODY, headers={"x-api-key": KEY})
    assert r.status_code == 400 and r.json()["error"]["message"] == "anthropic-version: header is required"


# -- translation ------------------------------------------------------------------------------------


def test_a_messages_request_in_the_chat_form() -> None:
    req = parse_messages_request(b"""{
      "model": "auto", "max_tokens": 50, "stream": true, "stop_sequences": ["END"],
      "metadata": {"user_id": "u-1"}, "temperature": 0.5, "cache_control": {"type": "ephemeral"},
      "system": [{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
      "tools": [{"name": "look", "input_schema": {"type": "object"}}],
      "tool_choice": {"type": "any", "disable_parallel_tool_use": true},
      "messages": [
        {"role": "user", "content": [{"type": "text", "text": "What is this?"},
          {"type": "image",
           "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}]},
        {"role": "assistant", "content": [{"type": "text", "text": "Let me look."},
          {"type": "tool_use", "id": "toolu_1", "name": "look", "input": {"q": 1}}]},
        {"role": "user", "content": [
          {"type": "tool_result", "tool_use_id": "toolu_1", "is_error": true, "content": [
            {"type": "text", "text": "no access"},
            {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}}]},
          {"type": "text", "text": "Try again"}]}
      ]}""")
    chat = req.to_chat().model_dump(exclude_none=True)
    assert chat["max_tokens"] == 50 and chat["stop"] == ["END"] and chat["user"] == "u-1"
    assert chat["stream"] is True and chat["stream_options"]["include_usage"] is True
    assert chat["tool_choice"] == "required" and chat["parallel_tool_calls"] is False
    assert chat["tools"] == [
        {"type": "function", "function": {"name": "look", "parameters": {"type": "object"}}}
    ]
    roles = [m["role"] for m in chat["messages"]]
    assert roles == ["system", "user", "assistant", "tool", "user"]
    assert chat["messages"][1]["content"][1]["image_url"]["url"] == "data:image/png;base64,iVBORw0KGgo="
    assert chat["messages"][2]["tool_calls"][0]["function"] == {"name": "look", "arguments": '{"q": 1}'}
    assert chat["messages"][3] == {"role": "tool", "tool_call_id": "toolu_1", "content": "Error: no access"}
    assert chat["messages"][4]["content"] == [
        {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
        {"type": "text", "text": "Try again"},
    ]


def test_the_chat_form_back_as_a_messages_request_is_the_same_request() -> None:
    raw = {
        "model": "m",
        "max_tokens": 50,
        "stop_sequences": ["END"],
        "temperature": 0.5,
        "system": [{"type": "text", "text": "Be brief."}],
        "metadata": {"user_id": "u-1"},
        "tools": [{"name": "look", "input_schema": {"type": "object"}}],
        "tool_choice": {"type": "tool", "name": "look", "disable_parallel_tool_use": True},
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "Hi"}]},
            {
                "role": "assistant",
                "content": [{"type": "tool_use", "id": "t1", "name": "look", "input": {"q": 1}}],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "t1", "content": "42"},
                    {"type": "text", "text": "Go on"},
                ],
            },
        ],
    }
    chat = MessagesRequest.model_validate(raw).to_chat().remote_body("m", None)
    assert messages_body(chat, "m", 1024) == {**raw, "stream": False}


@pytest.mark.parametrize("field", ["seed", "logprobs", "presence_penalty", "reasoning_effort"])
def test_what_the_messages_api_cannot_carry_is_refused_by_name(field: str) -> None:
    value = {"seed": 1, "logprobs": True, "presence_penalty": 0.5, "reasoning_effort": "high"}[field]
    with pytest.raises(InvalidRequestError) as info:
        messages_body({**BODY, field: value}, "m", 64)
    assert info.value.param == field


def _parsed(raw: bytes) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for e in raw.decode().split("\n\n"):
        if e:
            name, data = e.split("\n")
            out.append((name.removeprefix("event: "), json.loads(data.removeprefix("data: "))))
    return out


def test_anthropic_events_through_the_chat_form_and_back_are_the_same_events() -> None:
    """The rung reads Anthropic's events into chat chunks; the surface writes chat chunks as Anthropic's
    events: both ways, a message with text and two tool uses comes out block for block."""
    message = {
        "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-standin",
        "content": [{"type": "text", "text": "Looking it up."},
                    {"type": "tool_use", "id": "toolu_a", "name": "get_weather", "input": {"city": "Paris"}},
                    {"type": "tool_use", "id": "toolu_b", "name": "get_time", "input": {"zone": "CET"}}],
        "stop_reason": "tool_use", "stop_sequence": None, "usage": {"input_tokens": 9, "output_tokens": 21},
    }  # fmt: skip
    sent = _parsed(b"".join(anthropic_events(message)))
    reader, out = ChunkReader(), MessagesStream()
    raw = b"".join(out.feed(c) for _, data in sent for c in reader.read(data)) + out.close()
    got = _parsed(raw)
    assert [n for n, _ in got] == [n for n, _ in sent]
    blocks = [d["content_block"] for n, d in got if n == "content_block_start"]
    assert blocks == [{"type": "text", "text": ""}] + [{**b, "input": {}} for b in message["content"][1:]]
    deltas = {}
    for n, d in got:
        if n == "content_block_delta":
            piece = d["delta"].get("text") or d["delta"].get("partial_json")
            deltas[d["index"]] = deltas.get(d["index"], "") + piece
    assert deltas[0] == "Looking it up."
    assert [json.loads(deltas[i]) for i in (1, 2)] == [{"city": "Paris"}, {"zone": "CET"}]
    end = got[-2][1]
    assert end["delta"] == {"stop_reason": "tool_use", "stop_sequence": None}
    assert end["usage"] == {"input_tokens": 9, "output_tokens": 21}


def test_an_empty_stream_is_still_a_whole_message() -> None:
    names = [n for n, _ in _parsed(MessagesStream().close())]
    assert names == ["message_start", "ping", "content_block_start", "content_block_stop", "message_delta",
                     "message_stop"]  # fmt: skip
    error = _parsed(MessagesStream().fail(EngineUnavailableError("gone")))
    assert error == [("error", {"type": "error", "error": {"type": "overloaded_error", "message": "gone"}})]
