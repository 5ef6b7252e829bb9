"""The parts the OpenAPI document (gateway/openapi.py) is built from: error responses in each API's
shape, operations, the routing-hint and privacy headers, answer headers and SSE events."""

from __future__ import annotations

from typing import Any

from localroute.gateway.dashboard import CSP
from localroute.gateway.openapi_schemas import STR, Schema, obj, ref

ERRORS = {
    400: "The request is invalid: bad JSON, an unknown or out-of-range parameter, a bad routing "
    "header, a prompt longer than the model's context, or a private request that no local model serves.",
    401: "API keys are configured and the request carries none or a wrong one.",
    404: "No such model (or no such endpoint).",
    408: "The request body did not arrive within `server.request_timeout_s`.",
    413: "The request body is larger than `server.max_body_bytes`.",
    429: "An engine's queue is full (`queue_full`) or the caller's rate limit is reached "
    "(`rate_limit_exceeded`) or its key's spend budget is used up (`budget_exceeded`); `Retry-After` "
    "says when to try again.",
    431: "The request headers exceed `server.max_header_bytes`.",
    500: "A bug in localroute; the message never carries internals.",
    502: "The engine or remote provider failed in a way that is not the client's mistake.",
    503: "No engine can serve the request now (down, over the memory budget, remote disabled).",
    504: "The request did not finish within `server.request_timeout_s`, or the remote provider timed out.",
}
# Every path but the public ones can refuse before its handler runs (the security middleware).
GUARDED = (401, 429, 431, 500)


def json_content(schema: Schema) -> Schema:
    return {"application/json": {"schema": schema}}


def error_response(status: int, shape: str = "Error") -> Schema:
    out: Schema = {"description": ERRORS[status], "content": json_content(ref(shape))}
    if status == 429:
        out["headers"] = {"Retry-After": {"description": "Seconds to wait.", "schema": {"type": "string"}}}
    if status == 401:
        out["headers"] = {"WWW-Authenticate": {"schema": {"const": "Bearer"}}}
    return out


def operation(
    summary: str, ok: Schema, errors: tuple[int, ...], shape: str = "Error", **extra: Any
) -> Schema:
    """An operation; its errors have the `shape` schema (Anthropic's under /v1/messages)."""
    responses = {"200": ok, **{str(s): error_response(s, shape) for s in sorted(errors)}}
    return {"summary": summary, **extra, "responses": responses}


def accepted(op: Schema) -> Schema:
    """Feedback for a request another replica served ([state] url): queued for it, `forwarded_to`."""
    ok = op["responses"]["200"]
    op["responses"]["202"] = {**ok, "description": "Queued for the replica that served the request."}
    return op


def header(name: str, schema: Schema, description: str) -> Schema:
    return {"name": name, "in": "header", "required": False, "schema": schema, "description": description}


def hint_headers() -> list[Schema]:
    return [
        header(
            "X-LocalRoute-Tier",
            {"type": "string", "pattern": "^(local|remote|[0-9]{1,3})$", "examples": ["local", "0"]},
            "Route to this tier: a tier number, or `local` / `remote` for any rung of that kind "
            "(case-insensitive, surrounding spaces ignored).",
        ),
        header(
            "X-LocalRoute-Max-Cost",
            {"type": "string", "pattern": "^[0-9]{1,8}(\\.[0-9]{1,8})?$", "examples": ["0.01"]},
            "The most this request may cost, in US dollars: rungs that would cost more are skipped.",
        ),
    ]


def privacy_header() -> Schema:
    return header(
        "X-LocalRoute-Privacy",
        {"enum": ["private", "public"]},
        "`private` keeps the request on local models; `public` allows a remote one (over detected "
        "personal data only where the config allows the override). Unset: the API key's policy, "
        "then what the detector finds, then the config default.",
    )


def answer_headers() -> Schema:
    return {
        "x-request-id": {"description": "This request's id in the audit and request logs.", "schema": STR},
        "x-localroute-model": {"description": "The rung that answered.", "schema": STR},
        "x-localroute-tier": {
            "description": "Its tier.",
            "schema": {"type": "string", "pattern": "^-?[0-9]+$"},
        },
        "x-localroute-route": {"description": "Why it was chosen.", "schema": STR},
        "x-localroute-escalations": {
            "description": "How many rungs it moved up.",
            "schema": {"type": "string", "pattern": "^[0-9]+$"},
        },
    }


def sse_event(chunk: str = "ChatCompletionChunk") -> Schema:
    """One server-sent event: a chunk, an error (after the headers are gone), or the closing [DONE]."""
    return obj(
        {
            "data": {
                "if": {"const": "[DONE]"},
                "else": {
                    "contentMediaType": "application/json",
                    "contentSchema": {"anyOf": [ref(chunk), ref("Error")]},
                },
            },
            "event": {"const": "message"},
        },
        optional=("event",),
    )


def page_headers() -> Schema:
    return {"ETag": {"schema": STR}, "Content-Security-Policy": {"schema": {"const": CSP}}}


TEXT: Schema = {"schema": STR}
