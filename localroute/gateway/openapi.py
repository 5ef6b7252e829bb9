"""`GET /openapi.json`: an OpenAPI 3.1 document for every endpoint the gateway serves.

The document depends on no config (model names appear only as examples), so it is the same for
every gateway: it is built on the first request and then kept. The schemas it refers to are in
`openapi_schemas`.
"""

from __future__ import annotations

import copy
import functools
import json

from starlette.requests import Request
from starlette.responses import Response

from localroute import __version__
from localroute.gateway import openapi_responses
from localroute.gateway.dashboard import ASSETS
from localroute.gateway.openapi_parts import (
    GUARDED,
    TEXT,
    accepted,
    answer_headers,
    header,
    hint_headers,
    json_content,
    operation,
    page_headers,
    privacy_header,
    sse_event,
)
from localroute.gateway.openapi_schemas import STR, Schema, components, obj, ref
from localroute.protocol.embeddings import MAX_INPUTS, MAX_TOKEN_ID, EmbeddingRequest
from localroute.protocol.feedback import FeedbackRequest


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
        "headers": answer_headers(),
        "content": json_content(answer),
    }
    return {
        "post": operation(
            "Embeddings, from the cheapest available rung of the requested vector space",
            ok,
            (400, 404, 408, 413, 502, 503, 504, *GUARDED),
            operationId="createEmbedding",
            parameters=[hint_headers()[0], privacy_header()],
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
        "headers": answer_headers(),
        "content": {**json_content(ref("ChatCompletion")), "text/event-stream": {"schema": sse_event()}},
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
        "headers": answer_headers(),
        "content": {
            **json_content(ref("TextCompletion")),
            "text/event-stream": {"schema": sse_event("TextCompletion")},
        },
    }
    public: Schema = {"security": []}
    paths: Schema = {
        "/v1/completions": {
            "post": operation(
                "Legacy text completion of a raw prompt (no chat template), routed like chat",
                legacy_answer,
                (400, 404, 408, 413, 502, 503, 504, *GUARDED),
                operationId="createCompletion",
                parameters=[*hint_headers(), privacy_header()],
                requestBody=legacy_body,
            )
        },
        "/v1/chat/completions": {
            "post": operation(
                "Chat completion, routed to the cheapest rung that can serve it",
                answer,
                (400, 404, 408, 413, 502, 503, 504, *GUARDED),
                operationId="createChatCompletion",
                parameters=[*hint_headers(), privacy_header()],
                requestBody=chat_body,
            )
        },
        "/v1/responses": {
            "post": operation(
                "OpenAI's Responses API, stateless, routed like a chat completion",
                openapi_responses.answer(answer_headers()),
                (400, 404, 408, 413, 502, 503, 504, *GUARDED),
                operationId="createResponse",
                parameters=[*hint_headers(), privacy_header()],
                requestBody=openapi_responses.body(),
            )
        },
        "/v1/embeddings": _embeddings(),
        "/v1/messages": {"post": _messages_op()},
        "/v1/route/explain": {
            "post": operation(
                "The routing decision for a request, without running it",
                {"description": "The policy's decision.", "content": json_content(ref("Decision"))},
                (400, 404, 413, *GUARDED),
                operationId="explainRoute",
                parameters=[*hint_headers(), privacy_header()],
                requestBody=chat_body,
            )
        },
        "/v1/models": {
            "get": operation(
                "The models: `auto` and every rung of the ladder",
                {"description": "The model list.", "content": json_content(ref("ModelList"))},
                GUARDED,
                operationId="listModels",
            )
        },
        "/v1/models/{model}": {
            "get": operation(
                "One model, `auto` included (what `client.models.retrieve` asks for)",
                {"description": "The model.", "content": json_content(ref("Model"))},
                (404, *GUARDED),
                operationId="retrieveModel",
                parameters=[{"name": "model", "in": "path", "required": True, "schema": {"type": "string"}}],
            )
        },
        "/v1/localroute/feedback": {
            "post": accepted(
                operation(
                    "A client's outcome for a request served here (by its `x-request-id`), kept locally",
                    {"description": "The label it gives.", "content": json_content(ref("Feedback"))},
                    (400, 404, 408, 413, 503, *GUARDED),
                    operationId="postFeedback",
                    requestBody={
                        "required": True,
                        "content": json_content(FeedbackRequest.model_json_schema()),
                    },
                )
            )
        },
        "/v1/localroute/stats": {
            "get": operation(
                "Totals, per-model breakdowns, a cost series and the latest requests",
                {"description": "The stats over the window.", "content": json_content(ref("Stats"))},
                (400, *GUARDED),
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
            "get": operation(
                "Liveness and the state of every engine; public even when API keys are configured",
                {"description": "The gateway is up.", "content": json_content(ref("Health"))},
                (431, 500),
                operationId="getHealth",
                **public,
            )
        },
        "/metrics": {
            "get": operation(
                "Prometheus metrics (public when `server.metrics_public` is set)",
                {"description": "The text exposition format.", "content": {"text/plain": TEXT}},
                GUARDED,
                operationId="getMetrics",
            )
        },
        "/dashboard": {
            "get": operation(
                "The dashboard page (public: it holds no data and asks for a key before reading stats)",
                {"description": "The page.", "headers": page_headers(), "content": {"text/html": TEXT}},
                (431, 500),
                operationId="getDashboard",
                **public,
            )
        },
        "/dashboard/assets/{name}": {
            "get": operation(
                "The dashboard's stylesheet, script and icon",
                {
                    "description": "The asset.",
                    "headers": page_headers(),
                    "content": {t: TEXT for t in ("text/css", "text/javascript", "image/svg+xml")},
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
            "get": operation(
                "This document (public even when API keys are configured)",
                {
                    "description": "The OpenAPI document.",
                    "content": json_content(obj({"openapi": {"const": "3.1.0"}, "info": {}, "paths": {}})),
                },
                (431, 500),
                operationId="getOpenAPI",
                **public,
            )
        },
    }
    for name in ("/dashboard", "/dashboard/assets/{name}"):  # conditional GETs, by ETag
        paths[name]["get"]["responses"]["304"] = {"description": "Not modified.", "headers": page_headers()}
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
        "headers": answer_headers(),
        "content": {
            **json_content(ref("AnthropicMessage")),
            "text/event-stream": {"schema": _messages_event()},
        },
    }
    version = header(
        "anthropic-version",
        {"type": "string", "examples": ["2023-06-01"]},
        "Accepted whatever it says, or absent: the answer always has the 2023-06-01 shape.",
    )
    return operation(
        "Anthropic Messages API, translated to the chat form and routed like a chat completion",
        answer,
        (400, 404, 408, 413, 502, 503, 504, *GUARDED),
        shape="AnthropicError",
        operationId="createMessage",
        parameters=[*hint_headers(), privacy_header(), version],
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
