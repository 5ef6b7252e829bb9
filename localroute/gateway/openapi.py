"""`GET /openapi.json`: an OpenAPI 3.1 document for every endpoint the gateway serves.

The document depends on no config (model names appear only as examples), so it is the same for
every gateway: it is built on the first request and then kept. The schemas it refers to are in
`openapi_schemas`.
"""

from __future__ import annotations

import copy
import functools
import json
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from localroute import __version__
from localroute.gateway import openapi_responses
from localroute.gateway.dashboard import ASSETS, CSP
from localroute.gateway.openapi_schemas import STR, Schema, components, obj, ref
from localroute.protocol.embeddings import MAX_INPUTS, MAX_TOKEN_ID, EmbeddingRequest
from localroute.protocol.feedback import FeedbackRequest

_ERRORS = {
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
_GUARDED = (401, 429, 431, 500)


def _json(schema: Schema) -> Schema:
    return {"application/json": {"schema": schema}}


def _error(status: int, shape: str = "Error") -> Schema:
    out: Schema = {"description": _ERRORS[status], "content": _json(ref(shape))}
    if status == 429:
        out["headers"] = {"Retry-After": {"description": "Seconds to wait.", "schema": {"type": "string"}}}
    if status == 401:
        out["headers"] = {"WWW-Authenticate": {"schema": {"const": "Bearer"}}}
    return out


def _op(summary: str, ok: Schema, errors: tuple[int, ...], shape: str = "Error", **extra: Any) -> Schema:
    """An operation; its errors have the `shape` schema (Anthropic's under /v1/messages)."""
    responses = {"200": ok, **{str(s): _error(s, shape) for s in sorted(errors)}}
    return {"summary": summary, **extra, "responses": responses}


def _accepted(op: Schema) -> Schema:
    """Feedback for a request another replica served ([state] url): queued for it, `forwarded_to`."""
    ok = op["responses"]["200"]
    op["responses"]["202"] = {**ok, "description": "Queued for the replica that served the request."}
    return op


def _header(name: str, schema: Schema, description: str) -> Schema:
    return {"name": name, "in": "header", "required": False, "schema": schema, "description": description}


def _hints() -> list[Schema]:
    return [
        _header(
            "X-LocalRoute-Tier",
            {"type": "string", "pattern": "^(local|remote|[0-9]{1,3})$", "examples": ["local", "0"]},
            "Route to this tier: a tier number, or `local` / `remote` for any rung of that kind "
            "(case-insensitive, surrounding spaces ignored).",
        ),
        _header(
            "X-LocalRoute-Max-Cost",
            {"type": "string", "pattern": "^[0-9]{1,8}(\\.[0-9]{1,8})?$", "examples": ["0.01"]},
            "The most this request may cost, in US dollars: rungs that would cost more are skipped.",
        ),
    ]


def _privacy() -> Schema:
    return _header(
        "X-LocalRoute-Privacy",
        {"enum": ["private", "public"]},
        "`private` keeps the request on local models; `public` allows a remote one (over detected "
        "personal data only where the config allows the override). Unset: the API key's policy, "
        "then what the detector finds, then the config default.",
    )


def _answer_headers() -> Schema:
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


def _sse_event(chunk: str = "ChatCompletionChunk") -> Schema:
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


def _page_headers() -> Schema:
    return {"ETag": {"schema": STR}, "Content-Security-Policy": {"schema": {"const": CSP}}}


_TEXT: Schema = {"schema": STR}


def _embeddings() -> Schema:
    """`POST /v1/embeddings`: OpenAI's request (validated by `EmbeddingRequest`) and answer."""
    request = EmbeddingRequest.model_json_schema()
    text: Schema = {"type": "string", "minLength": 1}
    token: Schema = {"type": "integer", "minimum": 0, "maximum": MAX_TOKEN_ID}
    tokens: Schema = {"type": "array", "items": token, "minItems": 1}
    lists = [
        {"type": "array", "items": i, "minItems": 1, "maxItems": MAX_INPUTS} for i in (text, token, tokens)
    ]
    request["properties"]["input"] = {
        "anyOf": [text, *lists],
        "description": "A string, a list of strings, a list of token ids, or a list of lists of token ids.",
    }
    request["properties"]["model"]["examples"] = ["auto"]
    vector = {"anyOf": [{"type": "array", "items": {"type": "number"}}, {"type": "string"}]}
    index = {"type": "integer", "minimum": 0}
    item = obj({"object": {"const": "embedding"}, "index": index, "embedding": vector})
    usage = obj({"prompt_tokens": index, "total_tokens": index})
    answer = obj(
        {"object": {"const": "list"}, "data": {"type": "array", "items": item}, "model": STR, "usage": usage}
    )
    body = {"schema": request, "example": {"model": "auto", "input": "Hi!"}}
    ok = {
        "description": "The vectors, in input order.",
        "headers": _answer_headers(),
        "content": _json(answer),
    }
    return {
        "post": _op(
            "Embeddings, from the cheapest available rung of the requested vector space",
            ok,
            (400, 404, 408, 413, 502, 503, 504, *_GUARDED),
            operationId="createEmbedding",
            parameters=[_hints()[0], _privacy()],
            requestBody={"required": True, "content": {"application/json": body}},
        )
    }


def _paths() -> Schema:
    chat_body = {
        "required": True,
        "content": {
            "application/json": {
                "schema": ref("ChatCompletionRequest"),
                "example": {
                    "model": "auto",
                    "messages": [{"role": "user", "content": "Hi!"}],
                    "max_tokens": 4,
                },
            }
        },
    }
    answer = {
        "description": "The answer: a `chat.completion` object, or with `stream: true` an event stream of "
        "`chat.completion.chunk` objects ending in `data: [DONE]` (an error that happens mid-stream "
        "arrives as one error event).",
        "headers": _answer_headers(),
        "content": {**_json(ref("ChatCompletion")), "text/event-stream": {"schema": _sse_event()}},
    }
    legacy_body = {
        "required": True,
        "content": {
            "application/json": {
                "schema": ref("CompletionRequest"),
                "example": {"model": "auto", "prompt": "The capital of France is", "max_tokens": 4},
            }
        },
    }
    legacy_answer = {
        "description": "The answer: a `text_completion` object (one choice per prompt and `n`, index "
        "`prompt index * n + j`), or with `stream: true` an event stream of `text_completion` chunks "
        "ending in `data: [DONE]`. A list of prompts is one routed request per prompt; each routing "
        "header then lists one value per prompt, in order.",
        "headers": _answer_headers(),
        "content": {
            **_json(ref("TextCompletion")),
            "text/event-stream": {"schema": _sse_event("TextCompletion")},
        },
    }
    public: Schema = {"security": []}
    paths: Schema = {
        "/v1/completions": {
            "post": _op(
                "Legacy text completion of a raw prompt (no chat template), routed like chat",
                legacy_answer,
                (400, 404, 408, 413, 502, 503, 504, *_GUARDED),
                operationId="createCompletion",
                parameters=[*_hints(), _privacy()],
                requestBody=legacy_body,
            )
        },
        "/v1/chat/completions": {
            "post": _op(
                "Chat completion, routed to the cheapest rung that can serve it",
                answer,
                (400, 404, 408, 413, 502, 503, 504, *_GUARDED),
                operationId="createChatCompletion",
                parameters=[*_hints(), _privacy()],
                requestBody=chat_body,
            )
        },
        "/v1/responses": {
            "post": _op(
                "OpenAI's Responses API, stateless, routed like a chat completion",
                openapi_responses.answer(_answer_headers()),
                (400, 404, 408, 413, 502, 503, 504, *_GUARDED),
                operationId="createResponse",
                parameters=[*_hints(), _privacy()],
                requestBody=openapi_responses.body(),
            )
        },
        "/v1/embeddings": _embeddings(),
        "/v1/messages": {"post": _messages_op()},
        "/v1/route/explain": {
            "post": _op(
                "The routing decision for a request, without running it",
                {"description": "The policy's decision.", "content": _json(ref("Decision"))},
                (400, 404, 413, *_GUARDED),
                operationId="explainRoute",
                parameters=[*_hints(), _privacy()],
                requestBody=chat_body,
            )
        },
        "/v1/models": {
            "get": _op(
                "The models: `auto` and every rung of the ladder",
                {"description": "The model list.", "content": _json(ref("ModelList"))},
                _GUARDED,
                operationId="listModels",
            )
        },
        "/v1/models/{model}": {
            "get": _op(
                "One model, `auto` included (what `client.models.retrieve` asks for)",
                {"description": "The model.", "content": _json(ref("Model"))},
                (404, *_GUARDED),
                operationId="retrieveModel",
                parameters=[{"name": "model", "in": "path", "required": True, "schema": {"type": "string"}}],
            )
        },
        "/v1/localroute/feedback": {
            "post": _accepted(
                _op(
                    "A client's outcome for a request served here (by its `x-request-id`), kept locally",
                    {"description": "The label it gives.", "content": _json(ref("Feedback"))},
                    (400, 404, 408, 413, 503, *_GUARDED),
                    operationId="postFeedback",
                    requestBody={"required": True, "content": _json(FeedbackRequest.model_json_schema())},
                )
            )
        },
        "/v1/localroute/stats": {
            "get": _op(
                "Totals, per-model breakdowns, a cost series and the latest requests",
                {"description": "The stats over the window.", "content": _json(ref("Stats"))},
                (400, *_GUARDED),
                operationId="getStats",
                parameters=[
                    {
                        "name": "since",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "string", "examples": ["15m", "1h", "7d", "2026-01-31T12:00:00Z"]},
                        "description": "Only requests at or after this: an ISO 8601 time (UTC when it has no "
                        "offset) or a span back from now (`90s`, `15m`, `1h`, `7d`).",
                    }
                ],
            )
        },
        "/health": {
            "get": _op(
                "Liveness and the state of every engine; public even when API keys are configured",
                {"description": "The gateway is up.", "content": _json(ref("Health"))},
                (431, 500),
                operationId="getHealth",
                **public,
            )
        },
        "/metrics": {
            "get": _op(
                "Prometheus metrics (public when `server.metrics_public` is set)",
                {"description": "The text exposition format.", "content": {"text/plain": _TEXT}},
                _GUARDED,
                operationId="getMetrics",
            )
        },
        "/dashboard": {
            "get": _op(
                "The dashboard page (public: it holds no data and asks for a key before reading stats)",
                {"description": "The page.", "headers": _page_headers(), "content": {"text/html": _TEXT}},
                (431, 500),
                operationId="getDashboard",
                **public,
            )
        },
        "/dashboard/assets/{name}": {
            "get": _op(
                "The dashboard's stylesheet, script and icon",
                {
                    "description": "The asset.",
                    "headers": _page_headers(),
                    "content": {t: _TEXT for t in ("text/css", "text/javascript", "image/svg+xml")},
                },
                (404, 431, 500),
                operationId="getDashboardAsset",
                parameters=[
                    {"name": "name", "in": "path", "required": True, "schema": {"enum": sorted(ASSETS)}}
                ],
                **public,
            )
        },
        "/openapi.json": {
            "get": _op(
                "This document (public even when API keys are configured)",
                {
                    "description": "The OpenAPI document.",
                    "content": _json(obj({"openapi": {"const": "3.1.0"}, "info": {}, "paths": {}})),
                },
                (431, 500),
                operationId="getOpenAPI",
                **public,
            )
        },
    }
    for name in ("/dashboard", "/dashboard/assets/{name}"):  # conditional GETs, by ETag
        paths[name]["get"]["responses"]["304"] = {"description": "Not modified.", "headers": _page_headers()}
    return paths


def _schemas() -> Schema:
    shared, responses = components(), openapi_responses.schemas()
    if clash := shared.keys() & responses.keys():  # one name, two schemas: a reference would lie
        raise RuntimeError(f"schemas share names: {sorted(clash)}")
    return {**shared, **responses}


def _messages_event() -> Schema:
    """One event of an Anthropic stream: its name, and its data (one of the stream's event objects)."""
    names = ["message_start", "content_block_start", "ping", "content_block_delta", "content_block_stop",
             "message_delta", "message_stop", "error"]  # fmt: skip
    data = {"contentMediaType": "application/json", "contentSchema": {"type": "object", "required": ["type"]}}
    return obj({"event": {"enum": names}, "data": data})


def _messages_op() -> Schema:
    body = {
        "required": True,
        "content": {
            "application/json": {
                "schema": ref("MessagesRequest"),
                "example": {
                    "model": "auto",
                    "max_tokens": 4,
                    "messages": [{"role": "user", "content": "Hi!"}],
                },
            }
        },
    }
    answer = {
        "description": "An Anthropic `message`, or with `stream: true` Anthropic's event stream "
        "(message_start, ping, content_block_start/_delta/_stop, message_delta, message_stop; an error "
        "mid-stream is an `error` event).",
        "headers": _answer_headers(),
        "content": {**_json(ref("AnthropicMessage")), "text/event-stream": {"schema": _messages_event()}},
    }
    version = _header(
        "anthropic-version",
        {"type": "string", "examples": ["2023-06-01"]},
        "Accepted whatever it says, or absent: the answer always has the 2023-06-01 shape.",
    )
    return _op(
        "Anthropic Messages API, translated to the chat form and routed like a chat completion",
        answer,
        (400, 404, 408, 413, 502, 503, 504, *_GUARDED),
        shape="AnthropicError",
        operationId="createMessage",
        parameters=[*_hints(), _privacy(), version],
        requestBody=body,
        security=[{"bearerAuth": []}, {"apiKeyHeader": []}, {}],
    )


def build_document() -> Schema:
    """The OpenAPI 3.1 document, a fresh copy on each call."""
    document = {
        "openapi": "3.1.0",
        "info": {
            "title": "localroute",
            "version": __version__,
            "description": "A local-first, OpenAI-compatible router. Errors have OpenAI's shape "
            '`{"error": {"message", "type", "param", "code"}}` (Anthropic\'s under /v1/messages); a method '
            "a path does not serve is a "
            "405 and an unknown path a 404, in that shape too.",
        },
        "paths": _paths(),
        "components": {
            "schemas": _schemas(),
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "An API key from the config's [[keys]]. Without [[keys]] (loopback "
                    "only) no key is needed; with them every path but /health, /openapi.json and the "
                    "dashboard's static files needs one.",
                },
                "apiKeyHeader": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "x-api-key",
                    "description": "The same key in Anthropic's header (any path takes either).",
                },
            },
        },
        "security": [{"bearerAuth": []}, {}],
    }
    return copy.deepcopy(document)  # leaf schemas are shared module constants: never hand them out


@functools.cache
def _document_bytes() -> bytes:
    return json.dumps(build_document(), separators=(",", ":")).encode()


async def openapi_json(request: Request) -> Response:
    """`GET /openapi.json`: the document, built on first use."""
    return Response(_document_bytes(), media_type="application/json")
