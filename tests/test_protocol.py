"""The chat-completions request edge: what is accepted, what is refused and how, the error shape."""

from __future__ import annotations

import json
from typing import Any

import pytest

from localroute.errors import (
    APIError,
    ContextLengthExceededError,
    EngineUnavailableError,
    InternalError,
    InvalidRequestError,
    ModelNotFoundError,
    NotFoundError,
    OverloadedError,
    PayloadTooLargeError,
    UpstreamError,
    api_error_from_body,
)
from localroute.protocol.chat import ChatCompletionRequest, parse_chat_request

MESSAGES = [{"role": "user", "content": "hi"}]
DEEP: dict[str, Any] = {"type": "string"}
for _ in range(40):
    DEEP = {"type": "object", "properties": {"x": DEEP}}
WIDE = {"type": "object", "properties": {f"p{i}": {"type": "string"} for i in range(5000)}}
DROP = object()


def body(**fields: Any) -> bytes:
    """A valid minimal request with `fields` set (or, given the value DROP, removed)."""
    data: dict[str, Any] = {"model": "auto", "messages": MESSAGES}
    for key, value in fields.items():
        if value is DROP:
            data.pop(key)
        else:
            data[key] = value
    return json.dumps(data).encode()


FULL: dict[str, Any] = {
    "model": "smollm2-135m",
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "developer", "content": "No lists."},
        {
            "role": "user",
            "content": [{"type": "text", "text": "Hello, "}, {"type": "text", "text": "you"}],
        },
        {"role": "assistant", "content": "Hi.", "name": "bot"},
        {"role": "user", "content": "Again?"},
    ],
    "max_tokens": 64,
    "max_completion_tokens": 32,
    "temperature": 0.7,
    "top_p": 0.9,
    "stop": ["\n\n", "END"],
    "seed": 42,
    "stream": True,
    "stream_options": {"include_usage": True},
    "n": 1,
    "user": "alice",
}


# ---------------------------------------------------------------- accepted


def test_minimal_request() -> None:
    req = parse_chat_request(body())
    assert req.model == "auto"
    assert [(m.role, m.text()) for m in req.messages] == [("user", "hi")]
    assert req.stream is False
    assert req.output_limit() is None
    unset = (req.max_tokens, req.temperature, req.top_p, req.stop, req.seed, req.n, req.user)
    assert unset == (None,) * 7


def test_full_request() -> None:
    req = parse_chat_request(json.dumps(FULL).encode())
    assert req.model == "smollm2-135m"
    assert [m.role for m in req.messages] == ["system", "developer", "user", "assistant", "user"]
    assert req.messages[2].text() == "Hello, you"
    assert req.messages[3].name == "bot"
    assert (req.max_tokens, req.max_completion_tokens) == (64, 32)
    assert (req.temperature, req.top_p, req.seed, req.n, req.user) == (0.7, 0.9, 42, 1, "alice")
    assert req.stop == ["\n\n", "END"]
    assert req.stream is True
    assert req.stream_options is not None and req.stream_options.include_usage is True


@pytest.mark.parametrize(
    ("fields", "attr", "expected"),
    [
        ({"stop": "END"}, "stop", "END"),
        ({"stop": ["a", "b", "c", "d"]}, "stop", ["a", "b", "c", "d"]),
        ({"stop": []}, "stop", []),
        ({"temperature": 0}, "temperature", 0.0),
        ({"temperature": 2}, "temperature", 2.0),
        ({"top_p": 1}, "top_p", 1.0),
        ({"seed": -(2**63)}, "seed", -(2**63)),
        ({"seed": 2**64 - 1}, "seed", 2**64 - 1),
        ({"n": 1}, "n", 1),
        ({"n": None}, "n", None),
        ({"max_tokens": None}, "max_tokens", None),
        ({"messages": [{"role": "assistant", "content": None}]}, "messages", None),
    ],
    ids=repr,
)
def test_accepted_values(fields: dict[str, Any], attr: str, expected: object) -> None:
    req = parse_chat_request(body(**fields))
    if attr == "messages":
        assert req.messages[0].text() == ""
    else:
        assert getattr(req, attr) == expected


@pytest.mark.parametrize(
    ("max_tokens", "max_completion_tokens", "expected"),
    [(None, None, None), (100, None, 100), (None, 50, 50), (100, 50, 50), (10, 50, 50)],
)
def test_output_limit_prefers_max_completion_tokens(
    max_tokens: int | None, max_completion_tokens: int | None, expected: int | None
) -> None:
    req = parse_chat_request(body(max_tokens=max_tokens, max_completion_tokens=max_completion_tokens))
    assert req.output_limit() == expected


def test_engine_body_keeps_sampling_and_sets_our_model_and_limit() -> None:
    req = parse_chat_request(json.dumps(FULL).encode())
    sent = req.engine_body("smollm2-135m.gguf", 17)
    for dropped in ("user", "n", "max_completion_tokens"):
        assert dropped not in sent
    assert sent["model"] == "smollm2-135m.gguf"
    assert sent["max_tokens"] == 17
    assert sent["temperature"] == 0.7
    assert sent["top_p"] == 0.9
    assert sent["stop"] == ["\n\n", "END"]
    assert sent["seed"] == 42
    assert sent["stream"] is True
    assert sent["stream_options"] == {"include_usage": True}
    assert sent["messages"][2] == {
        "role": "user",
        "content": [{"type": "text", "text": "Hello, "}, {"type": "text", "text": "you"}],
    }
    assert sent["messages"][0] == {"role": "system", "content": "Be brief."}
    assert json.loads(json.dumps(sent)) == sent  # it is plain JSON


def test_engine_body_sends_no_unset_fields() -> None:
    sent = parse_chat_request(body(model="auto")).engine_body("m", 5)
    assert sent["model"] == "m"
    assert sent["max_tokens"] == 5
    assert None not in sent.values()
    for unset in ("temperature", "top_p", "stop", "seed", "stream_options", "n", "user"):
        assert unset not in sent


def test_request_is_frozen() -> None:
    req = parse_chat_request(body())
    with pytest.raises(ValueError, match="frozen"):
        req.model = "other"


# ---------------------------------------------------------------- refused

NAN_BODY = b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "temperature": NaN}'
INF_BODY = NAN_BODY.replace(b"NaN", b"Infinity")
NEG_INF_BODY = NAN_BODY.replace(b"NaN", b"-Infinity").replace(b"temperature", b"top_p")
IMAGE = [{"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]

REJECTIONS = [
    # (id, raw body, param, code, words the message must contain)
    ("malformed-json", b'{"model": "m", ', None, "invalid_json", "not valid JSON"),
    ("trailing-comma", b'{"model": "m",}', None, "invalid_json", "line 1 column"),
    ("empty-body", b"", None, "invalid_json", "not valid JSON"),
    ("json-array", b"[1, 2]", None, "invalid_json", "must be a JSON object"),
    ("json-string", b'"hi"', None, "invalid_json", "must be a JSON object"),
    ("json-null", b"null", None, "invalid_json", "must be a JSON object"),
    ("deep-nesting", b"[" * 100_000, None, "invalid_json", "nested too deeply"),
    ("bad-utf8", b'{"model": "\xff"}', None, "invalid_encoding", "not valid UTF-8"),
    ("temperature-str", body(temperature="hot"), "temperature", "invalid_type", "valid number"),
    ("max_tokens-str", body(max_tokens="10"), "max_tokens", "invalid_type", "valid integer"),
    ("max_tokens-bool", body(max_tokens=True), "max_tokens", "invalid_type", "valid integer"),
    ("max_tokens-float", body(max_tokens=10.5), "max_tokens", "invalid_type", "valid integer"),
    ("messages-str", body(messages="hi"), "messages", "invalid_type", "valid list"),
    ("messages-object", body(messages={"role": "user"}), "messages", "invalid_type", "valid list"),
    ("message-str", body(messages=["hi"]), "messages[0]", "invalid_type", "valid dictionary"),
    ("stream-str", body(stream="yes"), "stream", "invalid_type", "valid boolean"),
    ("stream-int", body(stream=1), "stream", "invalid_type", "valid boolean"),
    (
        "max_tokens-negative",
        body(max_tokens=-1),
        "max_tokens",
        "integer_below_min_value",
        "greater than or equal to 1",
    ),
    (
        "max_tokens-zero",
        body(max_tokens=0),
        "max_tokens",
        "integer_below_min_value",
        "greater than or equal to 1",
    ),
    (
        "max_completion_tokens-zero",
        body(max_completion_tokens=0),
        "max_completion_tokens",
        "integer_below_min_value",
        "greater than or equal to 1",
    ),
    ("temperature-nan", NAN_BODY, "temperature", "invalid_value", "finite number"),
    ("temperature-infinity", INF_BODY, "temperature", "invalid_value", "finite number"),
    ("top_p-neg-infinity", NEG_INF_BODY, "top_p", "invalid_value", "finite number"),
    (
        "temperature-3",
        body(temperature=3),
        "temperature",
        "decimal_above_max_value",
        "less than or equal to 2",
    ),
    (
        "temperature-negative",
        body(temperature=-0.1),
        "temperature",
        "decimal_below_min_value",
        "greater than or",
    ),
    ("top_p-0", body(top_p=0), "top_p", "decimal_below_min_value", "greater than 0"),
    ("top_p-above-1", body(top_p=1.5), "top_p", "decimal_above_max_value", "less than or equal to 1"),
    ("n-0", body(n=0), "n", "integer_below_min_value", "greater than or equal to 1"),
    ("n-129", body(n=129), "n", "integer_above_max_value", "less than or equal to 128"),
    ("n-false", body(n=False), "n", "invalid_type", "valid integer"),
    ("n-str", body(n="2"), "n", "invalid_type", "valid integer"),
    (
        "tool-type",
        body(tools=[{"type": "code", "function": {"name": "f"}}]),
        "tools[0].type",
        "invalid_value",
        "should be 'function'",
    ),
    (
        "tool-choice-unknown",
        body(
            tools=[{"type": "function", "function": {"name": "f"}}],
            tool_choice={"type": "function", "function": {"name": "g"}},
        ),
        "tool_choice",
        "invalid_value",
        "names 'g', which is not in 'tools'",
    ),
    (
        "tool-choice-required-no-tools",
        body(tool_choice="required"),
        "tool_choice",
        "invalid_value",
        "needs at least one tool",
    ),
    (
        "tool-message-without-id",
        body(messages=[{"role": "tool", "content": "42"}]),
        "messages[0]",
        "invalid_value",
        "needs the 'tool_call_id'",
    ),
    (
        "refusal-on-user",
        body(messages=[{"role": "user", "content": "x", "refusal": "no"}]),
        "messages[0]",
        "invalid_value",
        "only an assistant message has 'refusal'",
    ),
    (
        "top_logprobs-without-logprobs",
        body(top_logprobs=2),
        "top_logprobs",
        "invalid_value",
        "needs 'logprobs': true",
    ),
    (
        "response_format-schema-missing",
        body(response_format={"type": "json_schema"}),
        "response_format",
        "invalid_value",
        "'json_schema' is given with",
    ),
    (
        "hostile-pattern",
        body(
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "x", "schema": {"type": "string", "pattern": "^(a+)+$"}},
            }
        ),
        "response_format.json_schema.schema",
        "invalid_value",
        "nests quantifiers",
    ),
    (
        "recursive-ref",
        body(
            tools=[
                {
                    "type": "function",
                    "function": {
                        "name": "f",
                        "parameters": {
                            "$defs": {"n": {"type": "object", "properties": {"next": {"$ref": "#/$defs/n"}}}},
                            "$ref": "#/$defs/n",
                        },
                    },
                }
            ]
        ),
        "tools[0].function.parameters",
        "invalid_value",
        "form a cycle",
    ),
    (
        "deep-schema",
        body(response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": DEEP}}),
        "response_format.json_schema.schema",
        "invalid_value",
        "nests deeper than 24 levels",
    ),
    (
        "schema-with-many-nodes",
        body(tools=[{"type": "function", "function": {"name": "f", "parameters": WIDE}}]),
        "tools[0].function.parameters",
        "invalid_value",
        "more than 4000 nodes",
    ),
    (
        "huge-enum",
        body(
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "x", "schema": {"enum": list(range(5000))}},
            }
        ),
        "response_format.json_schema.schema",
        "invalid_value",
        "at most 512",
    ),
    (
        "logit_bias",
        body(logit_bias={"a": 5}),
        "logit_bias",
        "invalid_value",
        "token ids",
    ),
    (
        "api_base",
        body(api_base="http://evil"),
        "api_base",
        "unsupported_parameter",
        "backend setting",
    ),
    (
        "chat_template",
        body(chat_template="{{ x }}"),
        "chat_template",
        "unsupported_parameter",
        "backend setting",
    ),
    ("n_gpu_layers", body(n_gpu_layers=99), "n_gpu_layers", "unsupported_parameter", "backend"),
    (
        "message-extra-key",
        body(messages=[{"role": "user", "content": "x", "foo": []}]),
        "messages[0].foo",
        "unsupported_parameter",
        "not supported",
    ),
    (
        "unknown-role",
        body(messages=[{"role": "robot", "content": "x"}]),
        "messages[0].role",
        "invalid_value",
        "'system', 'developer', 'user', 'assistant' or 'tool' (got 'robot')",
    ),
    (
        "missing-role",
        body(messages=[{"content": "x"}]),
        "messages[0].role",
        "missing_required_parameter",
        "field required",
    ),
    ("empty-messages", body(messages=[]), "messages", "empty_array", "at least 1 item"),
    ("missing-messages", body(messages=DROP), "messages", "missing_required_parameter", "field required"),
    ("missing-model", body(model=DROP), "model", "missing_required_parameter", "field required"),
    ("empty-model", body(model=""), "model", "empty_string", "at least 1 character"),
    ("model-int", body(model=5), "model", "invalid_type", "valid string"),
    ("stop-5", body(stop=["a", "b", "c", "d", "e"]), "stop", "array_above_max_length", "at most 4 items"),
    ("stop-int", body(stop=5), "stop", "invalid_type", "a string or a list of strings"),
    ("stop-list-of-int", body(stop=["a", 1]), "stop[1]", "invalid_type", "valid string"),
    (
        "content-image_url",
        body(messages=[{"role": "system", "content": IMAGE}]),
        "messages[0]",
        "invalid_value",
        "only a user message may hold an image",
    ),
    (
        "content-int",
        body(messages=[{"role": "user", "content": 5}]),
        "messages[0].content",
        "invalid_type",
        "a string or a list of content parts",
    ),
    (
        "content-part-extra-key",
        body(messages=[{"role": "user", "content": [{"type": "text", "text": "x", "x": 1}]}]),
        "messages[0].content[0].x",
        "unsupported_parameter",
        "not supported",
    ),
    (
        "content-part-missing-text",
        body(messages=[{"role": "user", "content": [{"type": "text"}]}]),
        "messages[0].content[0]",
        "invalid_value",
        "needs its 'text' field",
    ),
    ("seed-too-big", body(seed=2**64), "seed", "invalid_value", "seed must fit in 64 bits"),
    ("seed-float", body(seed=1.5), "seed", "invalid_type", "valid integer"),
    (
        "stream_options-bad",
        body(stream_options={"include_usage": "yes"}),
        "stream_options.include_usage",
        "invalid_type",
        "valid boolean",
    ),
    ("user-too-long", body(user="u" * 257), "user", "string_above_max_length", "at most 256 characters"),
]

# pydantic's own vocabulary, which a client cannot act on.
NOISE = ["list[TextPart]", "list[str]", "function-after", "Value error", "pydantic", "Traceback"]


@pytest.mark.parametrize(
    ("raw", "param", "code", "words"),
    [case[1:] for case in REJECTIONS],
    ids=[case[0] for case in REJECTIONS],
)
def test_rejected(raw: bytes, param: str | None, code: str | None, words: str) -> None:
    with pytest.raises(InvalidRequestError) as info:
        parse_chat_request(raw)
    err = info.value
    assert err.status == 400
    assert err.type == "invalid_request_error"
    assert (err.param, err.code) == (param, code), err.message
    assert words in err.message
    if param is not None:
        assert f"'{param}'" in err.message or f"{param}=" in err.message, err.message
    for noise in NOISE:
        assert noise not in err.message
    assert err.message.endswith("."), err.message
    assert err.__cause__ is None


def test_invalid_utf8_names_the_offset() -> None:
    with pytest.raises(InvalidRequestError, match=r"invalid byte at offset 11\)\.$"):
        parse_chat_request(b'{"model": "\xc3\x28"}')


def test_model_validate_is_strict() -> None:
    # The edge parses JSON itself; the model must not coerce "10" into 10 behind its back either.
    with pytest.raises(ValueError, match="valid integer"):
        ChatCompletionRequest.model_validate({"model": "m", "messages": MESSAGES, "max_tokens": "10"})


# ---------------------------------------------------------------- error shape


@pytest.mark.parametrize(
    ("error", "status", "etype", "code"),
    [
        (InvalidRequestError("bad", param="x"), 400, "invalid_request_error", None),
        (
            ContextLengthExceededError("long"),
            400,
            "invalid_request_error",
            "context_length_exceeded",
        ),
        (NotFoundError("nope"), 404, "invalid_request_error", "not_found"),
        (ModelNotFoundError("nope"), 404, "invalid_request_error", "model_not_found"),
        (PayloadTooLargeError("big"), 413, "invalid_request_error", "request_too_large"),
        (OverloadedError("busy"), 429, "rate_limit_error", "queue_full"),
        (UpstreamError("eh"), 502, "server_error", "upstream_error"),
        (EngineUnavailableError("down"), 503, "server_error", "engine_unavailable"),
        (InternalError("oops"), 500, "server_error", "internal_error"),
        (InvalidRequestError("bad", code="custom"), 400, "invalid_request_error", "custom"),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, APIError) else None,
)
def test_api_error_body_has_openai_shape(error: APIError, status: int, etype: str, code: str | None) -> None:
    out = error.body()
    assert list(out) == ["error"]
    assert set(out["error"]) == {"message", "type", "param", "code"}
    assert out["error"]["message"] == error.message
    assert out["error"]["type"] == etype
    assert out["error"]["code"] == code
    assert out["error"]["param"] == error.param
    assert error.status == status
    assert json.loads(json.dumps(out)) == out


def test_rejection_body_names_the_param() -> None:
    with pytest.raises(InvalidRequestError) as info:
        parse_chat_request(body(temperature="hot"))
    assert info.value.body() == {
        "error": {
            "message": "Invalid value for 'temperature': input should be a valid number.",
            "type": "invalid_request_error",
            "param": "temperature",
            "code": "invalid_type",
        }
    }


CTX_BODY = {
    "error": {
        "message": "This model's maximum context length is 2048 tokens.",
        "type": "invalid_request_error",
        "param": "messages",
        "code": "context_length_exceeded",
    }
}


@pytest.mark.parametrize(
    ("status", "upstream", "cls", "want_status", "want_code", "want_message"),
    [
        (
            400,
            CTX_BODY,
            ContextLengthExceededError,
            400,
            "context_length_exceeded",
            "maximum context length is 2048",
        ),
        # Some servers send the context error with a 5xx; the code decides, and it is the client's.
        (500, CTX_BODY, ContextLengthExceededError, 400, "context_length_exceeded", "2048 tokens"),
        (
            503,
            {"error": {"message": "Loading model", "type": "server_error"}},
            EngineUnavailableError,
            503,
            "engine_unavailable",
            "Loading model",
        ),
        (503, "Service Unavailable", EngineUnavailableError, 503, "engine_unavailable", "upstream"),
        (400, {"error": {"message": "bad"}}, InvalidRequestError, 400, None, "bad"),
        (
            422,
            {"error": {"message": "x", "type": "invalid_request_error"}},
            InvalidRequestError,
            400,
            None,
            "x",
        ),
        (404, {"error": {"message": "no"}}, NotFoundError, 404, "not_found", "no"),
        (429, {}, OverloadedError, 429, "queue_full", "upstream error"),
        (500, None, UpstreamError, 502, "upstream_error", "upstream error"),
        (502, {"error": "flat string"}, UpstreamError, 502, "upstream_error", "upstream error"),
    ],
)
def test_api_error_from_body(
    status: int,
    upstream: object,
    cls: type[APIError],
    want_status: int,
    want_code: str | None,
    want_message: str,
) -> None:
    err = api_error_from_body(status, upstream)
    assert type(err) is cls
    assert err.status == want_status
    assert err.code == want_code
    assert want_message in err.message


def test_api_error_from_body_keeps_param() -> None:
    err = api_error_from_body(400, CTX_BODY)
    assert err.param == "messages"
    assert err.body()["error"]["code"] == "context_length_exceeded"


@pytest.mark.parametrize(
    "body",
    [
        b'{"model": "auto", "messages": [{"role": "user", "content": "\\ud800 alone"}]}',
        b'{"model": "auto", "messages": [{"role": "user", "content": "x"}], "seed": ' + b"9" * 5000 + b"}",
    ],
    ids=["lone-surrogate", "huge-integer"],
)
def test_inputs_python_cannot_carry_are_400_not_500(body: bytes) -> None:
    with pytest.raises(InvalidRequestError) as info:
        parse_chat_request(body)
    assert info.value.status == 400 and info.value.code in ("invalid_encoding", "invalid_json")


def test_a_surrogate_pair_is_text() -> None:
    req = parse_chat_request(
        b'{"model": "auto", "messages": [{"role": "user", "content": "\\ud83d\\ude00"}]}'
    )
    assert req.messages[0].content == "\U0001f600"
