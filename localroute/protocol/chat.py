"""OpenAI chat-completions wire models: what a client may send, validated once at the edge.

Unknown fields are rejected, not ignored: a client that sets `tools` or `api_base` must learn that
localroute did not honour it. `parse_chat_request` turns every validation failure into a 400 that
names the offending parameter.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_core import ErrorDetails

from localroute.errors import InvalidRequestError

# Backend knobs that some proxies accept in the body. Naming them gives a sharper error than
# "unsupported parameter": they would let a client steer where or how a model runs.
BACKEND_KNOBS = frozenset(
    {"api_base", "base_url", "api_key", "chat_template", "model_path", "n_ctx", "n_gpu_layers"}
)

_STRICT = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, frozen=True)
# Token counts are C ints in every engine; a larger one is a client mistake, not "unlimited".
MAX_TOKENS = 2**31 - 1
# llama-cpp-python re-checks every stop string at every token; real ones are a few characters.
MAX_STOP_CHARS = 1024
StopString = Annotated[str, Field(max_length=MAX_STOP_CHARS)]


class TextPart(BaseModel):
    model_config = _STRICT
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = _STRICT
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None
    name: Annotated[str, Field(max_length=256)] | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class StreamOptions(BaseModel):
    model_config = _STRICT
    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    """The subset of OpenAI's chat-completions request that localroute serves faithfully."""

    model_config = _STRICT
    model: Annotated[str, Field(min_length=1, max_length=256)]
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_tokens: Annotated[int, Field(ge=1, le=MAX_TOKENS)] | None = None
    max_completion_tokens: Annotated[int, Field(ge=1, le=MAX_TOKENS)] | None = None
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] | None = None
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] | None = None
    stop: StopString | Annotated[list[StopString], Field(max_length=4)] | None = None
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: Annotated[int, Field(ge=1, le=1)] | None = None
    # The sampled tokens' logprobs, as OpenAI returns them (no alternatives: top_logprobs is refused).
    logprobs: bool | None = None
    # An end-user id for the caller's own bookkeeping: accepted and never forwarded.
    user: Annotated[str, Field(max_length=256)] | None = None

    @field_validator("seed")
    @classmethod
    def _seed_fits(cls, v: int | None) -> int | None:
        if v is not None and not -(2**63) <= v < 2**64:
            raise ValueError("seed must fit in 64 bits")
        return v

    def output_limit(self) -> int | None:
        """The client's cap on generated tokens; `max_completion_tokens` wins, as in OpenAI."""
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    def engine_body(self, model: str, max_tokens: int) -> dict[str, Any]:
        """The body sent to an OpenAI-compatible engine: only fields the client set, plus our limits."""
        body = self.model_dump(
            exclude_none=True,
            exclude={"model", "max_completion_tokens", "user", "n"},
        )
        body["model"] = model
        body["max_tokens"] = max_tokens
        return body


# pydantic names union branches in error locations; a client sees these words instead.
_BRANCHES = {
    "str": "a string",
    "constrained-str": "a string",
    "list[str]": "a list of strings",
    "list[constrained-str]": "a list of strings",
    "list[TextPart]": "a list of text parts",
}


def _loc_to_param(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in _BRANCHES:
            continue  # union branch names are noise to a client
        else:
            out += ("." if out else "") + part
    return out


def parse_chat_request(raw: bytes) -> ChatCompletionRequest:
    """Decode and validate a request body. Raises InvalidRequestError with the parameter named."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidRequestError(
            f"Request body is not valid UTF-8 (invalid byte at offset {exc.start}).",
            code="invalid_encoding",
        ) from None
    try:
        data = json.loads(text, object_pairs_hook=_unique_keys)
    except ValueError as exc:
        if not isinstance(exc, json.JSONDecodeError):  # e.g. an integer beyond Python's digit limit
            raise InvalidRequestError(
                "Request body has a number too large to read.", code="invalid_json"
            ) from None
        raise InvalidRequestError(
            f"Request body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}.",
            code="invalid_json",
        ) from None
    except RecursionError:
        # e.g. b"[" * 100_000: a client mistake, not a server error.
        raise InvalidRequestError(
            "Request body is not valid JSON: nested too deeply.", code="invalid_json"
        ) from None
    if not isinstance(data, dict):
        raise InvalidRequestError("Request body must be a JSON object.", code="invalid_json")
    if "\\u" in text and _has_lone_surrogate(data):
        raise InvalidRequestError(
            "Request body contains an unpaired UTF-16 surrogate escape (\\ud800-\\udfff), which is not text.",
            code="invalid_encoding",
        )
    if "\\u0000" in text and (where := _nul_param(data)) is not None:
        raise InvalidRequestError(
            f"Invalid value for '{where or 'body'}': text may not contain the NUL character (\\u0000).",
            param=where or None,
            code="invalid_value",
        )
    for key in data:
        if key in BACKEND_KNOBS:
            raise InvalidRequestError(
                f"Parameter '{key}' is a backend setting; localroute takes it from models.toml only.",
                param=key,
                code="unsupported_parameter",
            )
    # type() rather than isinstance(): `"n": false` is a type error, not a request for 0 choices.
    if data.get("n") not in (None, 1) and type(data.get("n")) is int:
        raise InvalidRequestError(
            "Only n=1 is supported: ask for more choices with separate requests.",
            param="n",
            code="unsupported_value",
        )
    try:
        return ChatCompletionRequest.model_validate(data)
    except ValidationError as exc:
        raise _to_invalid_request(exc) from None


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object, refused if a key repeats: parsers disagree on which one wins (RFC 7493)."""
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise InvalidRequestError(
                    f"Request body has the key {key[:64]!r} more than once in one object.",
                    code="invalid_json",
                )
            seen.add(key)
    return out


def _nul_param(data: object) -> str | None:
    """Where a string (or key) holding U+0000 sits, as a parameter path; None if nowhere."""
    stack: list[tuple[object, tuple[int | str, ...]]] = [(data, ())]
    while stack:  # a loop, not recursion: the body may be nested as deep as the JSON parser allows
        node, loc = stack.pop()
        if isinstance(node, str):
            if "\x00" in node:
                return _loc_to_param(loc)
        elif isinstance(node, dict):
            for key, value in node.items():
                if "\x00" in key:
                    return _loc_to_param(loc)
                stack.append((value, (*loc, key)))
        elif isinstance(node, list):
            stack.extend((value, (*loc, i)) for i, value in enumerate(node))
    return None


def _has_lone_surrogate(data: object) -> bool:
    try:
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _pick_error(errors: list[ErrorDetails]) -> tuple[ErrorDetails, str | None]:
    """The error to report, and a message to use instead of its own (for a value no branch fits).

    With unions pydantic reports one error per branch, the plain type mismatches first; the branch
    the value did match in type (`stop` with 5 strings) explains the problem, so prefer it.
    """
    first = errors[0]
    loc = tuple(first["loc"])
    cut = next((i for i, part in enumerate(loc) if part in _BRANCHES), None)
    if cut is None:
        return first, None
    same = [e for e in errors if len(e["loc"]) > cut and e["loc"][:cut] == loc[:cut]]
    same = [e for e in same if e["loc"][cut] in _BRANCHES]
    specific = [e for e in same if len(e["loc"]) > cut + 1 or not e["type"].endswith("_type")]
    if specific:
        return specific[0], None
    kinds = dict.fromkeys(_BRANCHES[str(e["loc"][cut])] for e in same)
    return first, "input should be " + " or ".join(kinds)


def _to_invalid_request(exc: ValidationError) -> InvalidRequestError:
    first, msg_override = _pick_error(exc.errors(include_url=False))
    param = _loc_to_param(tuple(first["loc"]))
    if first["type"] == "extra_forbidden":
        return InvalidRequestError(
            f"Unsupported parameter: '{param}' is not supported by localroute.",
            param=param,
            code="unsupported_parameter",
        )
    ctx = first.get("ctx") or {}
    if msg_override is not None:
        msg = msg_override
    elif first["type"] == "finite_number":
        msg = "must be a finite number (NaN and Infinity are not allowed)"
    elif first["type"] == "value_error" and "error" in ctx:
        msg = str(ctx["error"])  # our validator's own words, without pydantic's "Value error, "
    else:
        msg = first["msg"][0].lower() + first["msg"][1:]
    got = first.get("input")
    if first["type"] == "literal_error" and isinstance(got, str) and len(got) <= 64:
        msg += f" (got {got!r})"
    code = "invalid_type" if msg_override is not None else _code(first["type"], got, ctx)
    return InvalidRequestError(f"Invalid value for '{param}': {msg}.", param=param or None, code=code)


def _code(kind: str, got: object, ctx: dict[str, Any]) -> str:
    """OpenAI's error code for a pydantic error type (`invalid_type`, `integer_above_max_value`, ...)."""
    bound = next(iter(ctx.values()), None)  # a range error's limit has the field's numeric type
    number = "integer" if isinstance(bound, int) else "decimal"
    if kind == "missing":
        return "missing_required_parameter"
    if kind in ("greater_than", "greater_than_equal"):
        return f"{number}_below_min_value"
    if kind in ("less_than", "less_than_equal"):
        return f"{number}_above_max_value"
    if kind == "too_short":
        return "empty_array" if isinstance(got, list) and not got else "array_below_min_length"
    if kind == "too_long":
        return "array_above_max_length"
    if kind == "string_too_short":
        return "empty_string" if got == "" else "string_below_min_length"
    if kind == "string_too_long":
        return "string_above_max_length"
    if kind.endswith("_type"):  # int_type, string_type, list_type, model_type, ...
        return "invalid_type"
    return "invalid_value"  # literal_error, finite_number, our validators' value_error
