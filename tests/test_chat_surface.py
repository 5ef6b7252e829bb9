"""The whole chat-completions request surface: what real clients send is accepted, what a rung needs
is derived, every offending field is named at once, and each rung gets the body it should."""

from __future__ import annotations

import json
from typing import Any

import pytest

from localroute.config.privacy import ALL_KINDS
from localroute.errors import InvalidRequestError
from localroute.privacy.detect import Detector
from localroute.privacy.guard import body_texts
from localroute.protocol.chat import parse_chat_request
from localroute.routing.contract import broken

USER = {"role": "user", "content": "What is the weather in Paris?"}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        "strict": True,
    },
}
# What the openai SDK sends back when a loop appends `resp.choices[0].message` (pydantic dump).
ECHOED_ASSISTANT = {
    "role": "assistant",
    "content": "Hello!",
    "refusal": None,
    "annotations": [],
    "audio": None,
    "function_call": None,
    "tool_calls": None,
}
CITY_SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string"}},
    "required": ["name"],
    "additionalProperties": False,
}
JSON_SCHEMA = {"type": "json_schema", "json_schema": {"name": "city", "strict": True, "schema": CITY_SCHEMA}}
IMAGE = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "low"}}
OBFUSCATION = {"include_usage": True, "include_obfuscation": False}
TOOL_TURN = [
    USER,
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
            }
        ],
    },
    {"role": "tool", "tool_call_id": "call_1", "content": '{"temp_c": 18}'},
]


def parse(**fields: Any) -> Any:
    data = {"model": "auto", "messages": [USER], **fields}
    return parse_chat_request(json.dumps(data).encode())


@pytest.mark.parametrize(
    "fields",
    [
        pytest.param({"presence_penalty": 0, "frequency_penalty": 0}, id="default-penalties"),
        pytest.param({"tools": []}, id="empty-tools"),
        pytest.param({"metadata": {"app": "x"}, "store": False}, id="metadata-store"),
        pytest.param({"stream": True, "stream_options": OBFUSCATION}, id="include_obfuscation"),
        pytest.param({"logit_bias": {"50256": -100}}, id="logit_bias"),
        pytest.param({"logprobs": True, "top_logprobs": 3}, id="top_logprobs"),
        pytest.param({"n": 2}, id="n-2"),
        pytest.param({"tools": [WEATHER], "tool_choice": "auto", "parallel_tool_calls": False}, id="tools"),
        pytest.param({"response_format": {"type": "json_object"}}, id="json_object"),
        pytest.param({"response_format": JSON_SCHEMA}, id="json_schema"),
        pytest.param({"messages": [USER, ECHOED_ASSISTANT, USER]}, id="echoed-assistant"),
        pytest.param({"messages": TOOL_TURN, "tools": [WEATHER]}, id="tool-round-trip"),
        pytest.param({"messages": [{"role": "user", "content": [{"type": "text", "text": "What?"}, IMAGE]}]},
                     id="image"),
        pytest.param({"reasoning_effort": "low", "verbosity": "low", "service_tier": "auto",
                      "prompt_cache_key": "k", "safety_identifier": "s", "user": "u"}, id="bookkeeping"),
    ],
)  # fmt: skip
def test_what_real_clients_send_is_accepted(fields: dict[str, Any]) -> None:
    parse(**fields)


@pytest.mark.parametrize(
    ("fields", "needs"),
    [
        ({}, set()),
        ({"tools": []}, set()),
        ({"tools": [WEATHER], "tool_choice": "none"}, set()),
        ({"tools": [WEATHER]}, {"tools"}),
        ({"messages": TOOL_TURN}, {"tools"}),
        ({"response_format": {"type": "text"}}, set()),
        ({"response_format": {"type": "json_object"}}, {"json_object"}),
        ({"logprobs": True, "top_logprobs": 2}, {"logprobs", "top_logprobs"}),
        ({"n": 1}, set()),
        ({"n": 3}, {"n"}),
        ({"messages": [{"role": "user", "content": [IMAGE]}]},
         {"vision"}),
    ],
)  # fmt: skip
def test_needs_names_what_a_rung_must_do(fields: dict[str, Any], needs: set[str]) -> None:
    assert parse(**fields).needs() == needs


def test_every_offending_field_is_named_in_one_error() -> None:
    with pytest.raises(InvalidRequestError) as info:
        parse(temperature=5, top_p="x", frobnicate=1, stop=7)
    msg = info.value.message
    for param in ("'temperature'", "'top_p'", "'frobnicate'", "'stop'"):
        assert param in msg
    assert info.value.param == "temperature" and info.value.status == 400


def test_several_unknown_fields_are_listed_together() -> None:
    with pytest.raises(InvalidRequestError) as info:
        parse(foo=1, bar=2)
    assert info.value.message == "Unsupported parameters: 'foo', 'bar' are not supported by localroute."
    assert info.value.code == "unsupported_parameter"


def test_backend_knobs_stay_refused() -> None:
    with pytest.raises(InvalidRequestError) as info:
        parse(api_base="http://elsewhere", tools=[WEATHER])
    assert info.value.param == "api_base" and "backend setting" in info.value.message


def test_remote_body_forwards_what_the_client_set_and_adds_no_limit() -> None:
    req = parse(tools=[WEATHER], tool_choice="required", metadata={"a": "b"}, reasoning_effort="low")
    body = req.remote_body("gpt", None)
    assert "max_tokens" not in body and "max_completion_tokens" not in body
    assert body["tools"][0]["function"]["strict"] is True
    assert body["tool_choice"] == "required" and body["metadata"] == {"a": "b"}
    assert body["reasoning_effort"] == "low" and body["model"] == "gpt"


@pytest.mark.parametrize(
    ("fields", "param", "name", "value"),
    [
        ({"max_tokens": 50}, None, "max_tokens", 50),
        ({"max_completion_tokens": 60}, None, "max_completion_tokens", 60),
        ({"max_tokens": 50}, "max_completion_tokens", "max_completion_tokens", 50),
        ({"max_completion_tokens": 60}, "max_tokens", "max_tokens", 60),
    ],
)
def test_remote_body_sends_the_clients_limit_under_the_name_the_provider_wants(
    fields: dict[str, Any], param: str | None, name: str, value: int
) -> None:
    body = parse(**fields).remote_body("gpt", param)
    limits = {k: v for k, v in body.items() if k in ("max_tokens", "max_completion_tokens")}
    assert limits == {name: value}


def test_local_body_drops_bookkeeping_and_keeps_what_shapes_the_answer() -> None:
    req = parse(metadata={"a": "b"}, store=True, user="u", reasoning_effort="low", presence_penalty=0.5,
                response_format=JSON_SCHEMA)  # fmt: skip
    body = req.engine_body("m", 64)
    for dropped in ("metadata", "store", "user", "reasoning_effort"):
        assert dropped not in body
    assert body["presence_penalty"] == 0.5
    assert body["response_format"]["json_schema"]["schema"] == CITY_SCHEMA  # by its wire name


# -- what the privacy scan sees: every client-written string a provider would receive ----------------

EMAIL = "alice.smith@example.com"
DESCRIBED = {"name": "x", "description": f"for {EMAIL}", "schema": {"type": "object"}}
ENUM_TOOL = {"name": "f", "parameters": {"type": "object", "properties": {"to": {"enum": [EMAIL]}}}}
CITED = {
    "role": "assistant",
    "content": "ok",
    "annotations": [{"type": "url_citation", "url_citation": {"title": EMAIL}}],
}
ESCAPED = {
    "id": "c1",
    "type": "function",
    "function": {"name": "f", "arguments": '{"to": "alice\\u0040example.com"}'},
}
PICTURE = {"type": "image_url", "image_url": {"url": f"https://example.com/img?owner={EMAIL}"}}


@pytest.mark.parametrize(
    "fields",
    [
        pytest.param({"user": EMAIL}, id="user"),
        pytest.param({"metadata": {"owner": EMAIL}}, id="metadata-value"),
        pytest.param({"metadata": {EMAIL: "x"}}, id="metadata-key"),
        pytest.param({"prompt_cache_key": EMAIL, "safety_identifier": "s"}, id="prompt_cache_key"),
        pytest.param({"response_format": {"type": "json_schema", "json_schema": DESCRIBED}}, id="schema"),
        pytest.param({"tools": [{"type": "function", "function": ENUM_TOOL}]}, id="tool-parameters"),
        pytest.param({"messages": [USER, CITED]}, id="echoed-annotations"),
        pytest.param({"messages": [USER, {"role": "assistant", "content": None, "tool_calls": [ESCAPED]}]},
                     id="json-escaped-tool-arguments"),
        pytest.param({"messages": [{"role": "user", "content": [{"type": "text", "text": "see"}, PICTURE]}]},
                     id="image-url"),
    ],
)  # fmt: skip
def test_personal_data_anywhere_a_provider_would_read_it_is_found(fields: dict[str, Any]) -> None:
    req = parse(**fields)
    detector = Detector(ALL_KINDS)
    classified = body_texts(req.model_dump(exclude_none=True, by_alias=True))
    assert detector.kinds_in(classified) == ("email",)
    sent = req.remote_body("gpt", None)
    assert body_texts(sent) == classified  # the guard's fast path sees the very texts classified


def test_a_content_part_cannot_smuggle_a_second_payload() -> None:
    with pytest.raises(InvalidRequestError) as info:
        parse(messages=[{"role": "user", "content": [{"type": "text", "text": "hi", "refusal": EMAIL}]}])
    assert "cannot also carry 'refusal'" in info.value.message


@pytest.mark.parametrize(
    ("schema", "why"),
    [
        ({"type": "string", "pattern": "^(a?){30}a{30}$"}, "nests quantifiers"),
        ({"type": "string", "pattern": "^a{5000}$"}, "repeats more than 1000"),
        ({"type": "string", "minLength": 2_000_000_000}, "'minLength' is 2000000000"),
        ({"$ref": "#/nope"}, "points to nothing"),
        ({"$defs": {"a": {"$ref": "#/%24defs/a"}}, "$ref": "#/$defs/a"}, "form a cycle"),
        ({"type": "object", "properties": 5}, "not a valid JSON schema"),
        ({"type": "foo"}, "not a valid JSON schema"),
    ],
)
def test_schemas_that_would_stall_or_crash_a_rung_are_refused(schema: dict[str, Any], why: str) -> None:
    with pytest.raises(InvalidRequestError) as info:
        parse(response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema}})
    assert info.value.param == "response_format.json_schema.schema" and why in info.value.message


def test_checking_an_answer_never_runs_the_clients_regex() -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": {
        "type": "object", "properties": {"s": {"type": "string", "pattern": "^[a-z]+$"}}}}}  # fmt: skip
    # The grammar holds the model to the pattern; the gateway checks the rest of the schema only.
    assert broken(parse(response_format=fmt), {"content": '{"s": "NOT LOWER"}'}) is None
    assert broken(parse(response_format=fmt), {"content": '{"s": 5}'}) is not None
