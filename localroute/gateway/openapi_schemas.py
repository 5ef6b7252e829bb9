"""JSON Schemas of what the gateway takes and answers: the components of `GET /openapi.json`.

The request schema is pydantic's own, generated from `protocol.ChatCompletionRequest`, so the
document and the validator cannot disagree; the response schemas are written out here from the code
that builds each response (the router's answers, `Decision.as_json`, `stats.summarize`, health).
"""

from __future__ import annotations

from typing import Any, get_args

from localroute.observe.stats import LATENCY_BOUNDS_MS
from localroute.protocol.backend import EngineState
from localroute.protocol.chat import ChatCompletionRequest

Schema = dict[str, Any]
STR: Schema = {"type": "string"}
_STR_OR_NULL: Schema = {"type": ["string", "null"]}
_COUNT: Schema = {"type": "integer", "minimum": 0}
_INT_OR_NULL: Schema = {"type": ["integer", "null"]}
_NUM: Schema = {"type": "number"}
_NUM_OR_NULL: Schema = {"type": ["number", "null"]}
_USD: Schema = {"type": "number", "minimum": 0}
_TIME: Schema = {"type": "string", "format": "date-time"}


def ref(name: str) -> Schema:
    """A reference to the component schema `name`."""
    return {"$ref": f"#/components/schemas/{name}"}


def obj(props: Schema, *, optional: tuple[str, ...] = (), closed: bool = False) -> Schema:
    """An object with these properties, all required but `optional`; `closed`: no others."""
    schema: Schema = {
        "type": "object",
        "required": [k for k in props if k not in optional],
        "properties": props,
    }
    if closed:
        schema["additionalProperties"] = False
    return schema


def _map(values: Schema) -> Schema:
    return {"type": "object", "additionalProperties": values}


def _money() -> Schema:
    return {"cost_usd": _USD, "baseline_usd": _USD, "saved_usd": _NUM, "savings_pct": _NUM_OR_NULL}


def _tokens() -> Schema:
    return obj({"prompt": _COUNT, "completion": _COUNT}, closed=True)


def _latency() -> Schema:
    return obj({"p50": _NUM_OR_NULL, "p95": _NUM_OR_NULL}, closed=True)


def components() -> dict[str, Schema]:
    """Every named schema the document refers to."""
    return {**_request_schemas(), **_response_schemas(), "Stats": _stats_schema()}


def _request_schemas() -> dict[str, Schema]:
    """`ChatCompletionRequest` and the models it uses, with pydantic's `$defs` moved under components."""
    schema = ChatCompletionRequest.model_json_schema(ref_template="#/components/schemas/{model}")
    defs: dict[str, Schema] = schema.pop("$defs", {})
    props = schema["properties"]
    props["model"]["examples"] = ["auto"]
    for branch in props["seed"]["anyOf"]:  # a validator, not a type, holds this range: say it here
        if branch.get("type") == "integer":
            branch.update(minimum=-(2**63), maximum=2**64 - 1)
    return {**defs, "ChatCompletionRequest": schema}


def _response_schemas() -> dict[str, Schema]:
    logprob = obj(
        {
            "token": STR,
            "logprob": _NUM,
            "bytes": {"type": ["array", "null"], "items": {"type": "integer", "minimum": 0, "maximum": 255}},
            "top_logprobs": {"type": "array"},
        }
    )
    logprobs = {
        "type": ["object", "null"],
        "properties": {"content": {"type": ["array", "null"], "items": logprob}},
    }
    usage = obj({"prompt_tokens": _COUNT, "completion_tokens": _COUNT, "total_tokens": _COUNT})
    message = obj({"role": {"const": "assistant"}, "content": _STR_OR_NULL})
    finish = {"type": ["string", "null"], "examples": ["stop", "length"]}
    choice = obj(
        {"index": _COUNT, "message": message, "logprobs": logprobs, "finish_reason": finish},
        optional=("logprobs",),
    )
    delta = {"type": "object", "properties": {"role": {"const": "assistant"}, "content": _STR_OR_NULL}}
    chunk_choice = obj(
        {"index": _COUNT, "delta": delta, "logprobs": logprobs, "finish_reason": finish},
        optional=("logprobs",),
    )
    head = {"id": STR, "created": _COUNT, "model": STR}
    error = obj(
        {
            "message": STR,
            "type": {"enum": ["invalid_request_error", "rate_limit_error", "server_error"]},
            "param": _STR_OR_NULL,
            "code": _STR_OR_NULL,
        },
        closed=True,
    )
    engine = obj(
        {"state": {"enum": list(get_args(EngineState))}, "engine": STR, "tier": {"type": "integer"}},
    )
    return {
        "Error": obj({"error": error}, closed=True),
        "Usage": usage,
        "ChatCompletion": obj(
            {
                "object": {"const": "chat.completion"},
                **head,
                "choices": {"type": "array", "items": choice},
                "usage": usage,
            },
            optional=("usage",),
        ),
        "ChatCompletionChunk": obj(
            {
                "object": {"const": "chat.completion.chunk"},
                **head,
                "choices": {"type": "array", "items": chunk_choice},
                "usage": {"anyOf": [ref("Usage"), {"type": "null"}]},
            },
            optional=("usage",),
        ),
        "ModelList": obj(
            {
                "object": {"const": "list"},
                "data": {
                    "type": "array",
                    "minItems": 1,
                    "items": obj(
                        {"id": STR, "object": {"const": "model"}, "created": _COUNT, "owned_by": STR},
                        closed=True,
                    ),
                },
            },
            closed=True,
        ),
        "Decision": obj(
            {
                "model": STR,
                "tier": {"type": "integer"},
                "score": _NUM,
                "reasons": {"type": "array", "items": STR},
                "estimated_tokens": _COUNT,
                "thresholds": _map(_NUM),
                "route": STR,
                "escalation": {"type": "array", "items": STR},
            },
            closed=True,
        ),
        "Health": obj(
            {
                "status": {"enum": ["ok", "degraded"]},
                "engines": _map(engine),
                "tasks": _COUNT,
                "resources": {"type": "object"},
            },
            optional=("resources",),
            closed=True,
        ),
    }


def _stats_schema() -> Schema:
    """The shape `stats.summarize` returns."""
    bins = len(LATENCY_BOUNDS_MS) + 1
    model = obj(
        {
            "model": STR,
            "tier": _INT_OR_NULL,
            "local": {"type": "boolean"},
            "requests": _COUNT,
            "escalated": _COUNT,
            **_money(),
            "latency_ms": _latency(),
            "tokens": _tokens(),
        },
        closed=True,
    )
    point = obj(
        {"t": _TIME, "requests": _COUNT, **{k: v for k, v in _money().items() if k != "savings_pct"}},
        closed=True,
    )
    recent = obj(
        {
            "ts": _STR_OR_NULL,
            "id": _STR_OR_NULL,
            "model": _STR_OR_NULL,
            "tier": _INT_OR_NULL,
            "route": _STR_OR_NULL,
            "privacy": {"enum": ["private", "public", None]},
            "status": {"type": "integer"},
            "latency_ms": _NUM,
            "cost_usd": _USD,
            "baseline_usd": _USD,
            "escalations": _COUNT,
        },
        closed=True,
    )
    totals = obj(
        {
            "requests": _COUNT,
            "ok": _COUNT,
            "errors": _COUNT,
            "local": _COUNT,
            "local_share": {"type": "number", "minimum": 0, "maximum": 1},
            "escalated": _COUNT,
            "escalation_rate": {"type": "number", "minimum": 0, "maximum": 1},
            "tokens": _tokens(),
            **_money(),
            "latency_ms": _latency(),
        },
        closed=True,
    )
    return obj(
        {
            "object": {"const": "localroute.observe.stats"},
            # As the client wrote it, offset included: not always RFC 3339 (`+05:30:15`).
            "since": _STR_OR_NULL,
            "until": _TIME,
            "bucket_s": {"type": "integer", "minimum": 1},
            "totals": totals,
            "models": {"type": "array", "items": model},
            "escalations": _map(_COUNT),
            "routes": _map(_COUNT),
            "privacy": obj({"private": _COUNT, "public": _COUNT}, closed=True),
            "series": {"type": "array", "items": point},
            "latency_histogram": obj(
                {
                    "bounds_ms": {"type": "array", "items": _NUM, "minItems": bins - 1, "maxItems": bins - 1},
                    "counts": {"type": "array", "items": _COUNT, "minItems": bins, "maxItems": bins},
                },
                closed=True,
            ),
            "recent": {"type": "array", "items": recent},
        },
        closed=True,
    )
