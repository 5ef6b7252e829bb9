"""The llama.cpp rung's structured output on the real SmolLM2-135M, through a real gateway: JSON valid
against ten different `response_format` schemas and a valid tool call for five tool sets (`tool_choice`
"required" or a named tool), each streamed and not. Validity is checked here with jsonschema, apart
from the gateway's own contract check; the route header shows the first answer held (no retry).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from jsonschema import Draft202012Validator

from tests import conftest
from tests.conftest import DEFAULT_MODEL, Server, repo_routing, repo_rung, start_gateway

MODEL = DEFAULT_MODEL
MAX_TOKENS = 192


def obj(required: bool = True, **props: Any) -> dict[str, Any]:
    """An object schema with these properties, all required unless `required` is False."""
    schema: dict[str, Any] = {"type": "object", "properties": props, "additionalProperties": False}
    if required:
        schema["required"] = list(props)
    return schema


STR = {"type": "string", "maxLength": 40}

# (name, prompt, schema): each exercises a different part of the schema-to-grammar conversion.
SCHEMAS: list[tuple[str, str, dict[str, Any]]] = [
    ("flat", "Invent a person with a name and an age.", obj(name=STR, age={"type": "integer"})),
    (
        "enum",
        "Classify the sentiment of: I love this phone.",
        obj(sentiment={"enum": ["positive", "negative", "neutral"]}, confidence={"type": "number"}),
    ),
    ("nested", "Describe Paris.", obj(city=obj(name=STR, country=STR), population={"type": "integer"})),
    (
        "string_array",
        "Name up to three colours of the French flag.",
        obj(colors={"type": "array", "items": STR, "minItems": 1, "maxItems": 3}),
    ),
    (
        "object_array",
        "List a shopping list of at most two items with quantities.",
        obj(items={"type": "array", "items": obj(name=STR, qty={"type": "integer"}), "maxItems": 2}),
    ),
    (
        "bool_and_null",
        "Is the shop open on Sunday? Add a note or null.",
        obj(is_open={"type": "boolean"}, note={"type": ["string", "null"], "maxLength": 40}),
    ),
    (
        "any_of",
        "How many legs does a spider have?",
        obj(answer={"anyOf": [{"type": "integer"}, {"type": "string", "maxLength": 20}]}),
    ),
    (
        "refs",  # the shape pydantic's model_json_schema() gives a nested model
        "Invent an order shipped to an address.",
        {
            "$defs": {"Address": obj(street=STR, city=STR)},
            **obj(order_id={"type": "integer"}, ship_to={"$ref": "#/$defs/Address"}),
        },
    ),
    (
        "formats_and_const",
        "Plan a meeting on a date.",
        obj(kind={"const": "meeting"}, date={"type": "string", "format": "date"}, title=STR),
    ),
    (
        "pattern_and_optional",
        "Give an airport code like CDG and, if you like, a city.",
        obj(False, code={"type": "string", "pattern": "^[A-Z]{3}$"}, city=STR) | {"required": ["code"]},
    ),
]


def fn(name: str, description: str, parameters: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "function",
        "function": {"name": name, "description": description, "parameters": parameters},
    }


WEATHER = fn(
    "get_weather", "Current weather in a city", obj(city=STR, unit={"enum": ["celsius", "fahrenheit"]})
)
TIME = fn("get_time", "Current time in a time zone", obj(timezone=STR))
SEARCH = fn("search_web", "Search the web", obj(query=STR, max_results={"type": "integer"}))
ORDER = fn(
    "create_order",
    "Create an order",
    obj(
        customer=obj(name=STR, email=STR),
        lines={"type": "array", "items": obj(sku=STR, qty={"type": "integer"}), "minItems": 1, "maxItems": 2},
    ),
)
NO_ARGS = fn("list_files", "List the files in the current folder", {"type": "object", "properties": {}})


def named(tool: str) -> dict[str, Any]:
    return {"type": "function", "function": {"name": tool}}


# (name, prompt, tools, tool_choice): "required" lets the model pick among the tools; a dict names one.
TOOL_SETS: list[tuple[str, str, list[dict[str, Any]], Any]] = [
    ("one_tool", "What is the weather in Paris?", [WEATHER], "required"),
    ("two_tools", "What time is it in Tokyo?", [WEATHER, TIME], "required"),
    ("named_of_three", "Find recipes for pancakes.", [WEATHER, TIME, SEARCH], named("search_web")),
    ("nested_arguments", "Order two apples for Ann.", [ORDER], "required"),
    ("no_arguments", "What files are here?", [NO_ARGS, WEATHER], named("list_files")),
]  # fmt: skip


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, smollm2: Path) -> Iterator[Server]:
    text = conftest.config_text(models=[repo_rung(MODEL, cache_prompt=False)], routing=repo_routing())
    srv = start_gateway(tmp_path_factory.mktemp("structured"), text)
    yield srv
    srv.stop()


def post(srv: Server, body: dict[str, Any]) -> tuple[httpx.Headers, dict[str, Any]]:
    """A non-streamed answer: its headers and its one message (with the finish reason)."""
    r = httpx.post(srv.url + "/v1/chat/completions", json=body, timeout=300)
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    return r.headers, {**choice["message"], "finish_reason": choice["finish_reason"]}


def stream(srv: Server, body: dict[str, Any]) -> tuple[httpx.Headers, dict[str, Any], list[dict[str, Any]]]:
    """A streamed answer: its headers, the message put together from the deltas, and the deltas."""
    deltas: list[dict[str, Any]] = []
    finish = None
    with httpx.stream(
        "POST", srv.url + "/v1/chat/completions", json={**body, "stream": True}, timeout=300
    ) as r:
        assert r.status_code == 200, r.read()
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            assert "error" not in chunk, chunk
            for choice in chunk["choices"]:
                deltas.append(choice["delta"])
                finish = choice["finish_reason"] or finish
        headers = r.headers
    content = "".join(d.get("content") or "" for d in deltas)
    calls: dict[int, dict[str, Any]] = {}
    for d in deltas:
        for part in d.get("tool_calls") or ():
            call = calls.setdefault(part["index"], {"id": None, "type": None, "name": "", "arguments": ""})
            call["id"] = call["id"] or part.get("id")
            call["type"] = call["type"] or part.get("type")
            call["name"] += (part.get("function") or {}).get("name") or ""
            call["arguments"] += (part.get("function") or {}).get("arguments") or ""
    tool_calls = [
        {"id": c["id"], "type": c["type"], "function": {"name": c["name"], "arguments": c["arguments"]}}
        for _, c in sorted(calls.items())
    ]
    message = {"role": "assistant", "content": content or None, "finish_reason": finish}
    if tool_calls:
        message["tool_calls"] = tool_calls
    return headers, message, deltas


def served_locally_first_time(headers: httpx.Headers) -> None:
    assert headers["x-localroute-model"] == MODEL
    assert "invalid_output" not in headers["x-localroute-route"], headers["x-localroute-route"]


def valid(schema: dict[str, Any], text: str | None) -> Any:
    assert isinstance(text, str), text
    value = json.loads(text)
    errors = [e.message for e in Draft202012Validator(schema).iter_errors(value)]
    assert not errors, f"{value!r}: {errors}"
    return value


@pytest.mark.parametrize("streamed", [False, True], ids=["complete", "stream"])
@pytest.mark.parametrize(("name", "prompt", "schema"), SCHEMAS, ids=[s[0] for s in SCHEMAS])
def test_json_schema_answer_is_valid(
    gateway: Server, name: str, prompt: str, schema: dict[str, Any], streamed: bool
) -> None:
    Draft202012Validator.check_schema(schema)
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": prompt}],
        "response_format": {"type": "json_schema", "json_schema": {"name": name, "schema": schema}},
        "max_tokens": MAX_TOKENS,
        "temperature": 0,
    }
    headers, message = stream(gateway, body)[:2] if streamed else post(gateway, body)
    served_locally_first_time(headers)
    assert message["finish_reason"] == "stop", message
    assert not message.get("tool_calls")
    valid(schema, message["content"])


@pytest.mark.parametrize("streamed", [False, True], ids=["complete", "stream"])
@pytest.mark.parametrize(("name", "prompt", "tools", "choice"), TOOL_SETS, ids=[t[0] for t in TOOL_SETS])
def test_forced_tool_call_is_valid(
    gateway: Server, name: str, prompt: str, tools: list[dict[str, Any]], choice: Any, streamed: bool
) -> None:
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": prompt}],
        "tools": tools,
        "tool_choice": choice,
        "max_tokens": MAX_TOKENS,
        "temperature": 0,
    }
    if streamed:
        headers, message, deltas = stream(gateway, body)
        # OpenAI's stream shape: the call's id, type and name come first, in one delta, before any
        # argument text; later deltas carry only the index and argument pieces.
        parts = [p for d in deltas for p in d.get("tool_calls") or ()]
        assert parts and parts[0]["id"] and parts[0]["type"] == "function" and parts[0]["function"]["name"]
        assert all("id" not in p and "name" not in p.get("function", {}) for p in parts[1:]), parts
        assert len(parts) >= 2, f"the call came in one piece, not streamed: {parts}"
    else:
        headers, message = post(gateway, body)
    served_locally_first_time(headers)
    assert message["finish_reason"] == "tool_calls", message
    assert message["content"] is None
    (call,) = message["tool_calls"]
    assert call["type"] == "function" and call["id"].startswith("call_")
    declared = {t["function"]["name"]: t["function"]["parameters"] for t in tools}
    allowed = {choice["function"]["name"]} if isinstance(choice, dict) else set(declared)
    assert call["function"]["name"] in allowed
    valid(declared[call["function"]["name"]], call["function"]["arguments"])


def test_json_object_answer_is_an_object(gateway: Server) -> None:
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Reply in JSON with keys name and age for a person."}],
        "response_format": {"type": "json_object"},
        "max_tokens": MAX_TOKENS,
        "temperature": 0,
    }
    headers, message = post(gateway, body)
    served_locally_first_time(headers)
    assert message["finish_reason"] == "stop", message
    assert isinstance(json.loads(message["content"]), dict)
