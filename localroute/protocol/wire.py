"""Wire models of what the gateway answers: chat completions, stream chunks, usage, tool calls,
logprobs, errors, the model list, the routing decision and health. The request record and the stats
summary are in `records`.

These are TypedDicts, not pydantic models, for speed on the hot path: a response or a stream chunk
(one per token) is built by an engine, adjusted by the router and forwarded by the gateway as a plain
dict, and a TypedDict *is* a plain dict at runtime: no construction, no validation, no copy. mypy
checks every key statically. pydantic reads these types only off the hot path, through `TypeAdapter`:
to generate the OpenAPI response schemas (`gateway.openapi_schemas`) and in the tests that check the
real gateway's answers against them. Requests go the other way (untrusted input) and are pydantic
models, validated once: `protocol.chat`.

Keys are spelled as the OpenAI API spells them. An object whose every key the gateway writes itself
is closed (`extra="forbid"` in its schema); one that an engine or a provider fills is open, since
they may add keys of their own (`system_fingerprint`, `service_tier`, ...).
"""

from __future__ import annotations

from typing import Annotated, Literal, NotRequired

from pydantic import ConfigDict, Field, with_config
from typing_extensions import TypedDict  # pydantic reads only this one on Python < 3.12

EngineState = Literal["stopped", "starting", "ready", "crashed", "failed", "unavailable"]
# `insufficient_quota`: a key whose spend budget is used up (429, as OpenAI answers a spent quota).
ErrorType = Literal["invalid_request_error", "rate_limit_error", "insufficient_quota", "server_error"]

Count = Annotated[int, Field(ge=0)]
Byte = Annotated[int, Field(ge=0, le=255)]
FinishReason = Annotated[str | None, Field(examples=["stop", "length"])]  # providers add their own

# The schema of a class marked `closed` allows no other keys; `extensible` says so of one that allows
# them inside a closed one, which would otherwise pass its config on.
closed = with_config(ConfigDict(extra="forbid"))
extensible = with_config(ConfigDict(extra="allow"))

PrivacyClass = Literal["private", "public"]
# `class` is a keyword: this one is spelled the functional way.
PrivacyLabel = TypedDict("PrivacyLabel", {"class": PrivacyClass, "reason": str, "kinds": list[str]})
PrivacyLabel.__doc__ = "A request's privacy class, why, and the kinds of data found (never the data)."

# -- chat completions ---------------------------------------------------------------------------


class CalledFunction(TypedDict):
    """The function a tool call names, and its arguments as a JSON text."""

    name: str
    arguments: str


class AssistantToolCall(TypedDict):
    """One tool call in the assistant's message (sent back in a later request's history, it is
    `chat.ToolCall`)."""

    id: str
    type: Literal["function"]
    function: CalledFunction


class ChatCompletionMessage(TypedDict):
    """The assistant's message in a `chat.completion` choice (the request's messages are
    `chat.ChatMessage`)."""

    role: Literal["assistant"]
    content: str | None
    tool_calls: NotRequired[list[AssistantToolCall]]
    refusal: NotRequired[str | None]


class TopLogprob(TypedDict):
    """One of the most likely tokens at a position (this gateway refuses `top_logprobs`: always none)."""

    token: str
    logprob: float
    bytes: list[Byte] | None


class TokenLogprob(TypedDict):
    """A sampled token's log probability, as `logprobs.content` lists them."""

    token: str
    logprob: float
    bytes: list[Byte] | None
    top_logprobs: list[TopLogprob]


class Logprobs(TypedDict):
    """A choice's `logprobs`, present when the request asked for them."""

    content: list[TokenLogprob] | None
    refusal: NotRequired[list[TokenLogprob] | None]


class Choice(TypedDict):
    """One answer of a `chat.completion` (the gateway serves `n=1`: one choice, index 0)."""

    index: Count
    message: ChatCompletionMessage
    finish_reason: FinishReason
    logprobs: NotRequired[Logprobs | None]


class Usage(TypedDict):
    """Token counts of one answer."""

    prompt_tokens: Count
    completion_tokens: Count
    total_tokens: Count


class EngineAccounting(TypedDict):
    """What a local engine measured, for the request's cost; the router removes it before answering."""

    compute_s: float
    # On a stream's content chunks: the tokens counted so far, so that a stream cut before its usage
    # chunk (a client that leaves, an engine that dies) is still charged for what it computed.
    so_far: NotRequired[Usage]
    # Served from outside `[privacy] trusted_networks` (an endpoint's peer, a vLLM rung's Ray cluster):
    # not local, whatever the rung's engine. On a non-streamed answer, or a stream's first chunk.
    untrusted: NotRequired[bool]


class ChatCompletion(TypedDict):
    """The answer of `POST /v1/chat/completions` without streaming."""

    # `Backend.complete` returns one too, with the engine's `x_localroute` accounting.

    id: str
    object: Literal["chat.completion"]
    created: Count
    model: str
    choices: list[Choice]
    usage: NotRequired[Usage]
    system_fingerprint: NotRequired[str | None]
    x_localroute: NotRequired[EngineAccounting]


# -- streaming ----------------------------------------------------------------------------------


class FunctionCallDelta(TypedDict, total=False):
    """A piece of a tool call's function: its name once, then its arguments in parts."""

    name: str
    arguments: str


class ToolCallDelta(TypedDict):
    """A piece of the tool call at `index`; its id and type come with its first piece."""

    index: Count
    id: NotRequired[str | None]
    type: NotRequired[Literal["function"] | None]
    function: NotRequired[FunctionCallDelta]


class Delta(TypedDict, total=False):
    """What a stream chunk adds to the assistant's message."""

    role: Literal["assistant"]
    content: str | None
    tool_calls: list[ToolCallDelta]
    refusal: str | None


class ChunkChoice(TypedDict):
    """One choice of a stream chunk."""

    index: Count
    delta: Delta
    finish_reason: FinishReason
    logprobs: NotRequired[Logprobs | None]


class ChatCompletionChunk(TypedDict):
    """One event of a streamed answer. With `stream_options.include_usage`, the last one carries `usage`
    and no choices."""

    # `Backend.stream` yields these, the last one with the engine's `x_localroute` accounting.

    id: str
    object: Literal["chat.completion.chunk"]
    created: Count
    model: str
    choices: list[ChunkChoice]
    usage: NotRequired[Usage | None]
    system_fingerprint: NotRequired[str | None]
    x_localroute: NotRequired[EngineAccounting]


# -- errors, models, routing, health ------------------------------------------------------------


@closed
class ErrorDetail(TypedDict):
    """What went wrong: `code` is machine-readable (`context_length_exceeded`, `queue_full`, ...)."""

    message: str
    type: ErrorType
    param: str | None
    code: str | None


@closed
class ErrorBody(TypedDict):
    """Every error, in OpenAI's shape."""

    # `errors.APIError.body` builds it (errors sit below protocol, so it cannot name this type).

    error: ErrorDetail


@closed
class Model(TypedDict):
    """One entry of `GET /v1/models`."""

    id: str
    object: Literal["model"]
    created: Count
    owned_by: str


@closed
class ModelList(TypedDict):
    """`GET /v1/models`: `auto` and every rung of the ladder."""

    object: Literal["list"]
    data: Annotated[list[Model], Field(min_length=1)]


@closed
class Explanation(TypedDict):
    """`POST /v1/route/explain`: the policy's decision, with its score and reasons."""

    # `policy.Decision.as_json` builds it.

    model: str
    tier: int
    score: float
    reasons: list[str]
    estimated_tokens: Count
    thresholds: dict[str, float]
    route: str
    escalation: list[str]
    needs: list[str]  # capabilities the request needs of a rung (tools, json_schema, vision, ...)
    ruled_out: dict[str, str]  # rung -> the capability it lacks
    sticky: str | None  # the rung that answered earlier turns of the conversation, if remembered
    # The request's privacy class as serving resolves it, and the rungs it may use as a result
    # (explain only; a private request's set holds no remote rung).
    privacy: NotRequired[PrivacyLabel]
    rungs: NotRequired[list[str]]


@closed
class EndpointHealth(TypedDict):
    """One engine server of a rung with `endpoints` (rungs/balancer.py), in `GET /health`."""

    url: str  # as configured, without any user:password
    state: Literal["up", "down", "unknown"]  # the last health check's verdict
    circuit: Literal["closed", "open", "half_open"]
    outstanding: Count
    served: Count
    failures: Count
    failures_in_a_row: Count
    opens: Count
    peer: str | None  # the address its last connection reached
    trusted: bool | None  # ... inside `[privacy] trusted_networks`; None: not reached yet
    last_error: str | None


@extensible
class EngineHealth(TypedDict):
    """One engine's state in `GET /health`; each kind of engine adds keys of its own."""

    # `Backend.health` returns it.

    state: EngineState
    engine: str
    tier: int
    in_flight: NotRequired[Count]
    queued: NotRequired[Count]
    served: NotRequired[Count]
    rss_mib: NotRequired[float | None]
    last_error: NotRequired[str | None]
    retry_in_s: NotRequired[float]
    endpoints: NotRequired[list[EndpointHealth]]  # a rung served by engine servers elsewhere


@closed
class Health(TypedDict):
    """`GET /health`. `resources` (the memory budget and the box) is there when placement is on."""

    status: Literal["ok", "degraded"]
    engines: dict[str, EngineHealth]
    tasks: Count
    resources: NotRequired[dict[str, object]]
