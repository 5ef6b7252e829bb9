"""The Responses translation without a server: requests into the chat form, chat answers and streams
out, each output checked by *validating* it with the `openai` SDK's own pydantic models (the SDK
itself only constructs them, unchecked), so a missing or misspelt field fails here."""

from __future__ import annotations

import json
from typing import Any

import pytest
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from localroute.errors import InternalError, InvalidRequestError
from localroute.protocol.responses import parse_responses_request
from localroute.protocol.responses_out import ResponsesSurface
from localroute.protocol.wire import ChatCompletionChunk

EVENT = TypeAdapter(ResponseStreamEvent)
TOOL = {"type": "function", "name": "get_weather", "parameters": {"type": "object"}, "strict": True}


def surface(**body: Any) -> ResponsesSurface:
    return ResponsesSurface(parse_responses_request(json.dumps({"model": "auto", **body}).encode()))


def events(frames: bytes) -> list[Any]:
    """The SDK's event objects for the SSE frames, each `event:` line matching its data's type."""
    out = []
    for frame in frames.decode().split("\n\n"):
        if not frame:
            continue
        name, data = frame.split("\n")
        event = EVENT.validate_python(json.loads(data.removeprefix("data: ")))
        assert name == f"event: {event.type}"
        out.append(event)
    assert [e.sequence_number for e in out] == list(range(len(out)))
    return out


def chunk(
    delta: dict[str, Any] | None = None, finish: str | None = None, **extra: Any
) -> ChatCompletionChunk:
    choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]
    return {"id": "c", "object": "chat.completion.chunk", "created": 7, "model": "rung", "choices": choices,
            **extra}  # type: ignore[typeddict-item]  # fmt: skip


def run(s: ResponsesSurface, chunks: list[ChatCompletionChunk]) -> list[Any]:
    t = s.translator()
    return events(b"".join(t.feed(c) for c in chunks) + t.close())


def test_request_translation_into_the_chat_form() -> None:
    req = parse_responses_request(json.dumps({
        "model": "auto", "instructions": "Be brief.", "max_output_tokens": 64, "stream": True,
        "input": [
            {"role": "developer", "content": [{"type": "input_text", "text": "Use tools."}]},
            {"role": "user", "content": [{"type": "input_text", "text": "Look: "},
                                         {"type": "input_image", "image_url": "https://x.test/a.png"}]},
            {"type": "message", "role": "assistant", "id": "msg_1", "status": "completed",
             "content": [{"type": "output_text", "text": "Calling.", "annotations": []}]},
            {"type": "function_call", "call_id": "c1", "name": "get_weather", "arguments": "{}",
             "id": "fc_1"},
            {"type": "function_call", "call_id": "c2", "name": "get_weather", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
            {"type": "function_call_output", "call_id": "c2",
             "output": [{"type": "input_text", "text": "rain"}]},
        ],
        "tools": [TOOL], "tool_choice": {"type": "function", "name": "get_weather"},
        "text": {"format": {"type": "json_schema", "name": "w", "schema": {"type": "object"}},
                 "verbosity": "low"},
        "reasoning": {"effort": "low"}, "metadata": {"k": "v"}, "parallel_tool_calls": False, "store": False,
    }).encode())  # fmt: skip
    chat = req.to_chat().model_dump(exclude_none=True, by_alias=True)
    calls = [{"id": c, "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
             for c in ("c1", "c2")]  # fmt: skip
    assert chat["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "developer", "content": "Use tools."},
        {"role": "user", "content": [{"type": "text", "text": "Look: "},
                                     {"type": "image_url", "image_url": {"url": "https://x.test/a.png"}}]},
        {"role": "assistant", "content": "Calling.", "tool_calls": calls},
        {"role": "tool", "content": "sunny", "tool_call_id": "c1"},
        {"role": "tool", "content": "rain", "tool_call_id": "c2"},
    ]  # fmt: skip
    assert chat["tools"] == [{"type": "function", "function": {k: v for k, v in TOOL.items() if k != "type"}}]
    assert chat["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert chat["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "w", "schema": {"type": "object"}},
    }
    assert chat["max_completion_tokens"] == 64 and chat["stream_options"] == {"include_usage": True}
    assert chat["verbosity"] == "low" and chat["reasoning_effort"] == "low" and chat["metadata"] == {"k": "v"}
    assert chat["parallel_tool_calls"] is False and chat["store"] is False


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": [{"type": "input_text", "text": "x"}]}, "input[0].type"),
        ({"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]},
         "input[0].content[0].type"),
        ({"input": [{"role": "user", "content": "x", "call_id": "c"}]}, "input[0]"),
        ({"input": [{"type": "function_call_output", "call_id": "c", "output": [
            {"type": "input_image", "image_url": "https://x.test/a.png"}]}]}, "input[0]"),
        ({"input": 5}, "input"),
        ({"input": "x", "include": ["message.output_text.logprobs"]}, "include"),
        ({"input": "x", "reasoning": {"summary": "auto"}}, "reasoning.summary"),
        ({"input": "x", "tool_choice": "required"}, "tool_choice"),
        ({"input": "x", "background": True}, "background"),
    ],
)  # fmt: skip
def test_refused_requests_name_the_field(body: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequestError) as info:
        surface(**body)
    assert info.value.param == param, info.value.message


def test_answer_with_text_refusal_and_calls_validates_as_the_sdk_response() -> None:
    s = surface(input="hi", tools=[TOOL], max_output_tokens=16)
    body = s.answer({
        "id": "c", "object": "chat.completion", "created": 7, "model": "rung",
        "choices": [{"index": 0, "finish_reason": "length", "message": {
            "role": "assistant", "content": "Sure.", "refusal": "Not that.",
            "tool_calls": [{"id": "call_1", "type": "function",
                            "function": {"name": "get_weather", "arguments": "{}"}}],
        }}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 16, "total_tokens": 21},
    })  # fmt: skip
    resp = Response.model_validate(body)
    assert (
        resp.status == "incomplete"
        and resp.incomplete_details
        and resp.incomplete_details.reason == "max_output_tokens"
    )
    msg, call = resp.output
    assert msg.type == "message" and msg.status == "incomplete"
    assert [p.type for p in msg.content] == ["output_text", "refusal"] and resp.output_text == "Sure."
    assert call.type == "function_call" and call.call_id == "call_1" and call.id and call.id.startswith("fc_")
    assert resp.usage and resp.usage.input_tokens == 5 and resp.usage.output_tokens == 16
    assert resp.tools[0].type == "function" and resp.store is False


def test_stream_of_text_then_refusal_then_interleaved_calls() -> None:
    s = surface(input="hi", tools=[TOOL])
    out = run(s, [
        chunk({"role": "assistant", "content": "He"}), chunk({"content": "llo"}), chunk({"refusal": "No."}),
        chunk({"tool_calls": [{"index": 0, "id": "call_a", "type": "function",
                               "function": {"name": "get_weather", "arguments": ""}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": "{}"}}]}),
        chunk({"tool_calls": [{"index": 1, "id": "call_b", "type": "function",
                               "function": {"name": "get_weather", "arguments": "{\"a\""}}]}),
        chunk({"tool_calls": [{"index": 1, "function": {"arguments": ":1}"}}]}, "tool_calls"),
        chunk(usage={"prompt_tokens": 3, "completion_tokens": 9, "total_tokens": 12}),
    ])  # fmt: skip
    assert [e.type for e in out] == [
        "response.created", "response.in_progress",
        "response.output_item.added", "response.content_part.added", "response.output_text.delta",
        "response.output_text.delta", "response.output_text.done", "response.content_part.done",
        "response.content_part.added", "response.refusal.delta", "response.refusal.done",
        "response.content_part.done", "response.output_item.done",
        "response.output_item.added", "response.function_call_arguments.delta",
        "response.function_call_arguments.done", "response.output_item.done",
        "response.output_item.added", "response.function_call_arguments.delta",
        "response.function_call_arguments.delta", "response.function_call_arguments.done",
        "response.output_item.done", "response.completed",
    ]  # fmt: skip
    final = out[-1].response
    assert final.model == "rung" and final.id == out[0].response.id == s.id and final.status == "completed"
    msg, a, b = final.output
    assert [p.type for p in msg.content] == ["output_text", "refusal"] and final.output_text == "Hello"
    assert (a.call_id, a.arguments, b.call_id, b.arguments) == ("call_a", "{}", "call_b", '{"a":1}')
    assert final.usage and final.usage.total_tokens == 12


def test_an_empty_stream_is_one_empty_message() -> None:
    out = run(surface(input="hi"), [chunk({"role": "assistant", "content": ""}, "stop")])
    assert [e.type for e in out][2:] == [
        "response.output_item.added", "response.content_part.added", "response.output_text.done",
        "response.content_part.done", "response.output_item.done", "response.completed",
    ]  # fmt: skip
    assert out[-1].response.output_text == "" and out[-1].response.usage is None


def test_a_failure_before_any_chunk_still_opens_the_stream() -> None:
    """The SDK's stream helper needs `response.created` first, even when nothing else came."""
    t = surface(input="hi").translator()
    out = events(t.fail(InternalError("Internal error in localroute.")))
    assert [e.type for e in out] == ["response.created", "response.in_progress", "error", "response.failed"]
    assert out[2].code == "internal_error" and out[3].response.error.code == "server_error"
    assert out[3].response.status == "failed" and out[3].response.model == "auto"
