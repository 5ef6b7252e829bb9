"""`POST /v1/messages` (Anthropic's Messages API) with the real `anthropic` SDK against a real gateway
(uvicorn) over the real SmolLM2-135M, and the native Anthropic rung against a loopback stand-in with
Anthropic's behaviour (tests/anthropic_standin.py).

Local answers are checked against the same request sent as a chat completion at temperature 0 (the
translation must not change what the model is asked), streams against the non-streamed answer. Tool
calls are forced on the local rung (tool_choice `tool`: the 135M model is held to it by grammar); a
free tool choice and the tool_use -> tool_result round trip are served by the Anthropic stand-in.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import pytest

from tests import conftest
from tests.anthropic_standin import AnthropicStandin
from tests.conftest import (
    DEFAULT_MODEL,
    REMOTE_RUNG,
    Server,
    remote_rung,
    repo_routing,
    repo_rung,
    start_gateway,
)
from tests.standin_fixtures import STANDIN_KEY
from tests.standin_provider import StandinProvider
from tests.test_clients import LENIENT, Audit

LOCAL, FRONTIER, CLAUDE = DEFAULT_MODEL, REMOTE_RUNG, "claude"
GATEWAY_KEY = "lr-messages-client-key-7c41"
CLAUDE_KEY = "sk-ant-standin-0b9e-do-not-leak"
KEY_ENV, CLAUDE_ENV = "LR_MESSAGES_KEY", "LR_MESSAGES_CLAUDE_KEY"
WEATHER = {
    "name": "get_weather",
    "description": "Current weather in a city",
    "input_schema": {
        "type": "object",
        "properties": {
            "city": {"type": "string", "maxLength": 30},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        },
        "required": ["city", "unit"],
        "additionalProperties": False,
    },
}
ASK = [{"role": "user", "content": "What is the weather in Paris? Use get_weather."}]
SYSTEM = "You are a terse assistant."
PROMPT = "Name three colours of the rainbow."
# The SDK (2.x) no longer has sampling parameters; the API still takes them, and so does localroute.
COLD = {"temperature": 0}


@pytest.fixture(scope="module")
def provider() -> Iterator[StandinProvider]:
    with StandinProvider(api_key=STANDIN_KEY) as p:
        yield p


@pytest.fixture(scope="module")
def claude() -> Iterator[AnthropicStandin]:
    with AnthropicStandin(api_key=CLAUDE_KEY) as p:
        yield p


def claude_rung(base_url: str, **over: object) -> dict[str, object]:
    return {
        "name": CLAUDE,
        "engine": "remote",
        "api": "anthropic",
        "tier": 20,
        "base_url": base_url,
        "model": "claude-standin",
        "api_key_env": CLAUDE_ENV,
        "read_timeout_s": 30,
        "total_timeout_s": 60,
        "max_retries": 0,
        **over,
    }


@pytest.fixture(scope="module")
def gateway(
    tmp_path_factory: pytest.TempPathFactory,
    smollm2: Path,
    provider: StandinProvider,
    claude: AnthropicStandin,
) -> Iterator[Server]:
    models = [
        repo_rung(LOCAL, cache_prompt=False),
        remote_rung(provider.base_url, KEY_ENV, read_timeout_s=30, total_timeout_s=60, max_retries=0),
        claude_rung(claude.base_url),
    ]
    keys = [{"name": "client", "sha256": hashlib.sha256(GATEWAY_KEY.encode()).hexdigest()}]
    text = conftest.config_text(models=models, routing=repo_routing(), cascade=LENIENT, keys=keys)
    env = {KEY_ENV: STANDIN_KEY, CLAUDE_ENV: CLAUDE_KEY}
    srv = start_gateway(tmp_path_factory.mktemp("messages"), text, env)
    yield srv
    srv.stop()


@pytest.fixture(autouse=True)
def audit(provider: StandinProvider, claude: AnthropicStandin, gateway: Server) -> Audit:
    for p in (provider, claude):
        p.set("ok")
        p.requests.clear()
    return Audit(gateway)


@pytest.fixture
def client(gateway: Server) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gateway.url, api_key=GATEWAY_KEY, max_retries=0, timeout=300)


def post(gateway: Server, body: dict[str, Any], **headers: str) -> httpx.Response:
    auth = {"x-api-key": GATEWAY_KEY, "anthropic-version": "2023-06-01", **headers}
    return httpx.post(gateway.url + "/v1/messages", json=body, headers=auth, timeout=300)


def nothing_left(provider: StandinProvider, claude: AnthropicStandin) -> None:
    assert provider.requests == [] and claude.requests == []


# -- served by the local model -------------------------------------------------------------------------


def test_create_asks_the_model_what_the_chat_form_asks(
    client: anthropic.Anthropic,
    gateway: Server,
    audit: Audit,
    provider: StandinProvider,
    claude: AnthropicStandin,
) -> None:
    msg = client.messages.create(
        model=LOCAL,
        max_tokens=12,
        system=SYSTEM,
        messages=[{"role": "user", "content": PROMPT}],
        extra_body=COLD,
    )
    chat = httpx.post(
        gateway.url + "/v1/chat/completions",
        headers={"Authorization": f"Bearer {GATEWAY_KEY}"},
        json={
            "model": LOCAL,
            "max_tokens": 12,
            "temperature": 0,
            "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": PROMPT}],
        },
        timeout=300,
    ).json()
    assert msg.type == "message" and msg.role == "assistant" and msg.id.startswith("msg_")
    assert msg.model == LOCAL
    assert [b.type for b in msg.content] == ["text"]
    assert msg.content[0].text == chat["choices"][0]["message"]["content"]
    finish = chat["choices"][0]["finish_reason"]
    assert msg.stop_reason == {"length": "max_tokens", "stop": "end_turn"}[finish]
    assert msg.stop_sequence is None
    assert msg.usage.input_tokens == chat["usage"]["prompt_tokens"] > 0
    assert msg.usage.output_tokens == chat["usage"]["completion_tokens"] > 0
    first, second = audit.new(2)
    assert (first["api"], first["model"], first["status"]) == ("messages", LOCAL, 200)
    assert second["api"] == "chat"
    nothing_left(provider, claude)


def test_stream_accumulates_to_the_created_message(client: anthropic.Anthropic, audit: Audit) -> None:
    ask: dict[str, Any] = {
        "model": LOCAL,
        "max_tokens": 12,
        "extra_body": COLD,
        "messages": [{"role": "user", "content": PROMPT}],
    }
    made = client.messages.create(**ask)
    with client.messages.stream(**ask) as stream:
        pieces = list(stream.text_stream)
        final = stream.get_final_message()
    assert len(pieces) > 1  # it came in pieces, not as one block at the end
    assert "".join(pieces) == final.content[0].text == made.content[0].text
    assert final.stop_reason == made.stop_reason and final.stop_sequence is None
    assert final.usage.input_tokens == made.usage.input_tokens
    assert final.usage.output_tokens == made.usage.output_tokens
    records = audit.new(2)
    assert [(r["api"], r["stream"], r["model"]) for r in records] == [
        ("messages", False, LOCAL),
        ("messages", True, LOCAL),
    ]


def test_stream_events_come_in_anthropics_order(gateway: Server) -> None:
    body = {"model": LOCAL, "max_tokens": 6, "stream": True, "messages": [{"role": "user", "content": "Hi"}]}
    auth = {"x-api-key": GATEWAY_KEY, "anthropic-version": "2023-06-01"}
    with httpx.stream("POST", gateway.url + "/v1/messages", json=body, headers=auth, timeout=300) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        raw = r.read().decode()
    events = [e for e in raw.split("\n\n") if e]
    names = []
    for e in events:
        name_line, data_line = e.split("\n")
        name, data = name_line.removeprefix("event: "), json.loads(data_line.removeprefix("data: "))
        assert data["type"] == name
        names.append(name)
    order = " ".join(names)
    assert re.fullmatch(
        r"message_start ping content_block_start( content_block_delta)+ content_block_stop"
        r" message_delta message_stop",
        order,
    ), order
    start = json.loads(events[0].split("data: ")[1])["message"]
    assert start["content"] == [] and start["stop_reason"] is None and start["model"] == LOCAL
    delta = json.loads(events[-2].split("data: ")[1])
    assert delta["delta"]["stop_reason"] in ("end_turn", "max_tokens") and delta["usage"]["output_tokens"] > 0


def test_stop_sequences_end_the_answer(client: anthropic.Anthropic) -> None:
    ask: dict[str, Any] = {
        "model": LOCAL,
        "max_tokens": 16,
        "extra_body": COLD,
        "messages": [{"role": "user", "content": PROMPT}],
    }
    whole = client.messages.create(**ask).content[0].text
    words = whole.split()
    assert len(words) >= 3, whole
    cut = client.messages.create(**ask, stop_sequences=[words[2]]).content[0].text
    assert cut == whole[: whole.index(words[2])]


def test_a_forced_tool_is_called_by_the_local_model(client: anthropic.Anthropic, audit: Audit) -> None:
    ask: dict[str, Any] = {
        "model": LOCAL,
        "max_tokens": 60,
        "extra_body": COLD,
        "messages": ASK,
        "tools": [WEATHER],
        "tool_choice": {"type": "tool", "name": "get_weather"},
    }
    msg = client.messages.create(**ask)
    with client.messages.stream(**ask) as stream:
        final = stream.get_final_message()
    for m in (msg, final):
        assert m.stop_reason == "tool_use"
        uses = [b for b in m.content if b.type == "tool_use"]
        assert len(uses) == 1 and uses[0].name == "get_weather"
        assert isinstance(uses[0].input, dict) and set(uses[0].input) == {"city", "unit"}
        assert uses[0].input["unit"] in ("celsius", "fahrenheit")
    assert final.content[-1].input == msg.content[-1].input
    assert [r["model"] for r in audit.new(2)] == [LOCAL, LOCAL]


def test_anthropic_version_is_not_required(gateway: Server) -> None:
    body = {"model": LOCAL, "max_tokens": 2, "messages": [{"role": "user", "content": "Hi"}]}
    r = httpx.post(gateway.url + "/v1/messages", json=body, headers={"x-api-key": GATEWAY_KEY}, timeout=300)
    assert r.status_code == 200 and r.json()["type"] == "message"


# -- errors in Anthropic's shape ----------------------------------------------------------------------


def test_a_bad_request_names_every_bad_field(gateway: Server, audit: Audit) -> None:
    body = {
        "model": LOCAL,
        "messages": [{"role": "system", "content": "x"}],
        "top_k": 5,
        "thinking": {"type": "enabled", "budget_tokens": 1024},
        "stop_sequences": ["a", "b", "c", "d", "e"],
    }
    r = post(gateway, body)
    assert r.status_code == 400
    err = r.json()
    assert set(err) == {"type", "error"} and err["type"] == "error"
    assert err["error"]["type"] == "invalid_request_error"
    for field in ("max_tokens", "messages[0].role", "top_k", "thinking", "stop_sequences"):
        assert f"'{field}" in err["error"]["message"], (field, err)
    assert audit.new(0) == []  # refused at the edge: nothing was routed


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"extra_body": {"top_k": 40}}, "top_k"),
        ({"messages": [*ASK, {"role": "assistant", "content": "The weather is"}]}, "messages"),
        ({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "tools[0]"),
        ({"tool_choice": {"type": "any"}}, "tool_choice"),
        ({"extra_body": {"temperature": 1.5}}, "temperature"),
    ],
)
def test_the_sdk_raises_bad_request_naming_the_field(
    client: anthropic.Anthropic, change: dict[str, Any], field: str
) -> None:
    ask: dict[str, Any] = {"model": LOCAL, "max_tokens": 8, "messages": ASK, **change}
    with pytest.raises(anthropic.BadRequestError) as info:
        client.messages.create(**ask)
    assert info.value.status_code == 400
    assert info.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]
    assert f"'{field}" in info.value.body["error"]["message"]  # type: ignore[index]


def test_a_wrong_key_is_an_authentication_error(gateway: Server) -> None:
    wrong = anthropic.Anthropic(base_url=gateway.url, api_key="lr-wrong-key", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError) as info:
        wrong.messages.create(model=LOCAL, max_tokens=2, messages=ASK)
    assert info.value.body["type"] == "error"  # type: ignore[index]
    assert info.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]
    assert "lr-wrong-key" not in info.value.response.text


def test_an_unknown_model_is_not_found(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.NotFoundError) as info:
        client.messages.create(model="claude-no-such-model", max_tokens=2, messages=ASK)
    assert info.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]
    assert "claude-no-such-model" in info.value.body["error"]["message"]  # type: ignore[index]


# -- served by the native Anthropic rung (the stand-in) -----------------------------------------------


def test_a_tool_round_trip_through_the_anthropic_rung(
    client: anthropic.Anthropic, claude: AnthropicStandin, provider: StandinProvider, audit: Audit
) -> None:
    first = client.messages.create(model=CLAUDE, max_tokens=100, messages=ASK, tools=[WEATHER])
    assert first.stop_reason == "tool_use" and first.model == CLAUDE
    use = next(b for b in first.content if b.type == "tool_use")
    assert use.name == "get_weather" and use.input == {"city": "standin", "unit": "celsius"}
    sent = claude.requests[0]
    assert sent.headers["x-api-key"] == CLAUDE_KEY and "authorization" not in sent.headers
    assert sent.headers["anthropic-version"] == "2023-06-01"
    assert sent.body["tools"] == [WEATHER]
    assert sent.body["model"] == "claude-standin" and sent.body["max_tokens"] == 100
    result = {"type": "tool_result", "tool_use_id": use.id, "content": "18 degrees and sunny"}
    history = [*ASK, {"role": "assistant", "content": first.content}, {"role": "user", "content": [result]}]
    second = client.messages.create(model=CLAUDE, max_tokens=100, messages=history, tools=[WEATHER])
    assert second.stop_reason == "end_turn" and second.content[0].type == "text"
    got = claude.requests[1].body["messages"]
    assert got[1] == {
        "role": "assistant",
        "content": [{"type": "tool_use", "id": use.id, "name": "get_weather", "input": use.input}],
    }
    assert got[2] == {
        "role": "user",
        "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "18 degrees and sunny"}],
    }
    assert [(r["api"], r["model"], r["local"]) for r in audit.new(2)] == [("messages", CLAUDE, False)] * 2
    assert provider.requests == []


def test_the_anthropic_rungs_stream_comes_through(
    client: anthropic.Anthropic, claude: AnthropicStandin
) -> None:
    ask: dict[str, Any] = {
        "model": CLAUDE,
        "max_tokens": 100,
        "messages": ASK,
        "tools": [WEATHER],
        "tool_choice": {"type": "any"},
    }
    with client.messages.stream(**ask) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "tool_use"
    assert final.content[-1].type == "tool_use" and final.content[-1].input == {
        "city": "standin",
        "unit": "celsius",
    }
    assert (
        claude.requests[-1].body["tool_choice"] == {"type": "any"}
        and claude.requests[-1].body["stream"] is True
    )
    plain = {
        "model": CLAUDE,
        "max_tokens": 100,
        "messages": [{"role": "user", "content": "Hello there"}],
        "stop_sequences": ["there"],
    }
    made = client.messages.create(**plain)
    with client.messages.stream(**plain) as stream:
        text = "".join(stream.text_stream)
        streamed = stream.get_final_message()
    assert made.content[0].text == text == "Claude stand-in answer to: Hello "
    for m in (made, streamed):
        assert (m.stop_reason, m.stop_sequence) == ("stop_sequence", "there")
    assert streamed.usage.output_tokens == made.usage.output_tokens > 0


def test_a_chat_client_reaches_the_anthropic_rung(gateway: Server, claude: AnthropicStandin) -> None:
    r = httpx.post(
        gateway.url + "/v1/chat/completions",
        headers={"Authorization": f"Bearer {GATEWAY_KEY}"},
        timeout=60,
        json={
            "model": CLAUDE,
            "messages": [{"role": "system", "content": SYSTEM}, *ASK],
            "user": "u-42",
            "tools": [
                {
                    "type": "function",
                    "function": {"name": WEATHER["name"], "parameters": WEATHER["input_schema"]},
                }
            ],
            "tool_choice": "required",
            "parallel_tool_calls": False,
        },
    )
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert json.loads(choice["message"]["tool_calls"][0]["function"]["arguments"]) == {
        "city": "standin",
        "unit": "celsius",
    }
    sent = claude.requests[0].body
    assert sent["system"] == [{"type": "text", "text": SYSTEM}]
    assert sent["tool_choice"] == {"type": "any", "disable_parallel_tool_use": True}
    assert sent["metadata"] == {"user_id": "u-42"} and sent["max_tokens"] == 1024  # the rung's default
    refused = httpx.post(
        gateway.url + "/v1/chat/completions",
        headers={"Authorization": f"Bearer {GATEWAY_KEY}"},
        timeout=60,
        json={"model": CLAUDE, "messages": ASK, "seed": 7},
    )
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "seed"
    assert len(claude.requests) == 1


def test_an_image_goes_to_the_anthropic_rung_as_it_came(
    client: anthropic.Anthropic, claude: AnthropicStandin, gateway: Server
) -> None:
    png = base64.b64encode(bytes(range(256)) * 40).decode()
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": png}}
    content = [{"type": "text", "text": "What is in this picture?"}, image]
    msg = client.messages.create(model=CLAUDE, max_tokens=20, messages=[{"role": "user", "content": content}])
    assert msg.content[0].text.startswith("Claude stand-in answer to: What is in this picture?")
    assert claude.requests[0].body["messages"] == [{"role": "user", "content": content}]
    # The local model has no vision: an image it cannot see is refused, not dropped.
    with pytest.raises(anthropic.BadRequestError) as info:
        client.messages.create(model=LOCAL, max_tokens=20, messages=[{"role": "user", "content": content}])
    assert "needs vision" in info.value.body["error"]["message"]  # type: ignore[index]


def test_fallback_moves_between_the_openai_and_anthropic_providers(
    client: anthropic.Anthropic, provider: StandinProvider, claude: AnthropicStandin, audit: Audit
) -> None:
    remote = {"X-LocalRoute-Tier": "remote"}
    hello = [{"role": "user", "content": "Hello there"}]
    provider.set("fail", status=503)
    msg = client.messages.create(model="auto", max_tokens=20, messages=hello, extra_headers=remote)
    assert msg.model == CLAUDE and msg.content[0].text == "Claude stand-in answer to: Hello there"
    record = audit.new(1)[0]
    assert [(a["model"], a["outcome"]) for a in record["attempts"]][-1] == (CLAUDE, "ok")
    assert FRONTIER in [a["model"] for a in record["attempts"]] and len(claude.requests) == 1


@pytest.mark.parametrize(
    ("status", "raised", "kind"),
    [
        (529, anthropic.InternalServerError, "overloaded_error"),
        (429, anthropic.RateLimitError, "rate_limit_error"),
        (400, anthropic.BadRequestError, "invalid_request_error"),
    ],
)
def test_anthropic_rung_errors_reach_the_client_in_anthropics_shape(
    client: anthropic.Anthropic, claude: AnthropicStandin, status: int, raised: type[Exception], kind: str
) -> None:
    claude.set("fail", status=status, message="stand-in says no")
    with pytest.raises(raised) as info:
        client.messages.create(model=CLAUDE, max_tokens=10, messages=ASK)
    assert info.value.body["error"]["type"] == kind  # type: ignore[attr-defined]
    assert CLAUDE_KEY not in info.value.response.text  # type: ignore[attr-defined]


def test_a_broken_stream_ends_with_an_error_event(
    client: anthropic.Anthropic, claude: AnthropicStandin
) -> None:
    claude.set("stream_break", chunks=4)  # message_start, ping, a block's start and first delta
    with pytest.raises(anthropic.APIStatusError) as info:
        with client.messages.stream(model=CLAUDE, max_tokens=100, messages=ASK) as stream:
            for _ in stream:
                pass
    assert info.value.body["type"] == "error"  # type: ignore[index]
    # The connection closed mid-answer: the provider is unavailable (503, Anthropic's `overloaded_error`).
    assert info.value.body["error"]["type"] == "overloaded_error"  # type: ignore[index]
    assert "Remote provider 'claude' dropped the connection" in info.value.body["error"]["message"]  # type: ignore[index]


# -- privacy: nothing private leaves through /v1/messages ----------------------------------------------


def test_a_private_request_never_reaches_a_provider(
    gateway: Server,
    client: anthropic.Anthropic,
    provider: StandinProvider,
    claude: AnthropicStandin,
    audit: Audit,
) -> None:
    private = {"X-LocalRoute-Privacy": "private"}
    with pytest.raises(anthropic.APIStatusError) as info:
        client.messages.create(model=CLAUDE, max_tokens=8, messages=ASK, extra_headers=private)
    assert info.value.body["type"] == "error"  # type: ignore[index]
    with pytest.raises(anthropic.APIStatusError):
        client.messages.create(
            model="auto", max_tokens=8, messages=ASK, extra_headers={**private, "X-LocalRoute-Tier": "remote"}
        )
    served = client.messages.create(model="auto", max_tokens=8, messages=ASK, extra_headers=private)
    assert served.model == LOCAL
    records = audit.new(3)
    assert all(r["api"] == "messages" and r["privacy"]["class"] == "private" for r in records), records
    assert records[2]["model"] == LOCAL
    nothing_left(provider, claude)


def test_an_email_in_a_tool_result_keeps_the_request_local(
    client: anthropic.Anthropic, provider: StandinProvider, claude: AnthropicStandin, audit: Audit
) -> None:
    use = {
        "type": "tool_use",
        "id": "toolu_01",
        "name": "get_weather",
        "input": {"city": "Paris", "unit": "celsius"},
    }
    result = {
        "type": "tool_result",
        "tool_use_id": "toolu_01",
        "content": [{"type": "text", "text": "Reported by jane.doe@example.com: 18 degrees"}],
    }
    history = [*ASK, {"role": "assistant", "content": [use]}, {"role": "user", "content": [result]}]
    with pytest.raises(anthropic.APIStatusError):
        client.messages.create(model=CLAUDE, max_tokens=8, messages=history, tools=[WEATHER])
    for stream in (False, True):
        if stream:
            with client.messages.stream(model="auto", max_tokens=8, messages=history, tools=[WEATHER]) as s:
                served = s.get_final_message()
        else:
            served = client.messages.create(model="auto", max_tokens=8, messages=history, tools=[WEATHER])
        assert served.model == LOCAL
    records = audit.new(3)
    assert all(r["privacy"]["class"] == "private" and r["privacy"]["kinds"] == ["email"] for r in records)
    assert all(r["api"] == "messages" for r in records)
    nothing_left(provider, claude)
