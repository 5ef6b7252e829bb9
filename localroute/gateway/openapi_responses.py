"""`POST /v1/responses` in the OpenAPI document: its path and schemas, generated like the rest from the
model that validates the request (`protocol.responses.ResponsesRequest`) and the TypedDict the answer
is built as (`protocol.responses_out.ResponseObject`)."""

from __future__ import annotations

from pydantic import TypeAdapter

from localroute.gateway.openapi_schemas import Schema, obj, ref
from localroute.protocol.responses import ResponsesRequest
from localroute.protocol.responses_out import ResponseObject

_REF = "#/components/schemas/{model}"
EVENTS = (
    "response.created", "response.in_progress", "response.output_item.added", "response.content_part.added",
    "response.output_text.delta", "response.output_text.done", "response.content_part.done",
    "response.function_call_arguments.delta", "response.function_call_arguments.done",
    "response.output_item.done", "response.completed", "response.incomplete", "error", "response.failed",
)  # fmt: skip


def schemas() -> dict[str, Schema]:
    """The request's and the answer's schemas, and every type they use."""
    request = ResponsesRequest.model_json_schema(ref_template=_REF)
    defs: dict[str, Schema] = request.pop("$defs", {})
    # Validated as a list (so every bad item is named), but a string is one user message.
    request["properties"]["input"] = {"anyOf": [{"type": "string"}, request["properties"]["input"]]}
    request["properties"]["model"]["examples"] = ["auto"]
    answer = TypeAdapter(ResponseObject).json_schema(ref_template=_REF, mode="serialization")
    answer_defs: dict[str, Schema] = answer.pop("$defs", {})
    return {**defs, **answer_defs, "ResponsesRequest": request, "ResponseObject": answer}


def answer(headers: Schema) -> Schema:
    """The 200 answer, with the routing `headers` every answer carries."""
    event = obj(
        {
            "event": {"enum": list(EVENTS)},
            "data": {
                "contentMediaType": "application/json",
                "contentSchema": obj(
                    {"type": {"enum": list(EVENTS)}, "sequence_number": {"type": "integer"}}
                ),
            },
        }
    )
    return {
        "description": "The answer: a `response` object, or with `stream: true` its events (`event:` "
        "names the type): response.created, response.in_progress, output items and their deltas, then "
        "response.completed or response.incomplete; an error mid-stream is an `error` event, then "
        "response.failed.",
        "headers": headers,
        "content": {
            "application/json": {"schema": ref("ResponseObject")},
            "text/event-stream": {"schema": event},
        },
    }


def body() -> Schema:
    return {
        "required": True,
        "content": {
            "application/json": {
                "schema": ref("ResponsesRequest"),
                "example": {"model": "auto", "input": "Hi!", "max_output_tokens": 16},
            }
        },
    }
