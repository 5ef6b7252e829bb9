"""Anthropic's Messages API (`POST /v1/messages`) requests, both directions, each mapping next to its
inverse: a client's request, validated strictly and translated into the internal chat form
(`MessagesRequest.to_chat`), so that routing, privacy, the cascade, cost and audit apply unchanged. The
inverse, a chat body as a Messages request for the native Anthropic rung, is
`protocol/anthropic_outbound.py`; answers and streams, both directions, are `protocol/anthropic_answer.py`.

What cannot be carried through the chat form is refused with a 400 that names the field, never dropped
(docs/anthropic.md lists each): extended `thinking` and `output_config.effort`, `top_k`, an assistant
prefill, server tools, more than four `stop_sequences`, document blocks. Structured output
(`output_config.format`) is the chat form's `json_schema`. `cache_control` is accepted and ignored:
it changes cost on Anthropic's side, never the answer.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from localroute.protocol.chat import MAX_TOKENS, ChatCompletionRequest, Name, StopString
from localroute.protocol.parse import parse_json_body, validate
from localroute.protocol.schema_limits import schema_problem

_STRICT = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, frozen=True)
MAX_STOPS = 4  # what the chat form (and so every local engine) takes
MEDIA_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")
TOOL_ERROR_PREFIX = "Error: "  # how a `tool_result` with `is_error` reads to a chat-form model


class CacheControl(BaseModel):
    """Anthropic's prompt-caching marker: accepted, ignored (it changes cost, not the answer)."""

    model_config = _STRICT
    type: Literal["ephemeral"]
    ttl: Literal["5m", "1h"] | None = None


class TextBlock(BaseModel):
    model_config = _STRICT
    type: Literal["text"]
    text: str
    cache_control: CacheControl | None = None
    citations: None = None  # what an SDK echoes back from an answer; localroute never cites


class Base64Source(BaseModel):
    model_config = _STRICT
    type: Literal["base64"]
    media_type: Literal["image/jpeg", "image/png", "image/gif", "image/webp"]
    data: Annotated[str, Field(min_length=1, pattern=r"^[A-Za-z0-9+/=\s]+$")]


class URLSource(BaseModel):
    model_config = _STRICT
    type: Literal["url"]
    url: Annotated[str, Field(min_length=1, max_length=8192, pattern=r"^https?://")]


class ImageBlock(BaseModel):
    model_config = _STRICT
    type: Literal["image"]
    source: Annotated[Base64Source | URLSource, Field(discriminator="type")]
    cache_control: CacheControl | None = None

    def image_url(self) -> str:
        """The image as the chat form carries it: a `data:` URL or the web address."""
        s = self.source
        return s.url if isinstance(s, URLSource) else f"data:{s.media_type};base64,{s.data}"


ToolId = Annotated[str, Field(min_length=1, max_length=256)]


class ToolUseBlock(BaseModel):
    model_config = _STRICT
    type: Literal["tool_use"]
    id: ToolId
    name: Name
    input: dict[str, Any]
    cache_control: CacheControl | None = None


class ToolResultBlock(BaseModel):
    model_config = _STRICT
    type: Literal["tool_result"]
    tool_use_id: ToolId
    content: str | list[Annotated[TextBlock | ImageBlock, Field(discriminator="type")]] | None = None
    is_error: bool | None = None
    cache_control: CacheControl | None = None


Block = Annotated[TextBlock | ImageBlock | ToolUseBlock | ToolResultBlock, Field(discriminator="type")]


class Message(BaseModel):
    """One turn. A user turn holds text, images and tool results; an assistant turn text and tool uses."""

    model_config = _STRICT
    role: Literal["user", "assistant"]
    content: str | Annotated[list[Block], Field(min_length=1)]

    @field_validator("content")
    @classmethod
    def _fits_role(cls, v: str | list[Block], info: ValidationInfo) -> str | list[Block]:
        if isinstance(v, str):
            return v
        role = info.data.get("role")
        kinds = {b.type for b in v}
        wrong = kinds & ({"tool_result", "image"} if role == "assistant" else {"tool_use"})
        if wrong:
            raise ValueError(f"a '{role}' turn cannot hold a '{sorted(wrong)[0]}' block")
        return v


class Tool(BaseModel):
    """A client tool. Server tools (web search, code execution, ...) run on Anthropic's side and
    have no local equivalent: their `type` is refused."""

    model_config = _STRICT
    name: Name
    description: Annotated[str, Field(max_length=16_384)] | None = None
    input_schema: dict[str, Any]
    type: Literal["custom"] | None = None
    cache_control: CacheControl | None = None

    @field_validator("input_schema")
    @classmethod
    def _bounded(cls, schema: dict[str, Any]) -> dict[str, Any]:
        if schema.get("type") != "object":
            raise ValueError("'input_schema' must be a JSON schema of type 'object'")
        return _bounded_schema(schema)


def _bounded_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """The chat form's checks on a client schema (size, depth, regexes; valid JSON Schema), made here
    so that an error names the Messages field."""
    if (why := schema_problem(schema)) is not None:
        raise ValueError(why)
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        raise ValueError(f"not a valid JSON schema ({exc.message[:120]})") from None
    return schema


class OutputFormat(BaseModel):
    """Structured output: the answer is JSON valid for `schema` (the chat form's `json_schema`)."""

    model_config = _STRICT
    type: Literal["json_schema"]
    schema_: dict[str, Any] = Field(alias="schema")

    _schema_bounded = field_validator("schema_")(_bounded_schema)


class OutputConfig(BaseModel):
    model_config = _STRICT
    format: OutputFormat | None = None
    effort: str | None = None

    @field_validator("effort")
    @classmethod
    def _no_effort(cls, v: str | None) -> str | None:
        if v is not None:
            raise ValueError("'effort' is a thinking budget, which localroute's models do not have; omit it")
        return v


class ToolChoice(BaseModel):
    model_config = _STRICT
    type: Literal["auto", "any", "tool", "none"]
    name: Name | None = None
    disable_parallel_tool_use: bool | None = None

    @field_validator("name")
    @classmethod
    def _name_iff_tool(cls, v: str | None, info: ValidationInfo) -> str | None:
        if (info.data.get("type") == "tool") != (v is not None):
            raise ValueError("'name' is given with, and only with, type 'tool'")
        return v


class Metadata(BaseModel):
    model_config = _STRICT
    user_id: Annotated[str, Field(max_length=256)] | None = None


class Thinking(BaseModel):
    model_config = _STRICT
    type: Literal["enabled", "disabled", "adaptive"]
    budget_tokens: int | None = None

    @field_validator("type")
    @classmethod
    def _disabled(cls, v: str) -> str:
        if v != "disabled":
            raise ValueError(
                "extended thinking is not supported by localroute's models; omit 'thinking' or set "
                "its type to 'disabled'"
            )
        return v


class MessagesRequest(BaseModel):
    """Anthropic's Messages request, as far as localroute can honour it."""

    model_config = _STRICT
    model: Annotated[str, Field(min_length=1, max_length=256)]
    max_tokens: Annotated[int, Field(ge=1, le=MAX_TOKENS)]
    messages: Annotated[list[Message], Field(min_length=1)]
    system: str | Annotated[list[TextBlock], Field(min_length=1)] | None = None
    tools: Annotated[list[Tool], Field(max_length=128)] | None = None
    tool_choice: ToolChoice | None = None
    stop_sequences: list[StopString] | None = None
    temperature: Annotated[float, Field(ge=0.0, le=1.0)] | None = None
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] | None = None
    top_k: int | None = None
    stream: bool = False
    metadata: Metadata | None = None
    thinking: Thinking | None = None
    output_config: OutputConfig | None = None
    # Cost and scheduling on Anthropic's side, not the answer: accepted, ignored.
    cache_control: CacheControl | None = None
    service_tier: Literal["auto", "standard_only"] | None = None

    @field_validator("messages")
    @classmethod
    def _no_prefill(cls, v: list[Message]) -> list[Message]:
        if v[-1].role == "assistant":
            raise ValueError(
                f"messages[{len(v) - 1}] is an assistant turn: continuing a prefilled answer is not "
                "supported by localroute; end with a user turn"
            )
        return v

    @field_validator("tool_choice")
    @classmethod
    def _choice_in_tools(cls, v: ToolChoice | None, info: ValidationInfo) -> ToolChoice | None:
        tools: list[Tool] = info.data.get("tools") or []
        if v is not None and v.type in ("any", "tool") and not tools:
            raise ValueError(f"type '{v.type}' needs at least one tool in 'tools'")
        if v is not None and v.name is not None and v.name not in {t.name for t in tools}:
            raise ValueError(f"it names '{v.name}', which is not in 'tools'")
        return v

    @field_validator("stop_sequences")
    @classmethod
    def _few_stops(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and len(v) > MAX_STOPS:
            raise ValueError(f"at most {MAX_STOPS} stop sequences are supported by localroute's engines")
        return v

    @field_validator("top_k")
    @classmethod
    def _no_top_k(cls, v: int | None) -> int | None:
        if v is not None:
            raise ValueError("'top_k' is not supported by localroute; use 'top_p' or 'temperature'")
        return v

    def to_chat(self) -> ChatCompletionRequest:
        """The same request in the internal chat form (see the module docstring for the mapping)."""
        messages: list[dict[str, Any]] = []
        if self.system is not None:
            system = self.system if isinstance(self.system, str) else _text_parts(self.system)
            messages.append({"role": "system", "content": system})
        for m in self.messages:
            messages += _user_turn(m) if m.role == "user" else [_assistant_turn(m)]
        body: dict[str, Any] = {"model": self.model, "messages": messages, "max_tokens": self.max_tokens}
        if self.stream:  # usage must reach the translator: message_delta carries the output tokens
            body.update(stream=True, stream_options={"include_usage": True})
        for key in ("temperature", "top_p"):
            if (value := getattr(self, key)) is not None:
                body[key] = value
        if self.stop_sequences:
            body["stop"] = list(self.stop_sequences)
        if self.metadata is not None and self.metadata.user_id is not None:
            body["user"] = self.metadata.user_id
        if self.output_config is not None and self.output_config.format is not None:
            fmt = {"name": "output", "schema": self.output_config.format.schema_, "strict": True}
            body["response_format"] = {"type": "json_schema", "json_schema": fmt}
        if self.tools:
            body["tools"] = [_chat_tool(t) for t in self.tools]
        if self.tool_choice is not None:
            body.update(_chat_choice(self.tool_choice, bool(self.tools)))
        return validate(ChatCompletionRequest, body)


def _text_parts(blocks: list[TextBlock]) -> list[dict[str, Any]]:
    return [{"type": "text", "text": b.text} for b in blocks]


def _user_turn(m: Message) -> list[dict[str, Any]]:
    """A user turn: its tool results as `tool` messages (Anthropic puts them first), then the rest as
    one user message. Images a tool returned join that user message: a chat `tool` message is text."""
    if isinstance(m.content, str):
        return [{"role": "user", "content": m.content}]
    out: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for b in m.content:
        if isinstance(b, ToolResultBlock):
            text, images = _tool_result(b)
            out.append({"role": "tool", "tool_call_id": b.tool_use_id, "content": text})
            parts += [{"type": "image_url", "image_url": {"url": i.image_url()}} for i in images]
        elif isinstance(b, TextBlock):
            parts.append({"type": "text", "text": b.text})
        elif isinstance(b, ImageBlock):
            parts.append({"type": "image_url", "image_url": {"url": b.image_url()}})
    if parts:
        out.append({"role": "user", "content": parts})
    return out


def _tool_result(b: ToolResultBlock) -> tuple[str, list[ImageBlock]]:
    if b.content is None or isinstance(b.content, str):
        text, images = b.content or "", []
    else:
        text = "".join(p.text for p in b.content if isinstance(p, TextBlock))
        images = [p for p in b.content if isinstance(p, ImageBlock)]
    return (TOOL_ERROR_PREFIX + text if b.is_error else text), images


def _assistant_turn(m: Message) -> dict[str, Any]:
    if isinstance(m.content, str):
        return {"role": "assistant", "content": m.content}
    texts = [b for b in m.content if isinstance(b, TextBlock)]
    calls = [
        {"id": b.id, "type": "function", "function": {"name": b.name, "arguments": json.dumps(b.input)}}
        for b in m.content
        if isinstance(b, ToolUseBlock)
    ]
    message: dict[str, Any] = {"role": "assistant", "content": _text_parts(texts) if texts else None}
    if calls:
        message["tool_calls"] = calls
    return message


def _chat_tool(t: Tool) -> dict[str, Any]:
    function: dict[str, Any] = {"name": t.name, "parameters": t.input_schema}
    if t.description is not None:
        function["description"] = t.description
    return {"type": "function", "function": function}


def _chat_choice(c: ToolChoice, has_tools: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if c.type == "tool":
        out["tool_choice"] = {"type": "function", "function": {"name": c.name}}
    elif has_tools or c.type != "none":
        out["tool_choice"] = {"auto": "auto", "any": "required", "none": "none"}[c.type]
    if c.disable_parallel_tool_use:
        out["parallel_tool_calls"] = False
    return out


def parse_messages_request(raw: bytes) -> MessagesRequest:
    """Decode and validate a Messages body: one 400 naming every bad field (in Anthropic's shape, by
    path: see gateway/app.py)."""
    return validate(MessagesRequest, parse_json_body(raw))
