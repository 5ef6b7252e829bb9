"""The client matrix: the real client packages people point at an OpenAI-compatible endpoint, driven
against one real gateway (uvicorn) over the real SmolLM2-135M and the loopback stand-in provider.

Local cases are held to the output contract by grammar (forced tool calls, json_schema) and must be
answered by the local rung with nothing sent to the stand-in. Where a client cannot force what the
135M model must do (a free choice between tools, a JSON object of the right keys), the case is pinned
to the remote rung with `X-LocalRoute-Tier: remote`, and the test checks what the stand-in received.
The clients come from the `clients` extra (pyproject.toml), which CI and `make test` install.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Literal

import httpx
import pytest
from openai import AsyncOpenAI, OpenAI
from pydantic import BaseModel, Field

from tests import conftest
from tests.conftest import (
    DEFAULT_MODEL,
    REMOTE_RUNG,
    Server,
    remote_rung,
    repo_routing,
    repo_rung,
    start_gateway,
    wait_until,
)
from tests.standin_fixtures import STANDIN_KEY
from tests.standin_provider import StandinProvider

LOCAL, REMOTE = DEFAULT_MODEL, REMOTE_RUNG
KEY_ENV = "LR_CLIENTS_KEY"
PIN_REMOTE = {"X-LocalRoute-Tier": "remote"}
# Local answers are kept whatever their logprobs: the cascade is tested in test_cascade.py, and a
# 135M model's confidence must not decide which rung a client case lands on.
LENIENT = {"min_mean_logprob": -50.0, "min_tail_logprob": -50.0, "min_length_tokens": 0}
JSON_TOKENS = 160


class Weather(BaseModel):
    """Current weather in a city."""

    city: str = Field(max_length=30)
    unit: Literal["celsius", "fahrenheit"]


class Person(BaseModel):
    name: str = Field(max_length=30)
    age: int


class Answer(BaseModel):
    answer: str


WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 30},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}
NAMED_WEATHER = {"type": "function", "function": {"name": "get_weather"}}
ASK_WEATHER = [{"role": "user", "content": "What is the weather in Paris? Use get_weather."}]


@pytest.fixture(scope="module")
def provider() -> Iterator[StandinProvider]:
    with StandinProvider(api_key=STANDIN_KEY) as p:
        yield p


@pytest.fixture(scope="module")
def gateway(
    tmp_path_factory: pytest.TempPathFactory, smollm2: Path, provider: StandinProvider
) -> Iterator[Server]:
    models = [
        repo_rung(LOCAL, cache_prompt=False),
        remote_rung(provider.base_url, KEY_ENV, read_timeout_s=30, total_timeout_s=60, max_retries=0),
    ]
    text = conftest.config_text(models=models, routing=repo_routing(), cascade=LENIENT)
    srv = start_gateway(tmp_path_factory.mktemp("clients"), text, {KEY_ENV: STANDIN_KEY})
    yield srv
    srv.stop()


class Audit:
    """The gateway's audit records written since this test began."""

    def __init__(self, srv: Server) -> None:
        self.path = srv.audit
        self.start = self._count()

    def _count(self) -> int:
        return len(self.path.read_text().splitlines()) if self.path.exists() else 0

    def new(self, n: int) -> list[dict[str, Any]]:
        """The `n` records written since the test began (waits for the last to be written)."""
        assert wait_until(lambda: self._count() >= self.start + n), f"fewer than {n} audit records"
        lines = self.path.read_text().splitlines()[self.start :]
        assert len(lines) == n, lines
        return [json.loads(line) for line in lines]

    def contract_kept_locally(self, n: int = 1) -> None:
        """The test's `n` requests were answered by the local rung, each with a JSON or tool-call
        contract that the gateway found kept (`output_valid`), with no move to another rung."""
        for record in self.new(n):
            assert record["status"] == 200 and record["model"] == LOCAL, record
            assert record["output_valid"] is True and "invalid_output" not in record["route"], record


@pytest.fixture(autouse=True)
def audit(provider: StandinProvider, gateway: Server) -> Audit:
    provider.set("ok")
    provider.requests.clear()
    return Audit(gateway)


@pytest.fixture
def base(gateway: Server) -> str:
    return gateway.url + "/v1"


def client(base: str, **kw: Any) -> OpenAI:
    return OpenAI(base_url=base, api_key="x", max_retries=0, timeout=300, **kw)


def nothing_sent_remote(provider: StandinProvider) -> None:
    assert [r.body for r in provider.requests] == []


def one_remote_body(provider: StandinProvider) -> dict[str, Any]:
    """The one chat body the stand-in received."""
    (request,) = [r for r in provider.requests if r.path.endswith("/chat/completions")]
    assert isinstance(request.body, dict)
    return request.body


def validated_call(call: Any, tool: dict[str, Any] = WEATHER_TOOL) -> dict[str, Any]:
    """An SDK tool call checked against `tool`: its name, and its arguments as JSON of the schema."""
    from jsonschema import validate

    assert call.type == "function" and call.id
    assert call.function.name == tool["function"]["name"]
    args = json.loads(call.function.arguments)
    validate(args, tool["function"]["parameters"])
    return args  # type: ignore[no-any-return]


# -- openai ----------------------------------------------------------------------------------------------


def test_openai_chat(base: str, provider: StandinProvider) -> None:
    raw = client(base).chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": "Say hi"}], max_tokens=16
    )
    resp = raw.parse()
    assert raw.headers["x-localroute-model"] == LOCAL and resp.model == LOCAL
    assert isinstance(resp.choices[0].message.content, str) and resp.choices[0].message.content.strip()
    assert resp.usage is not None and resp.usage.completion_tokens > 0
    nothing_sent_remote(provider)


def test_openai_stream(base: str, provider: StandinProvider) -> None:
    chunks = list(
        client(base).chat.completions.create(
            model="auto",
            messages=[{"role": "user", "content": "Say hi"}],
            max_tokens=16,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip() and {c.model for c in chunks} == {LOCAL}
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] in ("stop", "length")
    nothing_sent_remote(provider)


def test_openai_parse_json_schema_locally(base: str, provider: StandinProvider, audit: Audit) -> None:
    raw = client(base).chat.completions.with_raw_response.parse(
        model="auto",
        messages=[{"role": "user", "content": "Invent a person with a name and an age."}],
        response_format=Person,
        max_tokens=JSON_TOKENS,
        temperature=0,
    )
    resp = raw.parse()
    assert raw.headers["x-localroute-model"] == LOCAL, raw.headers["x-localroute-route"]
    person = resp.choices[0].message.parsed
    assert isinstance(person, Person) and person.name
    assert Person.model_validate_json(resp.choices[0].message.content or "") == person
    audit.contract_kept_locally()
    nothing_sent_remote(provider)


def test_openai_tools_round_trip_locally(base: str, provider: StandinProvider, audit: Audit) -> None:
    sdk = client(base)
    messages: list[Any] = list(ASK_WEATHER)
    raw = sdk.chat.completions.with_raw_response.create(
        model="auto", messages=messages, tools=[WEATHER_TOOL], tool_choice=NAMED_WEATHER,
        max_tokens=JSON_TOKENS, temperature=0,
    )  # fmt: skip
    first = raw.parse()
    assert raw.headers["x-localroute-model"] == LOCAL
    assert first.choices[0].finish_reason == "tool_calls"
    (call,) = first.choices[0].message.tool_calls or []
    args = validated_call(call)
    messages.append(first.choices[0].message)  # the SDK's own object, echoed back as the SDK sends it
    messages.append({"role": "tool", "tool_call_id": call.id, "content": json.dumps({**args, "temp": 21})})
    raw = sdk.chat.completions.with_raw_response.create(
        model="auto", messages=messages, tools=[WEATHER_TOOL], tool_choice="none", max_tokens=48,
        temperature=0,
    )  # fmt: skip
    final = raw.parse()
    assert raw.headers["x-localroute-model"] == LOCAL
    assert final.choices[0].message.tool_calls is None
    assert isinstance(final.choices[0].message.content, str) and final.choices[0].message.content.strip()
    call_record, answer_record = audit.new(2)
    assert (
        call_record["output_valid"] is True and answer_record["output_valid"] is None
    )  # "none": no contract
    nothing_sent_remote(provider)


def test_openai_multi_turn_append_after_remote_answer(base: str, provider: StandinProvider) -> None:
    """The issue's bug: OpenAI's answer echoed back (`refusal: null`, `annotations: []`) was a 400."""
    sent: list[dict[str, Any]] = []  # the bodies the SDK really sent to the gateway

    def capture(request: httpx.Request) -> None:
        sent.append(json.loads(request.read()))

    sdk = client(base, http_client=httpx.Client(event_hooks={"request": [capture]}, timeout=300))
    messages: list[Any] = [{"role": "user", "content": "Tell me a fact."}]
    raw = sdk.chat.completions.with_raw_response.create(
        model="auto", messages=messages, extra_headers=PIN_REMOTE
    )
    first = raw.parse()
    assert raw.headers["x-localroute-model"] == REMOTE and first.model == REMOTE
    echoed = first.choices[0].message
    assert echoed.refusal is None and echoed.annotations == []
    messages.append(echoed)
    messages.append({"role": "user", "content": "And another one."})
    second = sdk.chat.completions.create(model="auto", messages=messages, extra_headers=PIN_REMOTE)
    assert (
        second.model == REMOTE and second.choices[0].message.content == "Remote answer to: And another one."
    )
    # The SDK echoed OpenAI's fields, nulls and empty lists included; the gateway took them.
    assert sent[1]["messages"][1] == {
        "role": "assistant", "content": echoed.content, "refusal": None, "annotations": []
    }  # fmt: skip
    forwarded = provider.requests[-1].body["messages"][1]
    assert forwarded["content"] == echoed.content and forwarded["annotations"] == []
    assert forwarded.get("refusal") is None
    # The same history, with both echoed answers: `auto` keeps the conversation on the rung that last
    # answered it (stickiness is upward only), and the local rung takes the echoed fields when named.
    messages.append(second.choices[0].message)
    messages.append({"role": "user", "content": "Thanks, say bye."})
    raw = sdk.chat.completions.with_raw_response.create(model="auto", messages=messages, max_tokens=16)
    assert (raw.headers["x-localroute-model"], raw.headers["x-localroute-route"]) == (REMOTE, "policy:sticky")
    assert len(provider.requests) == 3
    raw = sdk.chat.completions.with_raw_response.create(model=LOCAL, messages=messages, max_tokens=16)
    assert raw.headers["x-localroute-model"] == LOCAL
    assert raw.parse().choices[0].message.content
    assert sent[3]["messages"][3]["refusal"] is None and sent[3]["messages"][3]["annotations"] == []
    assert len(provider.requests) == 3


def test_openai_streamed_tool_call_from_the_remote_rung(base: str, provider: StandinProvider) -> None:
    # "auto" with the tool named in the prompt: the model's free choice, so the stand-in answers it.
    stream = client(base).chat.completions.create(
        model="auto", messages=ASK_WEATHER, tools=[WEATHER_TOOL], stream=True, extra_headers=PIN_REMOTE
    )
    chunks = [c for c in stream if c.choices]
    parts = [tc for c in chunks for tc in c.choices[0].delta.tool_calls or ()]
    assert parts[0].id and parts[0].function and parts[0].function.name == "get_weather"
    arguments = "".join(p.function.arguments or "" for p in parts if p.function)
    validated_call(SimpleNamespace(id=parts[0].id, type="function", function=SimpleNamespace(
        name="get_weather", arguments=arguments)))  # fmt: skip
    assert chunks[-1].choices[0].finish_reason == "tool_calls" and {c.model for c in chunks} == {REMOTE}
    sent = one_remote_body(provider)
    assert sent["tools"] == [WEATHER_TOOL] and "tool_choice" not in sent


def test_openai_async(base: str, provider: StandinProvider) -> None:
    async def run() -> tuple[str, list[str]]:
        sdk = AsyncOpenAI(base_url=base, api_key="x", max_retries=0, timeout=300)
        async with sdk:
            resp = await sdk.chat.completions.create(
                model="auto", messages=[{"role": "user", "content": "Say hi"}], max_tokens=16
            )
            stream = await sdk.chat.completions.create(
                model="auto", messages=[{"role": "user", "content": "Say bye"}], max_tokens=8, stream=True,
                extra_headers=PIN_REMOTE,
            )  # fmt: skip
            pieces = [c.choices[0].delta.content or "" async for c in stream if c.choices]
        assert resp.model == LOCAL
        return resp.choices[0].message.content or "", pieces

    text, pieces = asyncio.run(run())
    assert text.strip()
    assert "".join(pieces) == "Remote answer to: Say bye"
    assert one_remote_body(provider)["stream"] is True


def test_default_valued_knobs_are_accepted(base: str, provider: StandinProvider) -> None:
    """What UIs and SDKs send routinely, at its default values: a 200, locally and remotely, and the
    remote rung gets every field as sent."""
    knobs = {
        "presence_penalty": 0,
        "frequency_penalty": 0,
        "tools": [],
        "metadata": {"app": "chat-ui"},
        "store": False,
        "logit_bias": {},
        "stream_options": {"include_usage": True, "include_obfuscation": False},
    }
    body = {
        "model": "auto",
        "messages": [{"role": "user", "content": "Say hi"}],
        "max_tokens": 8,
        "stream": True,
    }
    for headers, rung in (({}, LOCAL), (PIN_REMOTE, REMOTE)):
        with httpx.stream(
            "POST", base + "/chat/completions", json={**body, **knobs}, headers=headers, timeout=300
        ) as r:
            text = r.read().decode()
            assert r.status_code == 200, text
            assert r.headers["x-localroute-model"] == rung
            assert text.rstrip().endswith("data: [DONE]")
        plain = {k: v for k, v in knobs.items() if k != "stream_options"}
        r2 = httpx.post(
            base + "/chat/completions", json={**body, **plain, "stream": False}, headers=headers, timeout=300
        )
        assert r2.status_code == 200, r2.text
        assert r2.json()["model"] == rung
    sent = [r.body for r in provider.requests]
    assert len(sent) == 2
    for key, value in knobs.items():
        if key != "stream_options":
            assert sent[0][key] == value and sent[1][key] == value, key
    assert sent[0]["stream_options"]["include_usage"] is True


def test_include_obfuscation_is_forwarded(base: str, provider: StandinProvider) -> None:
    options = {"include_usage": False, "include_obfuscation": False}
    body = {"model": "auto", "messages": [{"role": "user", "content": "Say hi"}], "stream": True}
    r = httpx.post(base + "/chat/completions", json={**body, "stream_options": options}, headers=PIN_REMOTE)
    assert r.status_code == 200 and r.headers["x-localroute-model"] == REMOTE
    assert one_remote_body(provider)["stream_options"]["include_obfuscation"] is False


# -- langchain-openai ------------------------------------------------------------------------------------


def chat_openai(base: str, **kw: Any) -> Any:
    from langchain_openai import ChatOpenAI

    return ChatOpenAI(base_url=base, api_key="x", model="auto", max_retries=0, timeout=300, **kw)


def test_langchain_bind_tools_invoke_locally(base: str, provider: StandinProvider, audit: Audit) -> None:
    llm = chat_openai(base, max_tokens=JSON_TOKENS, temperature=0)
    msg = llm.bind_tools([Weather], tool_choice="Weather").invoke("What is the weather in Paris?")
    assert msg.response_metadata["model_name"] == LOCAL
    (call,) = msg.tool_calls
    assert call["name"] == "Weather" and call["id"]
    Weather.model_validate(call["args"])
    audit.contract_kept_locally()
    nothing_sent_remote(provider)


def test_langchain_structured_output_function_calling_locally(
    base: str, provider: StandinProvider, audit: Audit
) -> None:
    llm = chat_openai(base, max_tokens=JSON_TOKENS, temperature=0)
    out = llm.with_structured_output(Person, method="function_calling", include_raw=True).invoke(
        "Invent a person with a name and an age."
    )
    assert out["parsing_error"] is None and isinstance(out["parsed"], Person)
    assert out["raw"].response_metadata["model_name"] == LOCAL
    audit.contract_kept_locally()
    nothing_sent_remote(provider)


def test_langchain_structured_output_json_schema_locally(
    base: str, provider: StandinProvider, audit: Audit
) -> None:
    llm = chat_openai(base, max_tokens=JSON_TOKENS, temperature=0)
    out = llm.with_structured_output(Person, method="json_schema", include_raw=True).invoke(
        "Invent a person with a name and an age."
    )
    assert out["parsing_error"] is None and isinstance(out["parsed"], Person)
    assert out["raw"].response_metadata["model_name"] == LOCAL
    audit.contract_kept_locally()
    nothing_sent_remote(provider)


def test_langchain_structured_output_json_mode_remote(base: str, provider: StandinProvider) -> None:
    # json_mode asks only for "a JSON object": the keys come from the prompt, which a 135M model does
    # not follow, so this one goes to the stand-in, which answers json_object with {"answer": ...}.
    llm = chat_openai(base, default_headers=PIN_REMOTE)
    out = llm.with_structured_output(Answer, method="json_mode", include_raw=True).invoke(
        "Answer in JSON with the key 'answer': what is 2+2?"
    )
    assert out["parsing_error"] is None and isinstance(out["parsed"], Answer)
    assert out["raw"].response_metadata["model_name"] == REMOTE
    assert one_remote_body(provider)["response_format"] == {"type": "json_object"}


def test_langchain_stream(base: str, provider: StandinProvider) -> None:
    chunks = list(chat_openai(base, max_tokens=16).stream("Say hi"))
    assert "".join(str(c.content) for c in chunks).strip()
    assert any(c.response_metadata.get("model_name") == LOCAL for c in chunks)
    nothing_sent_remote(provider)


# -- llama-index-llms-openai-like ------------------------------------------------------------------------


def openai_like(base: str, **kw: Any) -> Any:
    from llama_index.llms.openai_like import OpenAILike

    return OpenAILike(
        api_base=base, api_key="x", model="auto", is_chat_model=True, is_function_calling_model=True,
        context_window=2048, max_retries=0, timeout=300, **kw,
    )  # fmt: skip


def test_llamaindex_chat(base: str, provider: StandinProvider) -> None:
    from llama_index.core.llms import ChatMessage

    resp = openai_like(base, max_tokens=16).chat([ChatMessage(role="user", content="Say hi")])
    assert resp.message.content and resp.message.content.strip()
    assert resp.raw.model == LOCAL
    nothing_sent_remote(provider)


def get_weather(city: str, unit: str) -> str:
    """Current weather in a city."""
    return f"21 degrees {unit} in {city}"


def test_llamaindex_chat_with_tools_locally(base: str, provider: StandinProvider, audit: Audit) -> None:
    from llama_index.core.tools import FunctionTool

    llm = openai_like(base, max_tokens=JSON_TOKENS, temperature=0)
    tool = FunctionTool.from_defaults(fn=get_weather, fn_schema=Weather)  # its schema: an enum for `unit`
    resp = llm.chat_with_tools([tool], user_msg="What is the weather in Paris?", tool_required=True)
    assert resp.raw.model == LOCAL
    (selection,) = llm.get_tool_calls_from_response(resp, error_on_no_tool_call=True)
    assert selection.tool_name == "get_weather"
    assert set(selection.tool_kwargs) == {"city", "unit"} and selection.tool_kwargs["unit"] in (
        "celsius",
        "fahrenheit",
    )
    assert tool.call(**selection.tool_kwargs).content.startswith("21 degrees")
    audit.contract_kept_locally()
    nothing_sent_remote(provider)


def test_llamaindex_structured_predict_locally(base: str, provider: StandinProvider, audit: Audit) -> None:
    from llama_index.core.prompts import PromptTemplate

    llm = openai_like(base, max_tokens=JSON_TOKENS, temperature=0)
    person = llm.structured_predict(Person, PromptTemplate("Invent a person named {name}."), name="Ann")
    assert isinstance(person, Person) and person.name
    audit.contract_kept_locally()
    nothing_sent_remote(provider)


# -- litellm as a client ---------------------------------------------------------------------------------


def test_litellm_completion(base: str, provider: StandinProvider) -> None:
    import litellm

    resp = litellm.completion(
        model="openai/auto", api_base=base, api_key="x", messages=[{"role": "user", "content": "Say hi"}],
        max_tokens=16, num_retries=0,
    )  # fmt: skip
    assert resp.choices[0].message.content.strip()
    assert resp.model.endswith(LOCAL)
    nothing_sent_remote(provider)


def test_litellm_completion_with_tools_locally(base: str, provider: StandinProvider, audit: Audit) -> None:
    import litellm

    resp = litellm.completion(
        model="openai/auto", api_base=base, api_key="x", messages=ASK_WEATHER, tools=[WEATHER_TOOL],
        tool_choice="required", max_tokens=JSON_TOKENS, temperature=0, num_retries=0,
    )  # fmt: skip
    assert resp.model.endswith(LOCAL)
    assert resp.choices[0].finish_reason == "tool_calls"
    (call,) = resp.choices[0].message.tool_calls
    validated_call(call)
    audit.contract_kept_locally()
    nothing_sent_remote(provider)


# -- instructor ------------------------------------------------------------------------------------------


def test_instructor_tools_mode_locally(base: str, provider: StandinProvider, audit: Audit) -> None:
    import instructor

    ic = instructor.from_openai(client(base))  # default mode: TOOLS, a named tool_choice
    person, completion = ic.chat.completions.create_with_completion(
        model="auto", response_model=Person, max_retries=0, max_tokens=JSON_TOKENS, temperature=0,
        messages=[{"role": "user", "content": "Invent a person with a name and an age."}],
    )  # fmt: skip
    assert isinstance(person, Person) and person.name
    assert completion.model == LOCAL
    assert completion.choices[0].message.tool_calls[0].function.name == "Person"
    audit.contract_kept_locally()
    nothing_sent_remote(provider)


# -- pydantic-ai -----------------------------------------------------------------------------------------


def pydantic_ai_model(base: str, headers: dict[str, str] | None = None) -> Any:
    from pydantic_ai.models.openai import OpenAIChatModel
    from pydantic_ai.providers.openai import OpenAIProvider

    sdk = AsyncOpenAI(base_url=base, api_key="x", max_retries=0, timeout=300, default_headers=headers)
    return OpenAIChatModel("auto", provider=OpenAIProvider(openai_client=sdk))


def test_pydantic_ai_structured_output_locally(base: str, provider: StandinProvider, audit: Audit) -> None:
    from pydantic_ai import Agent

    agent = Agent(pydantic_ai_model(base), output_type=Person)
    result = agent.run_sync(
        "Invent a person with a name and an age.",
        model_settings={"max_tokens": JSON_TOKENS, "temperature": 0},
    )
    assert isinstance(result.output, Person) and result.output.name
    assert result.response.model_name == LOCAL
    audit.contract_kept_locally()
    nothing_sent_remote(provider)


def test_pydantic_ai_tool_and_structured_output_remote(base: str, provider: StandinProvider) -> None:
    # The model chooses between the function tool and the output tool, which no client setting can
    # force: the stand-in makes that choice as OpenAI would, and we check what reached it.
    from pydantic_ai import Agent

    calls: list[str] = []
    agent = Agent(pydantic_ai_model(base, PIN_REMOTE), output_type=Weather)

    @agent.tool_plain
    def get_weather(city: str) -> str:
        """Current weather in a city."""
        calls.append(city)
        return f"21 degrees celsius in {city}"

    result = agent.run_sync("Use get_weather for Paris, then report it.")
    assert isinstance(result.output, Weather)
    assert calls == ["standin"]  # the stand-in's example argument, through pydantic-ai to our function
    assert result.response.model_name == REMOTE
    bodies = [r.body for r in provider.requests]
    assert len(bodies) == 2
    names = [t["function"]["name"] for t in bodies[0]["tools"]]
    assert "get_weather" in names and len(names) == 2  # the function tool and the output tool
    assert bodies[0]["tool_choice"] == "required"
    params = next(
        t["function"]["parameters"] for t in bodies[0]["tools"] if t["function"]["name"] == "get_weather"
    )
    assert params["properties"]["city"]["type"] == "string" and params["required"] == ["city"]
    roles = [m["role"] for m in bodies[1]["messages"]]
    assert roles[-2:] == ["assistant", "tool"] and bodies[1]["messages"][-1]["content"].startswith(
        "21 degrees"
    )
