"""Anthropic Messages answers and streams, both directions, each mapping next to its inverse:

- to a client of `/v1/messages`: a chat completion as an Anthropic `message` (`MessagesSurface.answer`)
  and a chat stream as Anthropic's typed events (`MessagesStream`, a `Translator`);
- from the native Anthropic rung: a `message` as a chat completion (`chat_completion`) and Anthropic's
  events as chat chunks (`ChunkReader`).

Event names and shapes follow https://docs.anthropic.com/en/api/messages-streaming: `message_start`,
`content_block_start`, `ping`, `content_block_delta` (`text_delta`, `input_json_delta`),
`content_block_stop`, `message_delta` (stop reason, cumulative usage), `message_stop`, and `error`.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any, Literal, cast

from typing_extensions import TypedDict  # pydantic reads only this one on Python < 3.12

from localroute.errors import APIError, UpstreamError
from localroute.protocol.surface import Api, Translator
from localroute.protocol.wire import ChatCompletion, ChatCompletionChunk, Usage

StopReason = Literal["end_turn", "max_tokens", "stop_sequence", "tool_use", "refusal"]
# chat finish_reason -> Anthropic stop_reason, and back.
STOP_REASONS: dict[str, StopReason] = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use",
                "function_call": "tool_use", "content_filter": "refusal"}  # fmt: skip
FINISH_REASONS = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length",
                  "tool_use": "tool_calls", "refusal": "content_filter", "pause_turn": "stop",
                  "model_context_window_exceeded": "length"}  # fmt: skip


class TextContent(TypedDict):
    type: Literal["text"]
    text: str


class ToolUseContent(TypedDict):
    """A tool call: `input` is the arguments as a JSON object (the chat form carries them as text)."""

    type: Literal["tool_use"]
    id: str
    name: str
    input: dict[str, Any]


class MessageUsage(TypedDict):
    input_tokens: int
    output_tokens: int


class AnthropicMessage(TypedDict):
    """The answer to a `/v1/messages` request. `model` is the rung that answered, as in chat completions."""

    id: str
    type: Literal["message"]
    role: Literal["assistant"]
    model: str
    content: list[TextContent | ToolUseContent]
    stop_reason: StopReason | None
    stop_sequence: str | None
    usage: MessageUsage


class AnthropicErrorDetail(TypedDict):
    type: str
    message: str


class AnthropicError(TypedDict):
    """An error under `/v1/messages` (`APIError.anthropic_body`)."""

    type: Literal["error"]
    error: AnthropicErrorDetail


def message_id() -> str:
    return "msg_" + os.urandom(12).hex()


def event(name: str, data: Mapping[str, Any]) -> bytes:
    """One Anthropic SSE event: its name on an `event:` line, then its JSON on a `data:` line."""
    return f"event: {name}\ndata: ".encode() + json.dumps(data, separators=(",", ":")).encode() + b"\n\n"


def _stop(
    finish: str | None, choice: Mapping[str, Any], stops: Sequence[str]
) -> tuple[StopReason, str | None]:
    """Anthropic's (stop_reason, stop_sequence). Which stop string ended a chat answer is known only
    where the engine says so (vLLM's `stop_reason`, the Anthropic rung); else it reads as `end_turn`."""
    matched = choice.get("stop_reason")
    if finish == "stop" and isinstance(matched, str) and matched in stops:
        return "stop_sequence", matched
    return STOP_REASONS.get(finish or "stop", "end_turn"), None  # a finish_reason we do not know: end_turn


def _tool_input(arguments: str) -> dict[str, Any]:
    try:
        value = json.loads(arguments or "{}")
    except ValueError:
        value = None
    if not isinstance(value, dict):  # a tool_use block's input is an object; anything else is a bad answer
        raise UpstreamError(
            "The model's tool call arguments are not a JSON object.", code="invalid_tool_call"
        )
    return value


class MessagesSurface:
    """The way back to a `/v1/messages` client. `stops` are the request's stop sequences."""

    api: Api = "messages"

    def __init__(self, stops: Sequence[str] = ()) -> None:
        self.stops = tuple(stops)

    def answer(self, result: ChatCompletion) -> AnthropicMessage:
        choices: Sequence[Mapping[str, Any]] = result.get("choices") or [{}]
        choice = choices[0]
        message: Mapping[str, Any] = choice.get("message") or {}
        content: list[TextContent | ToolUseContent] = []
        if message.get("content") or not message.get("tool_calls"):
            content.append({"type": "text", "text": message.get("content") or ""})
        for call in message.get("tool_calls") or ():
            fn = call.get("function") or {}
            content.append(
                {
                    "type": "tool_use",
                    "id": call.get("id") or _tool_id(),
                    "name": fn.get("name", ""),
                    "input": _tool_input(fn.get("arguments", "")),
                }
            )
        reason, sequence = _stop(choice.get("finish_reason"), choice, self.stops)
        usage = result.get("usage") or {"prompt_tokens": 0, "completion_tokens": 0}
        return {
            "id": message_id(),
            "type": "message",
            "role": "assistant",
            "model": result.get("model", ""),  # the rung that answered, as chat completions say
            "content": content,
            "stop_reason": reason,
            "stop_sequence": sequence,
            "usage": {"input_tokens": usage["prompt_tokens"], "output_tokens": usage["completion_tokens"]},
        }

    def translator(self) -> Translator:
        return MessagesStream(self.stops)


def _tool_id() -> str:
    return "toolu_" + os.urandom(12).hex()


class MessagesStream:
    """A chat stream as Anthropic's events. `message_start` (and a `ping`) go out with the first chunk;
    a block opens at its first text or tool call and closes when the next opens or the answer ends;
    `message_delta` waits for the end, when the usage chunk (the gateway always asks for it) is in."""

    def __init__(self, stops: Sequence[str] = ()) -> None:
        self.stops = tuple(stops)
        self.started = False
        self.block = -1  # index of the open content block; -1: none yet
        self.open: str | None = None  # "text" or "tool_use" (with the chat tool-call index in `call`)
        self.call = -1
        self.reason: tuple[StopReason, str | None] = ("end_turn", None)
        self.usage: Usage | None = None

    def _start(self, model: str) -> bytes:
        self.started = True
        message: dict[str, Any] = {
            "id": message_id(),
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 0, "output_tokens": 0},
        }  # counts come in message_delta
        return event("message_start", {"type": "message_start", "message": message}) + event(
            "ping", {"type": "ping"}
        )

    def _open(self, block: dict[str, Any]) -> bytes:
        out = self._close_block()
        self.block += 1
        self.open = block["type"]
        return out + event(
            "content_block_start",
            {"type": "content_block_start", "index": self.block, "content_block": block},
        )

    def _close_block(self) -> bytes:
        if self.open is None:
            return b""
        self.open = None
        return event("content_block_stop", {"type": "content_block_stop", "index": self.block})

    def _delta(self, delta: dict[str, Any]) -> bytes:
        data = {"type": "content_block_delta", "index": self.block, "delta": delta}
        return event("content_block_delta", data)

    def feed(self, chunk: ChatCompletionChunk) -> bytes:
        out = b"" if self.started else self._start(chunk.get("model", ""))
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta") or {}
            if text := delta.get("content"):
                if self.open != "text":
                    out += self._open({"type": "text", "text": ""})
                out += self._delta({"type": "text_delta", "text": text})
            for call in delta.get("tool_calls") or ():
                fn = call.get("function") or {}
                if self.open != "tool_use" or call.get("index", 0) != self.call:
                    self.call = call.get("index", 0)
                    block = {
                        "type": "tool_use",
                        "id": call.get("id") or _tool_id(),
                        "name": fn.get("name", ""),
                        "input": {},
                    }
                    out += self._open(block)
                if args := fn.get("arguments"):
                    out += self._delta({"type": "input_json_delta", "partial_json": args})
            if choice.get("finish_reason") is not None:
                self.reason = _stop(choice["finish_reason"], cast(Mapping[str, Any], choice), self.stops)
        return out

    def close(self) -> bytes:
        out = b"" if self.started else self._start("")
        if self.block == -1:  # an empty answer is still one (empty) text block, as Anthropic sends it
            out += self._open({"type": "text", "text": ""})
        out += self._close_block()
        usage = self.usage or {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
        reason, sequence = self.reason
        out += event(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": reason, "stop_sequence": sequence},
                "usage": {
                    "input_tokens": usage["prompt_tokens"],
                    "output_tokens": usage["completion_tokens"],
                },
            },
        )
        return out + event("message_stop", {"type": "message_stop"})

    def fail(self, exc: APIError) -> bytes:
        return event("error", exc.anthropic_body())


# -- from the native Anthropic rung -----------------------------------------------------------------


def _usage(u: Mapping[str, Any]) -> Usage:
    prompt = sum(
        int(u.get(k) or 0) for k in ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
    )
    out = int(u.get("output_tokens") or 0)
    return {"prompt_tokens": prompt, "completion_tokens": out, "total_tokens": prompt + out}


def chat_completion(msg: Mapping[str, Any], stops: Sequence[str] = ()) -> ChatCompletion:
    """An Anthropic `message` as a chat completion. A matched stop sequence is kept in the choice's
    `stop_reason`, as vLLM does, so that `MessagesSurface` can say `stop_sequence` again."""
    blocks = [b for b in msg.get("content") or () if isinstance(b, dict)]
    text = "".join(str(b.get("text") or "") for b in blocks if b.get("type") == "text")
    calls = [
        {
            "id": str(b.get("id")),
            "type": "function",
            "function": {"name": str(b.get("name")), "arguments": json.dumps(b.get("input") or {})},
        }
        for b in blocks
        if b.get("type") == "tool_use"
    ]
    message: dict[str, Any] = {"role": "assistant", "content": text if text or not calls else None}
    if calls:
        message["tool_calls"] = calls
    stop = str(msg.get("stop_reason") or "end_turn")
    choice: dict[str, Any] = {
        "index": 0,
        "message": message,
        "finish_reason": FINISH_REASONS.get(stop, "stop"),
    }
    if stop == "stop_sequence" and isinstance(msg.get("stop_sequence"), str):
        choice["stop_reason"] = msg["stop_sequence"]
    return cast(
        ChatCompletion,
        {
            "id": str(msg.get("id") or message_id()),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": str(msg.get("model") or ""),
            "choices": [choice],
            "usage": _usage(msg.get("usage") or {}),
        },
    )


class ChunkReader:
    """Anthropic's stream events (decoded `data:` objects) as chat chunks, one event at a time.

    `read` returns the chunks for one event (often none: pings, block stops); `done` turns true at
    `message_stop`. An `error` event raises the error, as a chat stream's error chunk would."""

    def __init__(self) -> None:
        self.done = False
        self.id = "chatcmpl-" + os.urandom(12).hex()
        self.model = ""
        self.created = int(time.time())
        self.usage: dict[str, Any] = {}
        self.calls = -1  # chat index of the last tool call
        self.kinds: dict[int, str] = {}  # Anthropic block index -> block type

    def _chunk(
        self, delta: Mapping[str, Any], finish: str | None = None, **extra: Any
    ) -> ChatCompletionChunk:
        choice = {"index": 0, "delta": dict(delta), "finish_reason": finish, **extra}
        return cast(
            ChatCompletionChunk,
            {
                "id": self.id,
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": self.model,
                "choices": [choice],
            },
        )

    def read(self, data: Mapping[str, Any]) -> list[ChatCompletionChunk]:
        kind = data.get("type")
        if kind == "message_start":
            msg = data.get("message") or {}
            self.model = str(msg.get("model") or "")
            self.usage.update({k: v for k, v in (msg.get("usage") or {}).items() if v is not None})
            return [self._chunk({"role": "assistant", "content": ""})]
        if kind == "content_block_start":
            block = data.get("content_block") or {}
            self.kinds[int(data.get("index", 0))] = str(block.get("type"))
            if block.get("type") == "tool_use":
                self.calls += 1
                call = {
                    "index": self.calls,
                    "id": block.get("id"),
                    "type": "function",
                    "function": {"name": block.get("name"), "arguments": ""},
                }
                return [self._chunk({"tool_calls": [call]})]
            if block.get("type") == "text" and block.get("text"):
                return [self._chunk({"content": block["text"]})]
            return []
        if kind == "content_block_delta":
            delta = data.get("delta") or {}
            if delta.get("type") == "text_delta":
                return [self._chunk({"content": str(delta.get("text") or "")})]
            if delta.get("type") == "input_json_delta" and delta.get("partial_json"):
                args = {"index": self.calls, "function": {"arguments": str(delta["partial_json"])}}
                return [self._chunk({"tool_calls": [args]})]
            return []  # thinking or citations: never asked for
        if kind == "message_delta":
            self.usage.update({k: v for k, v in (data.get("usage") or {}).items() if v is not None})
            delta = data.get("delta") or {}
            stop = str(delta.get("stop_reason") or "end_turn")
            extra = (
                {"stop_reason": delta["stop_sequence"]} if isinstance(delta.get("stop_sequence"), str) else {}
            )
            return [self._chunk({}, FINISH_REASONS.get(stop, "stop"), **extra)]
        if kind == "message_stop":
            self.done = True
            last = self._chunk({})
            last["choices"] = []
            last["usage"] = _usage(self.usage)
            return [last]
        if kind == "error":
            raise ProviderStreamError(data)
        return []  # ping, content_block_stop, and event types added later


class ProviderStreamError(Exception):
    """An `error` event in a provider's stream; `body` is the event's data (Anthropic's error shape)."""

    def __init__(self, body: Mapping[str, Any]) -> None:
        super().__init__("error event")
        self.body = body
