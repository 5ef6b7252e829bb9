"""OpenAI chat-completions requests: what a client may send, validated once at the edge.

The whole request surface is accepted: tools and tool results, structured outputs, images, sampling
knobs, and the fields an SDK echoes back from an answer (`refusal`, `annotations`, `audio`). Each is
either honoured by the rung that serves the request, forwarded to it, or (for bookkeeping fields that
change nothing about the answer, such as `metadata`) accepted and documented as such in the README's
table. Unknown fields are still refused, with every offending one named: a client that sets one must
learn that localroute did not honour it. What a request needs of a rung is `needs()`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from localroute.protocol.parse import parse_json_body, validate
from localroute.protocol.schema_limits import schema_problem

_STRICT = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, frozen=True, populate_by_name=True)
# Token counts are C ints in every engine; a larger one is a client mistake, not "unlimited".
MAX_TOKENS = 2**31 - 1
# llama-cpp-python re-checks every stop string at every token; real ones are a few characters.
MAX_STOP_CHARS = 1024
StopString = Annotated[str, Field(max_length=MAX_STOP_CHARS)]
Name = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.:-]{1,64}$")]
# `suffix` and `best_of`: legacy completions only (protocol/completions.py).
Capability = Literal[
    "tools", "json_object", "json_schema", "vision", "logprobs", "top_logprobs", "n", "suffix", "best_of"
]
CAPABILITIES: tuple[Capability, ...] = (
    "tools", "json_object", "json_schema", "vision", "logprobs", "top_logprobs", "n", "suffix", "best_of",
)  # fmt: skip


class ImageURL(BaseModel):
    model_config = _STRICT
    # A web address or inline data, as OpenAI takes them: never a file:// path an engine might open.
    url: Annotated[str, Field(min_length=1, pattern=r"^(?:https?://|data:image/)")]
    detail: Literal["auto", "low", "high"] | None = None


class ContentPart(BaseModel):
    """One part of a message's content: text, an image (user messages), or a refusal (assistant)."""

    model_config = _STRICT
    type: Literal["text", "image_url", "refusal"]
    text: str | None = None
    image_url: ImageURL | None = None
    refusal: str | None = None

    @model_validator(mode="after")
    def _one_payload(self) -> ContentPart:
        if getattr(self, self.type) is None:
            raise ValueError(f"a '{self.type}' part needs its '{self.type}' field")
        stray = [
            f for f in ("text", "image_url", "refusal") if f != self.type and getattr(self, f) is not None
        ]
        if stray:  # it would travel unread: neither the model nor the privacy scan would see it as text
            raise ValueError(f"a '{self.type}' part cannot also carry '{stray[0]}'")
        return self


class FunctionCall(BaseModel):
    model_config = _STRICT
    name: Name
    arguments: str  # JSON text, as the API carries it


class ToolCall(BaseModel):
    """A tool call an assistant made, as it comes back in history."""

    model_config = _STRICT
    id: Annotated[str, Field(min_length=1, max_length=256)]
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(BaseModel):
    """One message. Assistant messages carry what an SDK echoes back from an answer (`refusal`,
    `annotations`, `audio`, `function_call`, null or empty); tool messages answer a tool call."""

    model_config = _STRICT
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: Annotated[str, Field(max_length=256)] | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: Annotated[str, Field(min_length=1, max_length=256)] | None = None
    refusal: str | None = None
    annotations: list[dict[str, Any]] | None = None
    audio: dict[str, Any] | None = None
    function_call: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _fits_role(self) -> ChatMessage:
        if self.role == "tool" and self.tool_call_id is None:
            raise ValueError("a 'tool' message needs the 'tool_call_id' of the call it answers")
        if self.role != "tool" and self.tool_call_id is not None:
            raise ValueError("only a 'tool' message has a 'tool_call_id'")
        if self.role != "assistant":
            extra = [f for f in ("tool_calls", "refusal", "annotations", "audio", "function_call")
                     if getattr(self, f) not in (None, [])]  # fmt: skip
            if extra:
                raise ValueError(f"only an assistant message has '{extra[0]}'")
            if self.content is None:
                raise ValueError(f"a '{self.role}' message needs 'content'")
        if isinstance(self.content, list):
            kinds = {p.type for p in self.content}
            if "image_url" in kinds and self.role != "user":
                raise ValueError("only a user message may hold an image")
            if "refusal" in kinds and self.role != "assistant":
                raise ValueError("only an assistant message may hold a refusal")
        return self

    def text(self) -> str:
        """The message's text: its content's text parts joined (images and refusals are not text)."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text or "" for p in self.content if p.type == "text")


def _bounded(schema: dict[str, Any] | None) -> dict[str, Any] | None:
    if schema is not None and (why := schema_problem(schema)) is not None:
        raise ValueError(why)
    if schema is not None:
        try:
            Draft202012Validator.check_schema(schema)
        except SchemaError as exc:
            raise ValueError(f"not a valid JSON schema ({exc.message[:120]})") from None
    return schema


class FunctionDef(BaseModel):
    model_config = _STRICT
    name: Name
    description: Annotated[str, Field(max_length=16_384)] | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None

    _parameters_bounded = field_validator("parameters")(_bounded)


class Tool(BaseModel):
    model_config = _STRICT
    type: Literal["function"]
    function: FunctionDef


class NamedFunction(BaseModel):
    model_config = _STRICT
    name: Name


class NamedToolChoice(BaseModel):
    model_config = _STRICT
    type: Literal["function"]
    function: NamedFunction


class JSONSchemaFormat(BaseModel):
    model_config = _STRICT
    name: Name
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None

    _schema_bounded = field_validator("schema_")(_bounded)


class ResponseFormat(BaseModel):
    model_config = _STRICT
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_iff_json_schema(self) -> ResponseFormat:
        if (self.type == "json_schema") != (self.json_schema is not None):
            raise ValueError("'json_schema' is given with, and only with, type 'json_schema'")
        return self


class StreamOptions(BaseModel):
    model_config = _STRICT
    include_usage: bool = False
    include_obfuscation: bool | None = None  # OpenAI's padding against length side channels


Penalty = Annotated[float, Field(ge=-2.0, le=2.0)]
Bias = Annotated[int, Field(ge=-100, le=100)]
# Bookkeeping fields: accepted, forwarded to a remote rung, no effect on a local answer.
BOOKKEEPING = ("user", "metadata", "store", "service_tier", "prompt_cache_key", "safety_identifier")
# Sent to a remote rung only: reasoning controls for the provider's reasoning models.
REMOTE_ONLY = ("reasoning_effort", "verbosity", "parallel_tool_calls")


class ChatCompletionRequest(BaseModel):
    """OpenAI's chat-completions request."""

    model_config = _STRICT
    model: Annotated[str, Field(min_length=1, max_length=256)]
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_tokens: Annotated[int, Field(ge=1, le=MAX_TOKENS)] | None = None
    max_completion_tokens: Annotated[int, Field(ge=1, le=MAX_TOKENS)] | None = None
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] | None = None
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] | None = None
    stop: StopString | Annotated[list[StopString], Field(max_length=4)] | None = None
    seed: int | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    logit_bias: Annotated[dict[str, Annotated[int, Field(ge=-100, le=100)]], Field(max_length=300)] | None = (
        None
    )
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: Annotated[int, Field(ge=1, le=128)] | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    tools: Annotated[list[Tool], Field(max_length=128)] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    user: Annotated[str, Field(max_length=256)] | None = None
    metadata: Annotated[dict[str, Annotated[str, Field(max_length=512)]], Field(max_length=16)] | None = None
    store: bool | None = None
    service_tier: Literal["auto", "default", "flex", "scale", "priority"] | None = None
    prompt_cache_key: Annotated[str, Field(max_length=1024)] | None = None
    safety_identifier: Annotated[str, Field(max_length=256)] | None = None
    reasoning_effort: Literal["none", "minimal", "low", "medium", "high"] | None = None
    verbosity: Literal["low", "medium", "high"] | None = None

    @field_validator("seed")
    @classmethod
    def _seed_fits(cls, v: int | None) -> int | None:
        if v is not None and not -(2**63) <= v < 2**64:
            raise ValueError("seed must fit in 64 bits")
        return v

    @field_validator("logit_bias")
    @classmethod
    def _token_ids(cls, v: dict[str, int] | None) -> dict[str, int] | None:
        if v is not None and any(not k.isdigit() or len(k) > 10 for k in v):
            raise ValueError("logit_bias keys are token ids written as strings of digits")
        return v

    @field_validator("top_logprobs")
    @classmethod
    def _with_logprobs(cls, v: int | None, info: ValidationInfo) -> int | None:
        if v and not info.data.get("logprobs"):
            raise ValueError("'top_logprobs' needs 'logprobs': true")
        return v

    @field_validator("tool_choice")
    @classmethod
    def _choice_in_tools(
        cls, v: Literal["none", "auto", "required"] | NamedToolChoice | None, info: ValidationInfo
    ) -> Literal["none", "auto", "required"] | NamedToolChoice | None:
        tools: list[Tool] = info.data.get("tools") or []
        if isinstance(v, NamedToolChoice) and v.function.name not in {t.function.name for t in tools}:
            raise ValueError(f"it names '{v.function.name}', which is not in 'tools'")
        if v == "required" and not tools:
            raise ValueError("'required' needs at least one tool in 'tools'")
        return v

    def output_limit(self) -> int | None:
        """The client's cap on generated tokens; `max_completion_tokens` wins, as in OpenAI."""
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    def calls_tools(self) -> bool:
        """Whether the model may answer with a tool call."""
        return bool(self.tools) and self.tool_choice != "none"

    def needs(self) -> frozenset[Capability]:
        """What a rung must be able to do to serve this request faithfully."""
        need: set[Capability] = set()
        if self.calls_tools() or any(m.role == "tool" or m.tool_calls for m in self.messages):
            need.add("tools")
        if self.response_format is not None and self.response_format.type != "text":
            need.add(self.response_format.type)
        if any(isinstance(m.content, list) and any(p.type == "image_url" for p in m.content)
               for m in self.messages):  # fmt: skip
            need.add("vision")
        if self.logprobs:
            need.add("logprobs")
        if self.top_logprobs:
            need.add("top_logprobs")
        if self.n is not None and self.n > 1:
            need.add("n")
        return frozenset(need)

    def engine_body(self, model: str, max_tokens: int) -> dict[str, Any]:
        """The body for a local engine (our llama.cpp worker, vLLM): what shapes the answer, plus our
        limit. Bookkeeping and remote-only fields stay here; see `remote_body`."""
        body = self.model_dump(
            exclude_none=True,
            by_alias=True,
            exclude={"model", "max_completion_tokens", *BOOKKEEPING, *REMOTE_ONLY},
        )
        if body.get("n") == 1:
            del body["n"]  # the default: one choice
        body["model"] = model
        body["max_tokens"] = max_tokens
        return body

    def remote_body(self, model: str, tokens_param: str | None) -> dict[str, Any]:
        """The body for a remote provider: every field the client set, as it set it. A limit is sent
        only if the client gave one, under `tokens_param` when the provider wants a given name."""
        body = self.model_dump(
            exclude_none=True, by_alias=True, exclude={"max_tokens", "max_completion_tokens"}
        )
        body["model"] = model
        limit = self.output_limit()
        if limit is not None:
            given = "max_completion_tokens" if self.max_completion_tokens is not None else "max_tokens"
            body[tokens_param or given] = limit
        return body


def parse_chat_request(raw: bytes) -> ChatCompletionRequest:
    """Decode and validate a chat-completions body. Raises InvalidRequestError naming each bad parameter."""
    return validate(ChatCompletionRequest, parse_json_body(raw))
