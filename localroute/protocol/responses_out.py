"""The way back for `POST /v1/responses`: a chat answer as a `response` object, a chat stream as the
Responses events (`protocol.responses` is the way in). Shapes and event order are the `openai` SDK's
(`openai.types.responses`), which parses them: `Response`, `ResponseStreamEvent`.
"""

from __future__ import annotations

import os
import time
from typing import Any, Literal, NotRequired

from typing_extensions import TypedDict

from localroute.errors import APIError
from localroute.protocol import sse
from localroute.protocol.responses import ItemStatus, ResponsesRequest
from localroute.protocol.surface import Api
from localroute.protocol.wire import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionMessage,
    FunctionCallDelta,
    Usage,
)


class OutputText(TypedDict):
    type: Literal["output_text"]
    text: str
    annotations: list[dict[str, Any]]
    logprobs: list[dict[str, Any]]


class OutputRefusal(TypedDict):
    type: Literal["refusal"]
    refusal: str


class OutputMessage(TypedDict):
    """The assistant's text, an output item."""

    type: Literal["message"]
    id: str
    status: ItemStatus
    role: Literal["assistant"]
    content: list[OutputText | OutputRefusal]


class FunctionCallItem(TypedDict):
    """A call the model made to one of the request's function tools, an output item."""

    type: Literal["function_call"]
    id: str
    call_id: str
    name: str
    arguments: str
    status: ItemStatus


class InputTokensDetails(TypedDict):
    cached_tokens: int
    cache_write_tokens: int


class OutputTokensDetails(TypedDict):
    reasoning_tokens: int


class ResponseUsage(TypedDict):
    input_tokens: int
    input_tokens_details: InputTokensDetails
    output_tokens: int
    output_tokens_details: OutputTokensDetails
    total_tokens: int


class ResponseError(TypedDict):
    code: str
    message: str


class IncompleteDetails(TypedDict):
    reason: Literal["max_output_tokens", "content_filter"]


class ResponseObject(TypedDict):
    """`POST /v1/responses`'s answer, and the `response` its stream's lifecycle events carry."""

    id: str
    object: Literal["response"]
    created_at: int
    status: Literal["in_progress", "completed", "incomplete", "failed"]
    error: ResponseError | None
    incomplete_details: IncompleteDetails | None
    model: str
    output: list[OutputMessage | FunctionCallItem]
    usage: ResponseUsage | None
    instructions: str | None
    max_output_tokens: int | None
    metadata: dict[str, str]
    parallel_tool_calls: bool
    previous_response_id: None
    reasoning: dict[str, Any]
    store: bool
    temperature: float | None
    text: dict[str, Any]
    tool_choice: str | dict[str, str]
    tools: list[dict[str, Any]]
    top_p: float | None
    truncation: Literal["disabled"]
    user: str | None
    background: bool
    service_tier: NotRequired[str]
    prompt_cache_key: NotRequired[str]
    safety_identifier: NotRequired[str]


def _new_id(prefix: str) -> str:
    return f"{prefix}_{os.urandom(16).hex()}"


def _usage(u: Usage | None) -> ResponseUsage | None:
    if u is None:
        return None
    extra: dict[str, Any] = dict(u)  # providers add details the chat Usage type does not name
    prompt_details = extra.get("prompt_tokens_details") or {}
    completion_details = extra.get("completion_tokens_details") or {}
    return {
        "input_tokens": u["prompt_tokens"],
        "input_tokens_details": {
            "cached_tokens": int(prompt_details.get("cached_tokens") or 0),
            "cache_write_tokens": 0,
        },
        "output_tokens": u["completion_tokens"],
        "output_tokens_details": {"reasoning_tokens": int(completion_details.get("reasoning_tokens") or 0)},
        "total_tokens": u["total_tokens"],
    }


def _incomplete(finish: str | None) -> IncompleteDetails | None:
    if finish == "length":
        return {"reason": "max_output_tokens"}
    if finish == "content_filter":
        return {"reason": "content_filter"}
    return None


class ResponsesSurface:
    """One Responses request's way back: its answer as a `response` object, its stream as events."""

    api: Api = "responses"

    def __init__(self, req: ResponsesRequest) -> None:
        self.req = req
        self.id = _new_id("resp")

    def envelope(self, model: str, created: int, output: list[OutputMessage | FunctionCallItem],
                 usage: ResponseUsage | None, finish: str | None) -> ResponseObject:  # fmt: skip
        """The `response` object, echoing the request's settings as OpenAI does; `finish` None: in
        progress."""
        req = self.req
        incomplete = _incomplete(finish)
        fmt = req.text.format if req.text is not None and req.text.format is not None else None
        text: dict[str, Any] = {"format": {"type": "text"} if fmt is None else fmt.model_dump(
            exclude_none=True, by_alias=True)}  # fmt: skip
        if req.text is not None and req.text.verbosity is not None:
            text["verbosity"] = req.text.verbosity
        choice = req.tool_choice
        body: ResponseObject = {
            "id": self.id,
            "object": "response",
            "created_at": created,
            "status": "in_progress" if finish is None else "incomplete" if incomplete else "completed",
            "error": None,
            "incomplete_details": incomplete,
            "model": model,
            "output": output,
            "usage": usage,
            "instructions": req.instructions,
            "max_output_tokens": req.max_output_tokens,
            "metadata": req.metadata or {},
            "parallel_tool_calls": True if req.parallel_tool_calls is None else req.parallel_tool_calls,
            "previous_response_id": None,
            "reasoning": {"effort": req.reasoning.effort if req.reasoning else None, "summary": None},
            "store": False,  # stateless: nothing was stored, whatever a client's SDK defaults to
            "temperature": req.temperature,
            "text": text,
            "tool_choice": "auto"
            if choice is None
            else choice
            if isinstance(choice, str)
            else choice.model_dump(),
            "tools": [t.model_dump(by_alias=True) for t in req.tools or ()],
            "top_p": req.top_p,
            "truncation": "disabled",
            "user": req.user,
            "background": False,
        }
        if req.service_tier is not None:
            body["service_tier"] = req.service_tier
        if req.prompt_cache_key is not None:
            body["prompt_cache_key"] = req.prompt_cache_key
        if req.safety_identifier is not None:
            body["safety_identifier"] = req.safety_identifier
        return body

    def answer(self, result: ChatCompletion) -> ResponseObject:
        choices = result.get("choices") or []
        message: ChatCompletionMessage = (
            choices[0]["message"] if choices else {"role": "assistant", "content": None}
        )
        finish = (choices[0]["finish_reason"] if choices else None) or "stop"
        status: ItemStatus = "incomplete" if _incomplete(finish) else "completed"
        output: list[OutputMessage | FunctionCallItem] = []
        calls = message.get("tool_calls") or []
        content: list[OutputText | OutputRefusal] = []
        if message.get("content") or not calls:
            content.append(_text_part(message.get("content") or ""))
        if refusal := message.get("refusal"):
            content.append({"type": "refusal", "refusal": refusal})
        if content:
            output.append(_message(_new_id("msg"), status, content))
        for call in calls:
            fn = call["function"]
            item: FunctionCallItem = {
                "type": "function_call", "id": _new_id("fc"), "call_id": call["id"], "name": fn["name"],
                "arguments": fn["arguments"], "status": "completed",
            }  # fmt: skip
            output.append(item)
        return self.envelope(result["model"], result["created"], output, _usage(result.get("usage")), finish)

    def translator(self) -> ResponsesStream:
        return ResponsesStream(self)


def _text_part(text: str) -> OutputText:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _message(mid: str, status: ItemStatus, content: list[OutputText | OutputRefusal]) -> OutputMessage:
    return {"type": "message", "id": mid, "status": status, "role": "assistant", "content": content}


# -- the stream -------------------------------------------------------------------------------------


def _failure_code(exc: APIError) -> str:
    """The `response.error.code` OpenAI would give (its codes are few); the `error` event has ours."""
    if exc.status == 429:
        return "rate_limit_exceeded"
    return "invalid_prompt" if exc.status == 400 else "server_error"


class ResponsesStream:
    """Chat chunks in, Responses events out: response.created and .in_progress first; for each output
    item output_item.added, its content part's (or a call's arguments') deltas and .done events, then
    output_item.done; response.completed (or .incomplete) last, carrying the whole response. One item
    is open at a time: text, then each tool call, as a chat stream sends them."""

    def __init__(self, surface: ResponsesSurface) -> None:
        self.surface = surface
        self.seq = 0
        self.model = surface.req.model
        self.created = int(time.time())
        self.started = False
        self.output: list[OutputMessage | FunctionCallItem] = []
        self.msg: OutputMessage | None = None  # the open message item, if any
        self.call: FunctionCallItem | None = None  # the open function call item, if any
        self.calls: dict[int, FunctionCallItem] = {}  # by the chat stream's tool-call index
        self.finish: str | None = None
        self.usage: Usage | None = None

    def _event(self, kind: str, **fields: Any) -> bytes:
        data = sse.encode({"type": kind, **fields, "sequence_number": self.seq})
        self.seq += 1
        return b"event: " + kind.encode() + b"\n" + data

    def _start(self) -> bytes:
        if self.started:
            return b""
        self.started = True
        head = self.surface.envelope(self.model, self.created, [], None, None)
        created = self._event("response.created", response=head)
        return created + self._event("response.in_progress", response=head)

    def feed(self, chunk: ChatCompletionChunk) -> bytes:
        if not self.started:  # the rung that answers names itself in its chunks
            self.model, self.created = chunk.get("model") or self.model, chunk.get("created") or self.created
        out = [self._start()]
        if chunk.get("usage"):
            self.usage = chunk.get("usage")
        for choice in chunk.get("choices") or ():
            if choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            if text := delta.get("content"):
                out.append(self._part("output_text", text))
            if refusal := delta.get("refusal"):
                out.append(self._part("refusal", refusal))
            for tc in delta.get("tool_calls") or ():
                out.append(self._call_delta(tc["index"], tc.get("id"), tc.get("function") or {}))
            if choice.get("finish_reason"):
                self.finish = choice["finish_reason"]
        return b"".join(out)

    def _where(self, item: OutputMessage | FunctionCallItem) -> dict[str, Any]:
        return {
            "item_id": item["id"],
            "output_index": next(i for i, it in enumerate(self.output) if it is item),
        }

    def _part(self, kind: Literal["output_text", "refusal"], piece: str) -> bytes:
        """Add `piece` to the open message's last part, opening the message or a part of `kind`."""
        out = self._close_call()
        if self.msg is None:
            self.msg = _message(_new_id("msg"), "in_progress", [])
            self.output.append(self.msg)
            out += self._event("response.output_item.added", output_index=len(self.output) - 1, item=self.msg)
        msg = self.msg
        if not msg["content"] or msg["content"][-1]["type"] != kind:
            out += self._close_part(msg)
            fresh: OutputText | OutputRefusal = (
                _text_part("") if kind == "output_text" else {"type": "refusal", "refusal": ""}
            )
            msg["content"].append(fresh)
            out += self._event("response.content_part.added", **self._where(msg),
                               content_index=len(msg["content"]) - 1, part=fresh)  # fmt: skip
        where = {**self._where(msg), "content_index": len(msg["content"]) - 1}
        part = msg["content"][-1]
        if not piece:
            return out
        if part["type"] == "output_text":
            part["text"] += piece
            return out + self._event("response.output_text.delta", **where, delta=piece, logprobs=[])
        part["refusal"] += piece
        return out + self._event("response.refusal.delta", **where, delta=piece)

    def _close_part(self, msg: OutputMessage) -> bytes:
        if not msg["content"]:
            return b""
        part = msg["content"][-1]
        where = {**self._where(msg), "content_index": len(msg["content"]) - 1}
        if part["type"] == "output_text":
            out = self._event("response.output_text.done", **where, text=part["text"], logprobs=[])
        else:
            out = self._event("response.refusal.done", **where, refusal=part["refusal"])
        return out + self._event("response.content_part.done", **where, part=part)

    def _close_message(self) -> bytes:
        msg, self.msg = self.msg, None
        if msg is None:
            return b""
        msg["status"] = "incomplete" if _incomplete(self.finish) else "completed"
        out = self._close_part(msg)
        return out + self._event("response.output_item.done", output_index=self._where(msg)["output_index"],
                                 item=msg)  # fmt: skip

    def _call_delta(self, index: int, call_id: str | None, fn: FunctionCallDelta) -> bytes:
        out = b""
        item = self.calls.get(index)
        if item is None:
            out += self._close_message() + self._close_call()
            item = {"type": "function_call", "id": _new_id("fc"), "call_id": call_id or _new_id("call"),
                    "name": fn.get("name") or "", "arguments": "", "status": "in_progress"}  # fmt: skip
            self.calls[index] = self.call = item
            self.output.append(item)
            out += self._event("response.output_item.added", output_index=len(self.output) - 1, item=item)
        if piece := fn.get("arguments"):
            item["arguments"] += piece
            out += self._event("response.function_call_arguments.delta", **self._where(item), delta=piece)
        return out

    def _close_call(self) -> bytes:
        item, self.call = self.call, None
        if item is None:
            return b""
        item["status"] = "incomplete" if _incomplete(self.finish) else "completed"
        where = self._where(item)
        out = self._event("response.function_call_arguments.done", **where, arguments=item["arguments"],
                          name=item["name"])  # fmt: skip
        return out + self._event("response.output_item.done", output_index=where["output_index"], item=item)

    def close(self) -> bytes:
        out = self._start()
        if not self.output:  # an empty answer is one empty message, as in the plain answer
            out += self._part("output_text", "")
        out += self._close_message() + self._close_call()
        usage, finish = _usage(self.usage), self.finish or "stop"
        final = self.surface.envelope(self.model, self.created, self.output, usage, finish)
        kind = "response.incomplete" if final["status"] == "incomplete" else "response.completed"
        return out + self._event(kind, response=final)

    def fail(self, exc: APIError) -> bytes:
        """OpenAI's way: an `error` event, then `response.failed` with what was produced so far."""
        out = self._start()
        out += self._event("error", code=exc.code or exc.type, message=exc.message, param=exc.param)
        failed = self.surface.envelope(self.model, self.created, self.output, _usage(self.usage), None)
        failed["status"] = "failed"
        failed["error"] = {"code": _failure_code(exc), "message": exc.message}
        return out + self._event("response.failed", response=failed)
