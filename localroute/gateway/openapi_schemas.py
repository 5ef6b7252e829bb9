"""JSON Schemas of what the gateway takes and answers: the components of `GET /openapi.json`.

All are generated, so the document and the code cannot disagree: the request schema by pydantic from
the model that validates requests (`protocol.chat.ChatCompletionRequest`), the response schemas from
the TypedDicts the code builds its answers as (`protocol.wire`, `protocol.records`), through
pydantic's `TypeAdapter`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import TypeAdapter
from pydantic.json_schema import JsonSchemaMode

from localroute.observe.stats import LATENCY_BOUNDS_MS
from localroute.protocol import records, text_completion, wire
from localroute.protocol.anthropic import MessagesRequest
from localroute.protocol.anthropic_answer import AnthropicError, AnthropicMessage
from localroute.protocol.chat import ChatCompletionRequest
from localroute.protocol.completions import CompletionRequest
from localroute.protocol.feedback import FeedbackAnswer

Schema = dict[str, Any]
STR: Schema = {"type": "string"}
_REF = "#/components/schemas/{model}"
_INTERNAL = "x_localroute"  # an engine's accounting: the router removes it before answering


def ref(name: str) -> Schema:
    """A reference to the component schema `name`."""
    return {"$ref": _REF.format(model=name)}


def obj(props: Schema, *, optional: tuple[str, ...] = (), closed: bool = False) -> Schema:
    """An object with these properties, all required but `optional`; `closed`: no others."""
    schema: Schema = {
        "type": "object",
        "required": [k for k in props if k not in optional],
        "properties": props,
    }
    if closed:
        schema["additionalProperties"] = False
    return schema


def components() -> dict[str, Schema]:
    """Every named schema the document refers to."""
    requests, responses = _request_schemas(), _response_schemas()
    if clash := requests.keys() & responses.keys():  # one name, two schemas: a reference would lie
        raise RuntimeError(f"request and response schemas share names: {sorted(clash)}")
    return {**requests, **responses}


def _request_schemas() -> dict[str, Schema]:
    """`ChatCompletionRequest` and the models it uses, with pydantic's `$defs` moved under components."""
    schema = ChatCompletionRequest.model_json_schema(ref_template=_REF)
    defs: dict[str, Schema] = schema.pop("$defs", {})
    props = schema["properties"]
    props["model"]["examples"] = ["auto"]
    for branch in props["seed"]["anyOf"]:  # a validator, not a type, holds this range: say it here
        if branch.get("type") == "integer":
            branch.update(minimum=-(2**63), maximum=2**64 - 1)
    legacy = CompletionRequest.model_json_schema(ref_template=_REF)
    defs.update(legacy.pop("$defs", {}))
    legacy["properties"]["model"]["examples"] = ["auto"]
    for branch in legacy["properties"]["seed"]["anyOf"]:
        if branch.get("type") == "integer":
            branch.update(minimum=-(2**63), maximum=2**64 - 1)
    return {
        **defs,
        "ChatCompletionRequest": schema,
        "CompletionRequest": legacy,
        **_messages_request_schemas(),
    }


def _messages_request_schemas() -> dict[str, Schema]:
    """Anthropic's `MessagesRequest` and its models, named `Messages...` (chat's `Tool` is another)."""
    template = _REF.format(model="Messages{model}")
    schema = MessagesRequest.model_json_schema(ref_template=template)
    defs: dict[str, Schema] = {"Messages" + k: v for k, v in schema.pop("$defs", {}).items()}
    return {**defs, "MessagesRequest": schema}


def _answers() -> dict[str, TypeAdapter[Any]]:
    """Component name -> the type of that answer. The names are the document's, kept from before
    they were generated: `Error` and `Decision` are spelled `ErrorBody` and `Explanation` in code."""
    return {
        "Error": TypeAdapter(wire.ErrorBody),
        "Usage": TypeAdapter(wire.Usage),
        "ChatCompletion": TypeAdapter(wire.ChatCompletion),
        "ChatCompletionChunk": TypeAdapter(wire.ChatCompletionChunk),
        "TextCompletion": TypeAdapter(text_completion.TextCompletion),
        "ModelList": TypeAdapter(wire.ModelList),
        "Decision": TypeAdapter(wire.Explanation),
        "Feedback": TypeAdapter(FeedbackAnswer),
        "Health": TypeAdapter(wire.Health),
        "Stats": TypeAdapter(records.Stats),
        "AnthropicMessage": TypeAdapter(AnthropicMessage),
        "AnthropicError": TypeAdapter(AnthropicError),
    }


def _response_schemas() -> dict[str, Schema]:
    """The answers' types and every type they use, in one set of definitions."""
    inputs: list[tuple[str, JsonSchemaMode, TypeAdapter[Any]]] = [
        (name, "serialization", adapter) for name, adapter in _answers().items()
    ]
    tops, definitions = TypeAdapter.json_schemas(inputs, ref_template=_REF)
    # Each answer is a reference to its type's definition, named as the type is: name it as the answer.
    names = {top["$ref"].rsplit("/", 1)[-1]: name for (name, _), top in tops.items()}
    refs = {_REF.format(model=old): _REF.format(model=new) for old, new in names.items()}
    defs: dict[str, Schema] = _renamed({names.get(k, k): v for k, v in definitions["$defs"].items()}, refs)
    for name in ("ChatCompletion", "ChatCompletionChunk"):
        del defs[name]["properties"][_INTERNAL]
    del defs["EngineAccounting"]
    # A constant, not a type, holds the histogram's length: say it here.
    hist = defs["LatencyHistogram"]["properties"]
    n = len(LATENCY_BOUNDS_MS)
    hist["bounds_ms"].update(minItems=n, maxItems=n)
    hist["counts"].update(minItems=n + 1, maxItems=n + 1)
    return defs


def _renamed(node: Any, refs: Mapping[str, str]) -> Any:
    """`node` with every `$ref` in `refs` pointing to its new name."""
    if isinstance(node, dict):
        return {k: refs.get(v, v) if k == "$ref" else _renamed(v, refs) for k, v in node.items()}
    if isinstance(node, list):
        return [_renamed(v, refs) for v in node]
    return node
