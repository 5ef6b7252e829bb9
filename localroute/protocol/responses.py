"""OpenAI's Responses API (`POST /v1/responses`), stateless: the request translated into the internal
chat form, and the chat answer and stream translated back into a `response` object and its events.

Stateless means nothing is kept between requests: `previous_response_id`, `conversation`, stored
prompts, `background` and `store: true` need a store and are refused with a 400 naming them, as are
built-in tools (web_search, file_search, ...), which run on OpenAI's servers. Everything else is
honoured (input items, instructions, function tools, `text.format`, sampling, the token cap) or
forwarded to a remote rung as the chat field it maps to (`metadata`, `user`, `reasoning.effort`, ...).
The way back is `protocol.responses_out`; docs/responses.md has the mapping and what was rejected.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from localroute.protocol.chat import (
    MAX_TOKENS,
    ChatCompletionRequest,
    FunctionDef,
    JSONSchemaFormat,
    Name,
)
from localroute.protocol.parse import parse_json_body, validate

_STRICT = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, frozen=True, populate_by_name=True)
Id = Annotated[str, Field(min_length=1, max_length=256)]
ItemStatus = Literal["in_progress", "completed", "incomplete"]

# -- the request ------------------------------------------------------------------------------------


class InputPart(BaseModel):
    """One part of an input message's content: text (`input_text`, or `output_text` echoed from an
    answer), an image (user messages), or a refusal (assistant messages)."""

    model_config = _STRICT
    type: Literal["input_text", "input_image", "output_text", "refusal"]
    text: str | None = None
    image_url: Annotated[str, Field(min_length=1, pattern=r"^(?:https?://|data:image/)")] | None = None
    detail: Literal["auto", "low", "high"] | None = None
    file_id: str | None = None
    annotations: list[dict[str, Any]] | None = None
    logprobs: list[dict[str, Any]] | None = None
    refusal: str | None = None

    @field_validator("type", mode="before")
    @classmethod
    def _served_kind(cls, v: object) -> object:
        if v == "input_file" or v == "input_audio":
            raise ValueError(f"'{v}' parts are not supported: send text as input_text, images as input_image")
        return v

    @model_validator(mode="after")
    def _one_payload(self) -> InputPart:
        if self.file_id is not None:
            raise ValueError("'file_id' needs OpenAI's file storage: send the image as 'image_url'")
        payload = {"input_text": "text", "output_text": "text", "input_image": "image_url"}.get(
            self.type, self.type
        )
        if getattr(self, payload) is None:
            raise ValueError(f"an '{self.type}' part needs its '{payload}' field")
        allowed = {payload, "type"} | {
            "output_text": {"annotations", "logprobs"},
            "input_image": {"detail"},
        }.get(self.type, set())
        stray = [f for f in self.model_fields_set if f not in allowed and getattr(self, f) is not None]
        if stray:  # it would travel unread: neither the model nor the privacy scan would see it
            raise ValueError(f"an '{self.type}' part cannot also carry '{sorted(stray)[0]}'")
        return self


# Fields each kind of item carries, beyond `type`, `id` and `status`.
_ITEM_FIELDS = {
    "message": ({"role", "content"}, {"phase"}),
    "function_call": ({"call_id", "name", "arguments"}, set()),
    "function_call_output": ({"call_id", "output"}, set()),
}


class InputItem(BaseModel):
    """One input item: a message (`type` may be left out), a function call the model made, or its
    output. Items an SDK echoes back from an answer (`id`, `status`, `phase`) are accepted."""

    model_config = _STRICT
    type: Literal["message", "function_call", "function_call_output"] = "message"
    id: Id | None = None
    status: ItemStatus | None = None
    role: Literal["user", "assistant", "system", "developer"] | None = None
    content: str | list[InputPart] | None = None
    phase: Literal["commentary", "final_answer"] | None = None
    call_id: Id | None = None
    name: Name | None = None
    arguments: str | None = None
    output: str | list[InputPart] | None = None

    @field_validator("type", mode="before")
    @classmethod
    def _served_kind(cls, v: object) -> object:
        if v == "item_reference":
            raise ValueError(
                "an 'item_reference' points to a stored item; localroute is stateless: send the item"
            )
        if v == "reasoning":
            raise ValueError("'reasoning' items are not supported: localroute produces none; leave them out")
        if isinstance(v, str) and v not in _ITEM_FIELDS and v.endswith(("_call", "_call_output")):
            raise ValueError(f"'{v}' items belong to built-in tools, which localroute does not run")
        return v

    @model_validator(mode="after")
    def _fits_type(self) -> InputItem:
        needed, optional = _ITEM_FIELDS[self.type]
        missing = [f for f in sorted(needed) if getattr(self, f) is None]
        if missing:
            raise ValueError(f"a '{self.type}' item needs '{missing[0]}'")
        allowed = needed | optional | {"type", "id", "status"}
        stray = [f for f in self.model_fields_set if f not in allowed and getattr(self, f) is not None]
        if stray:
            raise ValueError(f"a '{self.type}' item cannot carry '{sorted(stray)[0]}'")
        kinds = {p.type for p in self.content} if isinstance(self.content, list) else set()
        if self.role == "assistant" and kinds & {"input_image"}:
            raise ValueError("an assistant message cannot hold an image")
        if self.role not in (None, "assistant") and kinds & {"output_text", "refusal"}:
            raise ValueError(
                f"only an assistant message holds '{sorted(kinds & {'output_text', 'refusal'})[0]}'"
            )
        if self.role not in (None, "user") and "input_image" in kinds:
            raise ValueError("only a user message may hold an image")
        if isinstance(self.output, list) and any(p.type != "input_text" for p in self.output):
            raise ValueError("a function call's output is text: 'input_text' parts only")
        return self


class FunctionTool(FunctionDef):
    """A function tool in the Responses' flat shape (the chat API nests it under `function`)."""

    type: Literal["function"]

    @model_validator(mode="before")
    @classmethod
    def _function_only(cls, data: object) -> object:
        kind = data.get("type") if isinstance(data, dict) else None
        if isinstance(kind, str) and kind != "function":
            raise ValueError(
                f"built-in tool '{kind[:64]}' is not supported: localroute serves function tools only"
            )
        return data


class FunctionChoice(BaseModel):
    model_config = _STRICT
    type: Literal["function"]
    name: Name


class TextFormat(JSONSchemaFormat):
    """`text.format`: plain text, any JSON object, or JSON of a schema (`name`, `schema`, `strict`)."""

    type: Literal["text", "json_object", "json_schema"]
    name: Name | None = None  # type: ignore[assignment]  # required with json_schema only

    @model_validator(mode="after")
    def _schema_fields(self) -> TextFormat:
        given = [f for f in ("name", "description", "schema_", "strict") if getattr(self, f) is not None]
        if self.type == "json_schema" and self.name is None:
            raise ValueError("a 'json_schema' format needs a 'name'")
        if self.type != "json_schema" and given:
            raise ValueError(f"only a 'json_schema' format has '{given[0].rstrip('_')}'")
        return self


class TextConfig(BaseModel):
    model_config = _STRICT
    format: TextFormat | None = None
    verbosity: Literal["low", "medium", "high"] | None = None


class Reasoning(BaseModel):
    model_config = _STRICT
    effort: Literal["none", "minimal", "low", "medium", "high"] | None = None
    summary: None = None
    generate_summary: None = None


class ResponsesStreamOptions(BaseModel):
    model_config = _STRICT
    include_obfuscation: bool | None = None


# Fields that need state kept between requests, or a service localroute does not run; why, for the 400.
_REFUSED = {
    "previous_response_id": "localroute is stateless and keeps no responses: send the whole conversation "
    "in 'input'",
    "conversation": "localroute is stateless and keeps no conversations: send them in 'input'",
    "prompt": "stored prompt templates live on OpenAI's servers: send 'instructions' and 'input'",
    "background": "background responses need stored responses, which localroute does not keep",
    "store": "localroute is stateless and keeps no responses: leave 'store' out or set it to false",
    "context_management": "context management is not supported",
    "max_tool_calls": "it caps built-in tool calls, which localroute does not run",
    "moderation": "moderation is not supported",
    "prompt_cache_options": "prompt caching options are not supported",
    "prompt_cache_retention": "prompt caching options are not supported",
    "top_logprobs": "log probabilities are not supported on /v1/responses",
}
# `include` values that change nothing here: localroute produces no reasoning items to add them to.
_INCLUDABLE = frozenset({"reasoning.encrypted_content"})


def _as_items(v: object) -> object:
    if isinstance(v, str):
        return [{"role": "user", "content": v}]
    if not isinstance(v, list):
        raise ValueError("input should be a string or a list of input items")
    return v


class ResponsesRequest(BaseModel):
    """OpenAI's Responses request (`client.responses.create`)."""

    model_config = _STRICT
    model: Annotated[str, Field(min_length=1, max_length=256)]
    # A string is one user message. Validated as a list either way, so that every bad item is named
    # (pydantic reports a union's errors under the union, and the 400 would name only the first).
    input: Annotated[list[InputItem], Field(min_length=1), BeforeValidator(_as_items)]
    instructions: str | None = None
    tools: Annotated[list[FunctionTool], Field(max_length=128)] | None = None
    tool_choice: Literal["none", "auto", "required"] | FunctionChoice | None = None
    parallel_tool_calls: bool | None = None
    text: TextConfig | None = None
    stream: bool = False
    stream_options: ResponsesStreamOptions | None = None
    # OpenAI's floor: fewer than 16 tokens is refused there too.
    max_output_tokens: Annotated[int, Field(ge=16, le=MAX_TOKENS)] | None = None
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] | None = None
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] | None = None
    reasoning: Reasoning | None = None
    truncation: Literal["disabled", "auto"] | None = None
    include: Annotated[list[str], Field(max_length=16)] | None = None
    metadata: Annotated[dict[str, Annotated[str, Field(max_length=512)]], Field(max_length=16)] | None = None
    user: Annotated[str, Field(max_length=256)] | None = None
    service_tier: Literal["auto", "default", "flex", "scale", "priority"] | None = None
    prompt_cache_key: Annotated[str, Field(max_length=1024)] | None = None
    safety_identifier: Annotated[str, Field(max_length=256)] | None = None
    store: bool | None = None
    previous_response_id: str | None = None
    conversation: str | dict[str, Any] | None = None
    prompt: dict[str, Any] | None = None
    background: bool | None = None
    context_management: list[dict[str, Any]] | None = None
    max_tool_calls: int | None = None
    moderation: dict[str, Any] | None = None
    prompt_cache_options: dict[str, Any] | None = None
    prompt_cache_retention: str | None = None
    top_logprobs: int | None = None

    @field_validator(*_REFUSED)
    @classmethod
    def _refused(cls, v: object, info: ValidationInfo) -> object:
        if v is not None and v is not False and not (info.field_name == "top_logprobs" and v == 0):
            raise ValueError(_REFUSED[str(info.field_name)])
        return v

    @field_validator("truncation")
    @classmethod
    def _no_truncation(cls, v: str | None) -> str | None:
        if v == "auto":
            raise ValueError("'auto' would drop input items silently; localroute answers a request too "
                             "long for a model with a 400 instead: use 'disabled'")  # fmt: skip
        return v

    @field_validator("include")
    @classmethod
    def _includable(cls, v: list[str] | None) -> list[str] | None:
        if v and (bad := [x for x in v if x not in _INCLUDABLE]):
            raise ValueError(f"'{bad[0][:64]}' is not supported")
        return v

    @field_validator("tool_choice")
    @classmethod
    def _choice_in_tools(
        cls, v: Literal["none", "auto", "required"] | FunctionChoice | None, info: ValidationInfo
    ) -> Literal["none", "auto", "required"] | FunctionChoice | None:
        tools: list[FunctionTool] = info.data.get("tools") or []
        if isinstance(v, FunctionChoice) and v.name not in {t.name for t in tools}:
            raise ValueError(f"it names '{v.name}', which is not in 'tools'")
        if v == "required" and not tools:
            raise ValueError("'required' needs at least one tool in 'tools'")
        return v

    def to_chat(self) -> ChatCompletionRequest:
        """The same request in the internal chat form, which routing, privacy and the rungs serve."""
        body: dict[str, Any] = {"model": self.model, "messages": _messages(self), "stream": self.stream}
        if self.stream:  # usage is the last chunk only when asked for: the final event needs it
            options = (self.stream_options or _NO_OPTIONS).model_dump(exclude_none=True)
            body["stream_options"] = {"include_usage": True, **options}
        if self.tools is not None:
            # Already checked (the same validators, inherited): handed over as built models, which
            # pydantic does not validate again, so each client schema is checked once, not twice
            # (the JSON-schema meta-check is most of a request's parse time).
            body["tools"] = [
                {"type": "function", "function": FunctionDef.model_construct(**_fields(t, FunctionDef))}
                for t in self.tools
            ]
        if isinstance(self.tool_choice, FunctionChoice):
            body["tool_choice"] = {"type": "function", "function": {"name": self.tool_choice.name}}
        elif self.tool_choice is not None:
            body["tool_choice"] = self.tool_choice
        fmt = self.text.format if self.text is not None else None
        if fmt is not None and fmt.type == "json_schema":
            schema = JSONSchemaFormat.model_construct(**_fields(fmt, JSONSchemaFormat))
            body["response_format"] = {"type": "json_schema", "json_schema": schema}
        elif fmt is not None:
            body["response_format"] = {"type": fmt.type}
        if self.text is not None and self.text.verbosity is not None:
            body["verbosity"] = self.text.verbosity
        if self.reasoning is not None and self.reasoning.effort is not None:
            body["reasoning_effort"] = self.reasoning.effort
        if self.max_output_tokens is not None:
            body["max_completion_tokens"] = self.max_output_tokens
        for key in ("temperature", "top_p", "parallel_tool_calls", "metadata", "user", "service_tier",
                    "prompt_cache_key", "safety_identifier", "store"):  # fmt: skip
            if (value := getattr(self, key)) is not None:
                body[key] = value
        # Every check the chat form makes was made above, under the Responses' names: this cannot fail
        # on a request that passed, and if it did the 400 would still name the chat field.
        return validate(ChatCompletionRequest, body)


_NO_OPTIONS = ResponsesStreamOptions()


def _fields(model: BaseModel, base: type[BaseModel]) -> dict[str, Any]:
    """The fields of `model` that `base` (a class it extends) has and the client set."""
    return {f: getattr(model, f) for f in base.model_fields if f in model.model_fields_set}


def _text_parts(parts: list[InputPart]) -> str | list[dict[str, Any]]:
    """Content in the chat form: a string when it is all text, else text and image parts."""
    if all(p.type in ("input_text", "output_text") for p in parts):
        return "".join(p.text or "" for p in parts)
    out: list[dict[str, Any]] = []
    for p in parts:
        if p.type == "input_image":
            image = {"url": p.image_url, **({"detail": p.detail} if p.detail else {})}
            out.append({"type": "image_url", "image_url": image})
        elif p.type == "refusal":
            out.append({"type": "refusal", "refusal": p.refusal})
        else:
            out.append({"type": "text", "text": p.text})
    return out


def _messages(req: ResponsesRequest) -> list[dict[str, Any]]:
    """The chat messages: instructions first, as a system message; consecutive function calls become
    one assistant message's tool calls; each function call output a tool message."""
    messages: list[dict[str, Any]] = []
    if req.instructions is not None:
        messages.append({"role": "system", "content": req.instructions})
    for item in req.input:
        if item.type == "function_call":
            call = {"id": item.call_id, "type": "function",
                    "function": {"name": item.name, "arguments": item.arguments}}  # fmt: skip
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant":
                last.setdefault("tool_calls", []).append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif item.type == "function_call_output":
            output = item.output if isinstance(item.output, str) else _text_parts(item.output or [])
            messages.append({"role": "tool", "tool_call_id": item.call_id, "content": output})
        else:
            content = item.content if isinstance(item.content, str) else _text_parts(item.content or [])
            messages.append({"role": item.role, "content": content})
    return messages


def parse_responses_request(raw: bytes) -> ResponsesRequest:
    """Decode and validate a Responses body: one 400 naming each bad field."""
    return validate(ResponsesRequest, parse_json_body(raw))
