"""Whether an answer keeps the request's output contract: JSON for `json_object`, JSON valid against
the schema for `json_schema`, and tool calls that name a declared tool with arguments that parse and
validate against its parameters. A broken contract is a deterministic reason to escalate
(`escalated:invalid_output`), like low confidence; a stream's verdict is recorded, not acted on."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from jsonschema import Draft202012Validator, validators

from localroute.protocol.chat import ChatCompletionRequest


def _unchecked(*_: Any) -> None:
    return None


# Regular expressions are not checked here: Python's engine backtracks, and a client's pattern checked
# on the event loop could stall every request. The grammar already held the model to the pattern.
_Validator = validators.extend(  # type: ignore[no-untyped-call]
    Draft202012Validator, {"pattern": _unchecked, "patternProperties": _unchecked}
)


def has_contract(req: ChatCompletionRequest) -> bool:
    """Whether answers to `req` can be checked at all."""
    return req.calls_tools() or (req.response_format is not None and req.response_format.type != "text")


def broken(req: ChatCompletionRequest, message: Mapping[str, Any]) -> str | None:
    """Why the assistant `message` breaks `req`'s contract, or None when it keeps it."""
    calls = message.get("tool_calls") or []
    if calls:
        if not req.calls_tools():
            return "a tool call nobody asked for"
        tools = {t.function.name: t.function.parameters for t in req.tools or ()}
        for call in calls:
            fn = call.get("function") if isinstance(call, Mapping) else None
            if not isinstance(fn, Mapping) or fn.get("name") not in tools:
                return "a call to an undeclared tool"
            why = _json_problem(fn.get("arguments"), tools[fn["name"]], "tool arguments")
            if why is not None:
                return why
        return None
    if req.tool_choice == "required" or not isinstance(req.tool_choice, str | None):
        return "no tool call, though one was required"
    fmt = req.response_format
    if fmt is None or fmt.type == "text":
        return None
    schema = fmt.json_schema.schema_ if fmt.json_schema is not None else None
    return _json_problem(message.get("content"), schema if fmt.type == "json_schema" else None, "answer")


def _json_problem(text: object, schema: Mapping[str, Any] | None, what: str) -> str | None:
    if not isinstance(text, str):
        return f"{what}: not JSON text"
    try:
        value = json.loads(text)
    except ValueError:
        return f"{what}: not valid JSON"
    if schema is None:
        return None if isinstance(value, dict) or what != "answer" else "answer: not a JSON object"
    try:
        error = next(iter(_Validator(schema).iter_errors(value)), None)
    except Exception:  # a schema the validator cannot use: the grammar is what held the model to it
        return None
    return None if error is None else f"{what}: does not match the JSON schema"


class Assembler:
    """A streamed answer put back together from its chunks: content, and tool calls by index."""

    def __init__(self) -> None:
        self.content: list[str] = []
        self.calls: dict[int, dict[str, Any]] = {}

    def feed(self, chunk: Mapping[str, Any]) -> None:
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta") or {}
            if isinstance(delta.get("content"), str):
                self.content.append(delta["content"])
            for part in delta.get("tool_calls") or ():
                call = self.calls.setdefault(int(part.get("index", 0)), {"name": "", "arguments": ""})
                fn = part.get("function") or {}
                call["name"] += fn.get("name") or ""
                call["arguments"] += fn.get("arguments") or ""

    def message(self) -> dict[str, Any]:
        calls = [{"type": "function", "function": self.calls[i]} for i in sorted(self.calls)]
        return {"role": "assistant", "content": "".join(self.content) or None, "tool_calls": calls}
