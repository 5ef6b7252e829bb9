"""The output contract: an answer that is not the JSON or tool call the request asked for escalates
(`escalated:invalid_output`), a private one is retried locally and then fails closed, and never reaches
a remote rung. The router is driven with the scripted fakes of test_router (their answers are plain
words, so any JSON request gets an answer that breaks its contract)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from localroute.errors import InvalidRequestError
from localroute.privacy.guard import PrivacyViolationError
from localroute.protocol.chat import ChatCompletionRequest
from localroute.routing.contract import Assembler, broken
from tests.test_router import PRIVATE, Reply, rig, run

TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}  # fmt: skip
SCHEMA = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}


def req(**fields: Any) -> ChatCompletionRequest:
    body = {"model": "auto", "messages": [{"role": "user", "content": "hi"}], **fields}
    return ChatCompletionRequest.model_validate(body)


def call(name: str, args: str) -> dict[str, Any]:
    return {"id": "c", "type": "function", "function": {"name": name, "arguments": args}}


JSON_SCHEMA = {"type": "json_schema", "json_schema": {"name": "n", "schema": SCHEMA}}
JSON_OBJECT = {"type": "json_object"}
REQUIRED = {"tools": [TOOL], "tool_choice": "required"}


@pytest.mark.parametrize(
    ("fields", "message", "why"),
    [
        ({}, {"content": "anything"}, None),
        ({"response_format": JSON_OBJECT}, {"content": '{"a": 1}'}, None),
        ({"response_format": JSON_OBJECT}, {"content": "not json"}, "answer: not valid JSON"),
        ({"response_format": JSON_OBJECT}, {"content": "[1, 2]"}, "answer: not a JSON object"),
        ({"response_format": JSON_SCHEMA}, {"content": '{"n": 3}'}, None),
        ({"response_format": JSON_SCHEMA}, {"content": "{}"}, "answer: does not match the JSON schema"),
        ({"tools": [TOOL]}, {"content": "It is sunny."}, None),  # auto: a text answer is allowed
        (REQUIRED, {"content": "sunny"}, "no tool call, though one was required"),
        ({"tools": [TOOL]}, {"tool_calls": [call("get_weather", '{"city": "Paris"}')]}, None),
        ({"tools": [TOOL]}, {"tool_calls": [call("get_time", "{}")]}, "a call to an undeclared tool"),
        ({"tools": [TOOL]}, {"tool_calls": [call("get_weather", "{city: Paris}")]},
         "tool arguments: not valid JSON"),
        ({"tools": [TOOL]}, {"tool_calls": [call("get_weather", '{"town": "Paris"}')]},
         "tool arguments: does not match the JSON schema"),
        ({}, {"tool_calls": [call("get_weather", "{}")]}, "a tool call nobody asked for"),
    ],
)  # fmt: skip
def test_broken_names_what_breaks_the_contract(
    fields: dict[str, Any], message: dict[str, Any], why: str | None
) -> None:
    assert broken(req(**fields), message) == why


def test_a_stream_is_judged_on_the_answer_put_back_together() -> None:
    seen = Assembler()
    opening = {"tool_calls": [{"index": 0, "id": "c", "function": {"name": "get_weather"}}]}
    for delta in ({"role": "assistant"}, opening,
                  {"tool_calls": [{"index": 0, "function": {"arguments": '{"city": '}}]},
                  {"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]}):  # fmt: skip
        seen.feed({"choices": [{"index": 0, "delta": delta}]})
    assert broken(req(tools=[TOOL], tool_choice="required"), seen.message()) is None
    assert json.loads(seen.message()["tool_calls"][0]["function"]["arguments"]) == {"city": "Paris"}


def test_an_answer_breaking_the_contract_escalates_and_is_not_kept() -> None:
    async def go() -> None:
        r = rig(Reply(), Reply())
        _, trace = await r.router.complete(req(response_format={"type": "json_object"}), attempts=r.attempts)
        assert trace.route == "escalated:invalid_output" and trace.model == "top"
        assert [(a["model"], a["outcome"], a["reason"]) for a in trace.attempts] == [
            ("small", "escalated", "invalid_output"), ("top", "ok", None)]  # fmt: skip
        assert r.top.bodies[0]["response_format"] == {"type": "json_object"}  # travels intact
        assert trace.output_valid is False  # the remote's plain words break it too; recorded as such

    run(go)


def test_a_private_answer_breaking_the_contract_is_retried_locally_then_fails_closed() -> None:
    async def go() -> None:
        r = rig(Reply(), Reply())
        with pytest.raises(PrivacyViolationError) as info:
            await r.router.complete(req(response_format=JSON_SCHEMA), privacy=PRIVATE, attempts=r.attempts)
        assert info.value.status == 503 and "requested format" in info.value.message
        assert len(r.small.bodies) == 2 and r.top.bodies == []  # one local retry, nothing remote
        assert [a["outcome"] for a in r.attempts] == ["escalated", "error"]

    run(go)


def test_an_answer_cut_by_the_clients_own_limit_is_not_a_broken_contract() -> None:
    async def go() -> None:
        r = rig(Reply(finish="length"), Reply())
        result, trace = await r.router.complete(
            req(response_format={"type": "json_object"}, max_tokens=6), privacy=PRIVATE, attempts=r.attempts
        )
        assert trace.model == "small" and result["choices"][0]["finish_reason"] == "length"
        assert r.top.bodies == []

    run(go)


def test_a_streamed_answer_records_its_verdict() -> None:
    async def go() -> None:
        r = rig(Reply(), Reply())
        chunks, trace = await r.router.stream(req(response_format={"type": "json_object"}, stream=True))
        [c async for c in chunks]
        assert trace.output_valid is False  # streams are judged, recorded, not re-asked

    run(go)


def test_a_private_request_needing_what_only_a_remote_rung_has_fails_closed_saying_so() -> None:
    image = {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}
    vision = req(messages=[{"role": "user", "content": [{"type": "text", "text": "What is it?"}, image]}])
    r = rig(Reply(), Reply())
    assert r.router.decide(vision).model == "top"  # public: the remote rung can see images
    with pytest.raises(InvalidRequestError) as info:
        r.router.decide(vision, private=True)
    assert (info.value.status, info.value.code) == (400, "private_request_unservable")
    assert "needs vision" in info.value.message and "not sent off this machine" in info.value.message

    async def go() -> None:
        with pytest.raises(InvalidRequestError):
            await r.router.complete(vision, privacy=PRIVATE, attempts=r.attempts)
        assert r.small.bodies == [] and r.top.bodies == []

    run(go)
