"""`POST /v1/responses` end to end: the real `openai` SDK (`responses.create`, `.stream`, `.parse`) and
LangChain's `ChatOpenAI(use_responses_api=True)` against one real gateway over the real SmolLM2-135M and
the loopback stand-in provider.

Where the 135M model must produce something exact (a function call, JSON of a schema) the case runs on
the local rung under a grammar (a forced `tool_choice`, `text.format` json_schema); where the model's
free choice matters (calling a tool on "auto", answering its output) the case is pinned to the stand-in
with `X-LocalRoute-Tier: remote`, whose tool behaviour is deterministic, and the test checks what the
stand-in received in the chat form.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from jsonschema import validate as validate_json
from openai import OpenAI
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
KEY_ENV = "LR_RESPONSES_KEY"
PIN_REMOTE = {"X-LocalRoute-Tier": "remote"}
PRIVATE = {"X-LocalRoute-Privacy": "private"}
# Local answers are kept whatever their logprobs: a 135M model's confidence must not decide the rung.
LENIENT = {"min_mean_logprob": -50.0, "min_tail_logprob": -50.0, "min_length_tokens": 0}
JSON_TOKENS = 160
EMAIL = "carol.jones@example.com"

WEATHER = {
    "type": "function",
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
    "strict": True,
}
ASK_WEATHER = "What is the weather in Paris? Use get_weather."


class Person(BaseModel):
    name: str = Field(max_length=30)
    age: int


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
    srv = start_gateway(tmp_path_factory.mktemp("responses"), text, {KEY_ENV: STANDIN_KEY})
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
        assert wait_until(lambda: self._count() >= self.start + n), f"fewer than {n} audit records"
        lines = self.path.read_text().splitlines()[self.start :]
        assert len(lines) == n, lines
        return [json.loads(line) for line in lines]


@pytest.fixture(autouse=True)
def audit(provider: StandinProvider, gateway: Server) -> Audit:
    provider.set("ok")
    provider.requests.clear()
    return Audit(gateway)


@pytest.fixture
def sdk(gateway: Server) -> OpenAI:
    return OpenAI(base_url=gateway.url + "/v1", api_key="x", max_retries=0, timeout=300)


def sent_to_standin(provider: StandinProvider) -> list[dict[str, Any]]:
    return [r.body for r in provider.requests if r.path.endswith("/chat/completions")]


def validated_args(arguments: str) -> dict[str, Any]:
    args: dict[str, Any] = json.loads(arguments)
    validate_json(args, WEATHER["parameters"])
    return args


# -- plain answers and streams -------------------------------------------------------------------------


def test_create_answers_locally_as_a_response_object(
    sdk: OpenAI, provider: StandinProvider, audit: Audit
) -> None:
    raw = sdk.responses.with_raw_response.create(
        model="auto", input="Say hi", instructions="Answer in one short sentence.", max_output_tokens=16,
        metadata={"app": "test"}, temperature=0,
    )  # fmt: skip
    resp = raw.parse()
    assert raw.headers["x-localroute-model"] == LOCAL and resp.model == LOCAL
    assert resp.id.startswith("resp_") and resp.object == "response" and resp.error is None
    assert resp.status in ("completed", "incomplete")
    (msg,) = resp.output
    assert msg.type == "message" and msg.id.startswith("msg_") and msg.role == "assistant"
    assert msg.content[0].type == "output_text" and msg.content[0].annotations == []
    assert resp.output_text.strip() and resp.output_text == msg.content[0].text
    assert resp.usage is not None and resp.usage.output_tokens > 0 and resp.usage.input_tokens > 0
    assert resp.usage.total_tokens == resp.usage.input_tokens + resp.usage.output_tokens
    # The request's settings echoed back, as OpenAI does; stateless: nothing stored.
    assert resp.instructions == "Answer in one short sentence." and resp.max_output_tokens == 16
    assert resp.metadata == {"app": "test"} and resp.temperature == 0 and resp.store is False
    assert resp.tools == [] and resp.tool_choice == "auto" and resp.text and resp.text.format
    assert resp.text.format.type == "text"
    (record,) = audit.new(1)
    assert record["api"] == "responses" and record["model"] == LOCAL and record["status"] == 200
    assert sent_to_standin(provider) == []


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_the_token_cap_makes_the_response_incomplete(sdk: OpenAI, stream: bool) -> None:
    ask = {"model": "auto", "input": "Count from 1 to 500, separated by commas: 1, 2, 3,",
           "max_output_tokens": 16, "temperature": 0}  # fmt: skip
    if stream:
        events = list(sdk.responses.create(**ask, stream=True))
        assert events[-1].type == "response.incomplete"
        resp = events[-1].response
    else:
        resp = sdk.responses.create(**ask)
    assert resp.model == LOCAL and resp.status == "incomplete"
    assert resp.incomplete_details is not None and resp.incomplete_details.reason == "max_output_tokens"
    assert resp.output[0].status == "incomplete" and resp.usage is not None
    assert resp.usage.output_tokens == 16


def test_stream_events_in_openai_order(sdk: OpenAI, provider: StandinProvider, audit: Audit) -> None:
    events = list(sdk.responses.create(model="auto", input="Say hi", max_output_tokens=16, stream=True))
    kinds = [e.type for e in events]
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    deltas = [e for e in events if e.type == "response.output_text.delta"]
    assert deltas and kinds[4 : 4 + len(deltas)] == ["response.output_text.delta"] * len(deltas)
    assert kinds[4 + len(deltas) :] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        kinds[-1],
    ]
    assert kinds[-1] in ("response.completed", "response.incomplete")
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(d.delta for d in deltas)
    done = next(e for e in events if e.type == "response.output_text.done")
    final = events[-1].response  # type: ignore[union-attr]
    assert text.strip() and done.text == text and final.output_text == text
    assert events[0].response.id == final.id and final.id.startswith("resp_")  # type: ignore[union-attr]
    assert final.model == LOCAL and final.usage is not None and final.usage.output_tokens == len(deltas)
    assert {d.item_id for d in deltas} == {final.output[0].id}
    (record,) = audit.new(1)
    assert record["api"] == "responses" and record["stream"] is True and record["status"] == 200
    assert sent_to_standin(provider) == []


def test_stream_helper_accumulates_the_final_response(sdk: OpenAI) -> None:
    # On the stand-in, which finishes its answer: the helper's final response comes only with
    # `response.completed`, as with OpenAI (a capped local answer ends in `response.incomplete`).
    pieces: list[str] = []
    with sdk.responses.stream(model="auto", input="Say bye", extra_headers=PIN_REMOTE) as stream:
        for event in stream:
            if event.type == "response.output_text.delta":
                pieces.append(event.delta)
        final = stream.get_final_response()
    assert final.model == REMOTE and final.output_text == "".join(pieces) == "Remote answer to: Say bye"
    assert final.usage is not None and final.usage.output_tokens == len(pieces)


def test_a_remote_answer_echoed_back_is_accepted(sdk: OpenAI, provider: StandinProvider) -> None:
    """The SDK's own output items, sent back as input (with `id`, `status`, `annotations`)."""
    first = sdk.responses.create(model="auto", input="Tell me a fact.", extra_headers=PIN_REMOTE)
    assert first.model == REMOTE and first.output_text == "Remote answer to: Tell me a fact."
    history: list[Any] = [{"role": "user", "content": "Tell me a fact."}, *first.output]
    history.append({"role": "user", "content": "And another one."})
    second = sdk.responses.create(model="auto", input=history, extra_headers=PIN_REMOTE)
    assert second.output_text == "Remote answer to: And another one."
    messages = sent_to_standin(provider)[1]["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "user"]
    assert messages[1]["content"] == first.output_text


# -- function tools ------------------------------------------------------------------------------------


def test_function_tool_round_trip_on_the_remote_rung(sdk: OpenAI, provider: StandinProvider) -> None:
    history: list[Any] = [{"role": "user", "content": ASK_WEATHER}]
    first = sdk.responses.create(model="auto", input=history, tools=[WEATHER], extra_headers=PIN_REMOTE)
    assert first.model == REMOTE and first.status == "completed"
    (call,) = first.output
    assert (
        call.type == "function_call" and call.name == "get_weather" and call.id and call.id.startswith("fc_")
    )
    args = validated_args(call.arguments)
    sent = sent_to_standin(provider)[0]
    assert sent["tools"] == [
        {"type": "function", "function": {k: v for k, v in WEATHER.items() if k != "type"}}
    ]

    history += first.output  # the SDK's function_call item, echoed as the SDK sends it
    history.append(
        {"type": "function_call_output", "call_id": call.call_id, "output": json.dumps({**args, "temp": 21})}
    )
    final = sdk.responses.create(model="auto", input=history, tools=[WEATHER], extra_headers=PIN_REMOTE)
    assert final.output[0].type == "message" and final.output_text.startswith("Remote answer to:")
    messages = sent_to_standin(provider)[1]["messages"]
    assert messages[1] == {
        "role": "assistant",
        "tool_calls": [{"id": call.call_id, "type": "function",
                        "function": {"name": "get_weather", "arguments": call.arguments}}],
    }  # fmt: skip
    assert messages[2] == {
        "role": "tool",
        "tool_call_id": call.call_id,
        "content": json.dumps({**args, "temp": 21}),
    }


def test_streamed_function_call_from_the_remote_rung(sdk: OpenAI) -> None:
    events = list(
        sdk.responses.create(
            model="auto", input=ASK_WEATHER, tools=[WEATHER], stream=True, extra_headers=PIN_REMOTE
        )
    )
    kinds = [e.type for e in events]
    assert kinds[2] == "response.output_item.added" and events[2].item.type == "function_call"  # type: ignore[union-attr]
    deltas = [e.delta for e in events if e.type == "response.function_call_arguments.delta"]
    (done,) = [e for e in events if e.type == "response.function_call_arguments.done"]
    assert len(deltas) > 1 and done.arguments == "".join(deltas) and done.name == "get_weather"
    validated_args(done.arguments)
    assert kinds[-2:] == ["response.output_item.done", "response.completed"]
    final = events[-1].response  # type: ignore[union-attr]
    assert final.model == REMOTE and final.output[0].arguments == done.arguments
    assert final.usage is not None and final.usage.output_tokens > 0


def test_forced_function_call_locally_then_its_output(
    sdk: OpenAI, provider: StandinProvider, audit: Audit
) -> None:
    history: list[Any] = [{"role": "user", "content": ASK_WEATHER}]
    first = sdk.responses.create(
        model="auto", input=history, tools=[WEATHER], tool_choice={"type": "function", "name": "get_weather"},
        max_output_tokens=JSON_TOKENS, temperature=0,
    )  # fmt: skip
    assert first.model == LOCAL
    (call,) = first.output
    assert call.type == "function_call" and call.name == "get_weather" and call.status == "completed"
    args = validated_args(call.arguments)
    assert first.tool_choice.type == "function" and first.tool_choice.name == "get_weather"  # type: ignore[union-attr]
    history += first.output
    history.append(
        {"type": "function_call_output", "call_id": call.call_id, "output": json.dumps({**args, "temp": 21})}
    )
    final = sdk.responses.create(
        model="auto", input=history, tools=[WEATHER], tool_choice="none", max_output_tokens=32, temperature=0
    )
    assert final.model == LOCAL and final.output[0].type == "message" and final.output_text.strip()
    call_record, answer_record = audit.new(2)
    assert call_record["output_valid"] is True and call_record["api"] == "responses"
    assert answer_record["model"] == LOCAL
    assert sent_to_standin(provider) == []


def test_json_schema_format_locally(sdk: OpenAI, provider: StandinProvider, audit: Audit) -> None:
    resp = sdk.responses.parse(
        model="auto", input="Invent a person with a name and an age.", text_format=Person,
        max_output_tokens=JSON_TOKENS, temperature=0,
    )  # fmt: skip
    assert resp.model == LOCAL
    person = resp.output_parsed
    assert isinstance(person, Person) and person.name
    assert Person.model_validate_json(resp.output_text) == person
    assert resp.text is not None and resp.text.format is not None and resp.text.format.type == "json_schema"
    (record,) = audit.new(1)
    assert record["output_valid"] is True and record["model"] == LOCAL
    assert sent_to_standin(provider) == []


# -- LangChain ------------------------------------------------------------------------------------------


def chat_openai(gateway: Server, **kw: Any) -> Any:
    from langchain_openai import ChatOpenAI

    return ChatOpenAI(
        base_url=gateway.url + "/v1", api_key="x", model="auto", max_retries=0, timeout=300,
        use_responses_api=True, **kw,
    )  # fmt: skip


def test_langchain_invoke_and_stream(gateway: Server, provider: StandinProvider, audit: Audit) -> None:
    llm = chat_openai(gateway, max_tokens=16, temperature=0)
    msg = llm.invoke("Say hi")
    assert msg.text.strip() and msg.response_metadata["model_name"] == LOCAL
    assert msg.response_metadata["id"].startswith("resp_")
    assert msg.usage_metadata is not None and msg.usage_metadata["output_tokens"] > 0
    chunks = list(llm.stream("Say bye"))
    text = "".join(c.text for c in chunks)
    assert text.strip()
    records = audit.new(2)
    assert [r["api"] for r in records] == ["responses", "responses"]
    assert [r["stream"] for r in records] == [False, True]
    assert sent_to_standin(provider) == []


def test_langchain_bound_tools_on_the_remote_rung(gateway: Server, provider: StandinProvider) -> None:
    llm = chat_openai(gateway, default_headers=PIN_REMOTE)
    tool = {k: v for k, v in WEATHER.items() if k not in ("type", "strict")}
    msg = llm.bind_tools([{"type": "function", "function": tool}]).invoke(ASK_WEATHER)
    (call,) = msg.tool_calls
    assert call["name"] == "get_weather" and call["id"]
    validate_json(call["args"], WEATHER["parameters"])
    assert sent_to_standin(provider)[0]["tools"][0]["function"]["name"] == "get_weather"


# -- bad input ---------------------------------------------------------------------------------------


def post(gateway: Server, body: dict[str, Any], headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.post(gateway.url + "/v1/responses", json=body, headers=headers, timeout=300)


BASE = {"model": "auto", "input": "Say hi", "max_output_tokens": 16}


@pytest.mark.parametrize(
    ("extra", "param", "words"),
    [
        ({"previous_response_id": "resp_123"}, "previous_response_id", "stateless"),
        ({"store": True}, "store", "stateless"),
        ({"conversation": "conv_1"}, "conversation", "stateless"),
        ({"tools": [{"type": "web_search"}]}, "tools[0]", "web_search"),
        ({"tools": [{"type": "file_search", "vector_store_ids": ["vs_1"]}]}, "tools[0]", "file_search"),
        ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0].type", "stateless"),
        ({"input": [{"type": "function_call", "call_id": "c1", "name": "f"}]}, "input[0]", "arguments"),
        ({"input": [{"role": "user", "content": [{"type": "input_image", "file_id": "file_1"}]}]},
         "input[0].content[0]", "file_id"),
        ({"input": [{"role": "system", "content": [{"type": "output_text", "text": "x"}]}]}, "input[0]",
         "assistant"),
        ({"tool_choice": {"type": "function", "name": "nope"}}, "tool_choice", "nope"),
        ({"max_output_tokens": 8}, "max_output_tokens", "16"),
        ({"truncation": "auto"}, "truncation", "disabled"),
        ({"text": {"format": {"type": "json_schema", "schema": {"type": "object"}}}}, "text.format", "name"),
        ({"frequency_penalty": 1}, "frequency_penalty", "not supported"),
    ],
)  # fmt: skip
def test_bad_input_is_a_400_naming_the_field(
    gateway: Server, provider: StandinProvider, extra: dict[str, Any], param: str, words: str
) -> None:
    r = post(gateway, {**BASE, **extra})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["type"] == "invalid_request_error"
    assert error["param"] == param and words in error["message"], error
    assert "Traceback" not in r.text and "/work" not in r.text
    assert sent_to_standin(provider) == []


def test_every_bad_field_is_named_at_once(gateway: Server, sdk: OpenAI) -> None:
    body = {**BASE, "previous_response_id": "resp_1", "store": True, "tools": [{"type": "web_search"}],
            "input": [{"role": "user", "content": "hi"}, {"type": "reasoning", "id": "rs_1"}]}  # fmt: skip
    message = post(gateway, body).json()["error"]["message"]
    for name in ("previous_response_id", "store", "tools[0]", "input[1].type"):
        assert f"'{name}'" in message, message
    with pytest.raises(openai.BadRequestError) as info:  # the SDK raises it as OpenAI's 400
        sdk.responses.create(model="auto", input="hi", previous_response_id="resp_1")
    assert info.value.param == "previous_response_id"


def test_store_false_and_echoed_defaults_are_accepted(gateway: Server) -> None:
    body = {**BASE, "store": False, "include": [], "truncation": "disabled", "parallel_tool_calls": True,
            "reasoning": {"effort": None}, "text": {"format": {"type": "text"}}, "tools": []}  # fmt: skip
    r = post(gateway, body)
    assert r.status_code == 200, r.text
    assert r.json()["store"] is False and r.json()["model"] == LOCAL


# -- privacy ---------------------------------------------------------------------------------------------


def _turn(output: str | list[dict[str, str]] = '{"temp": 21}', city: str = "Paris") -> list[dict[str, Any]]:
    """A tool round trip as Responses input items."""
    return [
        {"role": "user", "content": ASK_WEATHER},
        {"type": "function_call", "call_id": "call_1", "name": "get_weather",
         "arguments": json.dumps({"city": city, "unit": "celsius"})},
        {"type": "function_call_output", "call_id": "call_1", "output": output},
    ]  # fmt: skip


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_a_private_request_never_reaches_the_provider(
    gateway: Server, provider: StandinProvider, audit: Audit, stream: bool
) -> None:
    body = {**BASE, "input": "What is the capital of France?", "stream": stream}
    twin = post(gateway, body, {**PIN_REMOTE})  # the public twin does go out...
    assert twin.status_code == 200 and len(sent_to_standin(provider)) == 1
    provider.requests.clear()
    r = post(gateway, body, {**PIN_REMOTE, **PRIVATE})  # ...the private one, pinned remote, fails closed
    assert r.status_code == 400 and r.json()["error"]["code"] == "private_request_unservable", r.text
    assert provider.requests == []
    local = post(gateway, body, PRIVATE)
    assert local.status_code == 200 and local.headers["x-localroute-model"] == LOCAL
    assert provider.requests == []
    records = audit.new(3)
    assert [r["api"] for r in records] == ["responses"] * 3
    assert [r["privacy"]["class"] for r in records] == ["public", "private", "private"], records


@pytest.mark.parametrize(
    "where",
    [
        {"input": _turn(output=json.dumps({"temp": 21, "owner": EMAIL}))},
        {"input": _turn(city=EMAIL)},
        {"input": _turn(), "instructions": f"Copy {EMAIL} on every answer."},
        {"input": _turn(output=[{"type": "input_text", "text": f"owner: {EMAIL}"}])},
    ],
    ids=["function-call-output", "function-call-arguments", "instructions", "output-parts"],
)
def test_personal_data_in_a_tool_round_trip_stays_local(
    gateway: Server, provider: StandinProvider, audit: Audit, where: dict[str, Any]
) -> None:
    body = {**BASE, "tools": [WEATHER], "tool_choice": "none"}
    twin = post(gateway, {**body, "input": _turn()}, PIN_REMOTE)  # the clean twin does go out...
    assert twin.status_code == 200 and twin.json()["model"] == REMOTE
    provider.requests.clear()
    local = post(gateway, {**body, **where})  # ...this one is served here...
    assert local.status_code == 200 and local.json()["model"] == LOCAL, local.text
    pinned = post(gateway, {**body, **where}, PIN_REMOTE)  # ...and fails closed when pinned remote
    assert pinned.status_code == 400 and pinned.json()["error"]["code"] == "private_request_unservable"
    assert provider.requests == []
    records = audit.new(3)
    assert [r["privacy"]["class"] for r in records] == ["public", "private", "private"], records
    assert [r["privacy"]["kinds"] for r in records] == [[], ["email"], ["email"]], records
    assert [r["api"] for r in records] == ["responses"] * 3
    assert EMAIL not in gateway.audit.read_text()


def test_developer_and_system_items_are_served_locally(sdk: OpenAI) -> None:
    resp = sdk.responses.create(
        model="auto", max_output_tokens=16, temperature=0,
        input=[{"role": "system", "content": "You are terse."},
               {"type": "message", "role": "developer",
                "content": [{"type": "input_text", "text": "No lists."}]},
               {"role": "user", "content": [{"type": "input_text", "text": "Say hi"}]}],
    )  # fmt: skip
    assert resp.model == LOCAL and resp.output_text.strip()


def test_a_stream_that_breaks_ends_with_error_and_response_failed(
    sdk: OpenAI, provider: StandinProvider
) -> None:
    provider.set("stream_break", chunks=3)  # the role chunk and two words, then the connection closes
    events = list(
        sdk.responses.create(model="auto", input="Tell me a fact.", stream=True, extra_headers=PIN_REMOTE)
    )
    kinds = [e.type for e in events]
    assert kinds[0] == "response.created" and kinds[-2:] == ["error", "response.failed"], kinds
    error, failed = events[-2], events[-1]
    assert error.code and error.message  # type: ignore[union-attr]
    assert failed.response.status == "failed" and failed.response.error is not None  # type: ignore[union-attr]
    assert failed.response.error.code == "server_error"  # type: ignore[union-attr]
    assert failed.response.id == events[0].response.id  # type: ignore[union-attr]
    assert [e.sequence_number for e in events] == list(range(len(events)))


def test_an_image_no_local_rung_can_see_is_refused_naming_input(
    gateway: Server, provider: StandinProvider
) -> None:
    image = {"type": "input_image", "image_url": "https://example.test/cat.png"}
    body = {
        **BASE,
        "input": [{"role": "user", "content": [{"type": "input_text", "text": "What is this?"}, image]}],
    }
    r = post(gateway, body, PRIVATE)  # private: only the local rung, which has no vision
    assert r.status_code == 400 and r.json()["error"]["param"] == "input", r.text
    assert provider.requests == []
