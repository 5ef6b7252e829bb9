"""A stand-in for a remote OpenAI-compatible provider: a real uvicorn server on a loopback port, run in a
background thread, whose failures (errors, slowness, dropped and reset connections) are set per test.

Its answers have OpenAI's shapes (`refusal: null` and `annotations: []` on every message, `refusal: null`
in a stream's first delta), and it serves tools and structured outputs the way OpenAI does (see
`_reply`): a tool call when `tool_choice` names a tool or is "required", or when the tools are offered
and the last user message names one; JSON of the requested schema for `response_format`. Tool-call
arguments and JSON answers are built from the schema the request carries, so they validate against it.
It also serves `POST /v1/embeddings` as OpenAI does (`_embeddings`): its models and their sizes in
`EMBEDDING_MODELS`, vectors from `fake_vllm.vector` (the same model gives the same vectors as the vLLM
stand-in), base64 on request, `dimensions` only for text-embedding-3 models, and OpenAI's 400s.

    with StandinProvider(api_key="sk-test") as provider:
        provider.set("fail", status=503, times=2)
        ... call provider.base_url ...
        assert len(provider.requests) == 3
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import re
import socket
import struct
import threading
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.fake_vllm import vector

MODES = frozenset({"ok", "slow", "drip", "fail", "reset", "stream_break", "stall", "hang"})
# The embedding models the stand-in serves, with their native sizes. MiniLM stands for a provider that
# hosts open weights (the same space as a local copy of them).
EMBEDDING_MODELS = {
    "text-embedding-3-small": 1536,
    "text-embedding-3-large": 3072,
    "text-embedding-ada-002": 1536,
    "sentence-transformers/all-MiniLM-L6-v2": 384,
}
EMBEDDING_PARAMS = frozenset({"model", "input", "encoding_format", "dimensions", "user"})
_BAD_INPUT = (
    "'$.input' is invalid. Please check the API reference: https://platform.openai.com/docs/api-reference."
)


@dataclass(frozen=True)
class Recorded:
    """One request as the provider saw it."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any
    time: float


class StandinProvider:
    """Speaks `POST /v1/chat/completions`, `POST /v1/completions` and `GET /v1/models`; see `set` for
    the failure modes."""

    def __init__(self, *, api_key: str | None = None, model: str = "standin-frontier") -> None:
        self.api_key = api_key
        self.model = model
        self.requests: list[Recorded] = []
        self._lock = threading.Lock()
        self._mode = "ok"
        self._params: dict[str, Any] = {}
        self._left: int | None = None
        self._ids = itertools.count(1)
        self._stopping = False
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self.port: int = self._sock.getsockname()[1]
        app = Starlette(routes=self._routes())
        config = uvicorn.Config(
            app, log_level="warning", lifespan="off", loop="asyncio", timeout_graceful_shutdown=2
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, args=([self._sock],), daemon=True)

    def _routes(self) -> list[Route]:
        """What it serves (a stand-in for another API overrides this)."""
        return [
            Route("/v1/chat/completions", self._chat, methods=["POST"]),
            Route("/v1/completions", self._completions, methods=["POST"]),
            Route("/v1/embeddings", self._embeddings, methods=["POST"]),
            Route("/v1/models", self._models, methods=["GET"]),
        ]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def set(self, mode: str = "ok", *, times: int | None = None, **params: Any) -> None:
        """Behave as `mode` for the next `times` chat requests (None: until set again), then "ok".

        ok; slow(delay_s) before the headers; drip(delay_s) one byte at a time; fail(status, message,
        code, retry_after); reset: abort the TCP connection (RST) unanswered; stream_break(chunks):
        send that many SSE events, then close without [DONE]; stall(chunks): send that many SSE events
        at once, then hold the stream open, silent, until shutdown; hang: never answer until shutdown.
        """
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; expected one of {sorted(MODES)}")
        with self._lock:
            self._mode, self._params, self._left = mode, params, times

    def start(self) -> StandinProvider:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("stand-in provider did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self._stopping = True
        self._server.should_exit = True
        self._thread.join(10)
        self._sock.close()

    def __enter__(self) -> StandinProvider:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- handlers ----------------------------------------------------------------------------------

    async def _record(self, request: Request) -> Any:
        raw = await request.body()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode("utf-8", "replace")
        self.requests.append(
            Recorded(request.method, request.url.path, dict(request.headers), body, time.monotonic())
        )
        return body

    def _take(self) -> tuple[str, dict[str, Any]]:
        with self._lock:
            mode, params = self._mode, dict(self._params)
            if self._left is not None:
                self._left -= 1
                if self._left <= 0:
                    self._mode, self._params, self._left = "ok", {}, None
            return mode, params

    def _unauthorized(self, request: Request) -> Response | None:
        given = request.headers.get("authorization", "")
        if self.api_key is None or given == f"Bearer {self.api_key}":
            return None
        return _error(401, f"Incorrect API key provided: {given[7:]}", "invalid_api_key")

    async def _models(self, request: Request) -> Response:
        await self._record(request)
        card = {"id": self.model, "object": "model", "created": 0, "owned_by": "standin"}
        return self._unauthorized(request) or JSONResponse({"object": "list", "data": [card]})

    async def _chat(self, request: Request) -> Response:
        body = await self._record(request)
        if (denied := self._unauthorized(request)) is not None:
            return denied
        mode, p = self._take()
        if mode == "fail":
            status = int(p.get("status", 503))
            headers = {"Retry-After": str(p["retry_after"])} if "retry_after" in p else None
            message = p.get("message", f"stand-in failure {status}")
            return _error(status, message, p.get("code"), headers)
        if mode == "reset":
            await self._drop(request, reset=True)
            return Response(status_code=500)  # never sent: the connection is gone
        if mode == "hang":
            await self._sleep(float("inf"))
            return _error(503, "stand-in shutting down", None)
        if mode == "slow":
            await self._sleep(float(p.get("delay_s", 1.0)))
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            return _error(400, "'messages' is required", "invalid_request")
        reply = _reply(body)
        if not body.get("stream"):
            data = json.dumps(self._completion(body, reply.pieces, reply.finish, reply.call)).encode()
            if mode == "drip":
                return StreamingResponse(self._drip(data, p), media_type="application/json")
            return Response(data, media_type="application/json")
        if reply.call is not None:
            events = self._call_events(body, reply.call)
        else:
            events = self._events(body, reply.pieces, reply.finish)
        if mode == "drip":
            return StreamingResponse(self._drip(b"".join(events), p), media_type="text/event-stream")
        if mode == "stream_break":
            return StreamingResponse(
                self._break(request, events[: int(p.get("chunks", 2))]), media_type="text/event-stream"
            )
        if mode == "stall":
            return StreamingResponse(
                self._stall(events[: int(p.get("chunks", 2))]), media_type="text/event-stream"
            )
        return StreamingResponse(_aiter(events), media_type="text/event-stream")

    async def _completions(self, request: Request) -> Response:
        """The legacy `POST /v1/completions` as OpenAI serves it (see `legacy_answer`); the failure
        modes `fail`, `slow` and `hang` apply as to chat."""
        body = await self._record(request)
        if (denied := self._unauthorized(request)) is not None:
            return denied
        mode, p = self._take()
        if mode == "fail":
            status = int(p.get("status", 503))
            return _error(status, p.get("message", f"stand-in failure {status}"), p.get("code"))
        if mode == "hang":
            await self._sleep(float("inf"))
            return _error(503, "stand-in shutting down", None)
        if mode == "slow":
            await self._sleep(float(p.get("delay_s", 1.0)))
        if not isinstance(body, dict):
            return _error(400, "We could not parse the JSON body of your request.", "invalid_json")
        problem = legacy_problem(body)
        if problem is not None:
            return _error(400, problem, "invalid_request_error")
        base = {"id": f"cmpl-standin{next(self._ids)}", "object": "text_completion",
                "created": int(time.time()), "model": body.get("model", self.model)}  # fmt: skip
        choices, usage = legacy_answer(body)
        if not body.get("stream"):
            return JSONResponse({**base, "choices": choices, "usage": usage, "system_fingerprint": None})
        events = []
        for ch in choices:
            pieces = re.findall(r"\s*\S+", ch["text"]) or [""]
            lp = ch["logprobs"]
            for k, piece in enumerate(pieces):
                part = None if lp is None else {key: lp[key][k : k + 1] for key in lp}
                last = k == len(pieces) - 1
                choice = {"text": piece, "index": ch["index"], "logprobs": part,
                          "finish_reason": ch["finish_reason"] if last else None}  # fmt: skip
                events.append(_sse({**base, "choices": [choice]}))
        if (body.get("stream_options") or {}).get("include_usage"):
            events.append(_sse({**base, "choices": [], "usage": usage}))
        return StreamingResponse(_aiter([*events, b"data: [DONE]\n\n"]), media_type="text/event-stream")

    async def _embeddings(self, request: Request) -> Response:
        body = await self._record(request)
        if (denied := self._unauthorized(request)) is not None:
            return denied
        mode, p = self._take()
        if mode == "fail":
            status = int(p.get("status", 503))
            headers = {"Retry-After": str(p["retry_after"])} if "retry_after" in p else None
            return _error(status, p.get("message", f"stand-in failure {status}"), p.get("code"), headers)
        if mode == "reset":
            await self._drop(request, reset=True)
            return Response(status_code=500)
        if mode == "hang":
            await self._sleep(float("inf"))
            return _error(503, "stand-in shutting down", None)
        if mode == "slow":
            await self._sleep(float(p.get("delay_s", 1.0)))
        if not isinstance(body, dict):
            return _error(400, "We could not parse the JSON body of your request.", None)
        extra = sorted(set(body) - EMBEDDING_PARAMS)
        if extra:
            return _error(400, f"Unrecognized request argument supplied: {extra[0]}", None)
        model = body.get("model")
        if model not in EMBEDDING_MODELS:
            return _error(404, f"The model `{model}` does not exist or you do not have access to it.",
                          "model_not_found")  # fmt: skip
        raw = body.get("input")
        items = (
            [raw] if isinstance(raw, str) or (isinstance(raw, list) and raw and type(raw[0]) is int) else raw
        )
        if not isinstance(items, list) or not 0 < len(items) <= 2048 or any(i in ("", []) for i in items):
            return _error(400, _BAD_INPUT, None)
        size = EMBEDDING_MODELS[model]
        dims = body.get("dimensions")
        if dims is not None and not model.startswith("text-embedding-3"):
            return _error(400, "This model does not support specifying dimensions.", None)
        if dims is not None and not (isinstance(dims, int) and 1 <= dims <= size):
            return _error(
                400, f"Invalid value for 'dimensions' = {dims}. Must be between 1 and {size}.", None
            )
        data, total = [], 0
        for i, item in enumerate(items):
            text = item if isinstance(item, str) else " ".join(f"t{t}" for t in item)
            n = len(text.split()) if isinstance(item, str) else len(item)
            if n > 8192:
                message = (
                    f"This model's maximum context length is 8192 tokens, however you requested {n} "
                    f"tokens ({n} in your prompt; 0 for the completion). Please reduce your prompt; "
                    "or completion length."
                )
                return _error(400, message, None)
            total += n
            vec: Any = vector(text, model, size)
            if dims is not None:
                head = vec[:dims]
                norm = sum(x * x for x in head) ** 0.5 or 1.0
                vec = [x / norm for x in head]
            if body.get("encoding_format") == "base64":
                vec = base64.b64encode(struct.pack(f"<{len(vec)}f", *vec)).decode()
            data.append({"object": "embedding", "index": i, "embedding": vec})
        usage = {"prompt_tokens": total, "total_tokens": total}
        return JSONResponse({"object": "list", "data": data, "model": model, "usage": usage})

    # -- bodies --------------------------------------------------------------------------------------

    def _completion(
        self, body: dict[str, Any], pieces: list[str], finish: str, call: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": "".join(pieces) if call is None else None}
        if call is not None:
            message["tool_calls"] = [call]
        message.update(refusal=None, annotations=[])
        choice = {
            "index": 0,
            "message": message,
            "logprobs": _logprobs(body, pieces),
            "finish_reason": finish,
        }
        return {
            "id": f"chatcmpl-standin{next(self._ids)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", self.model),
            "choices": [choice],
            "usage": _usage(body, pieces),
            "service_tier": "default",
            "system_fingerprint": None,
        }

    def _chunk_base(self, body: dict[str, Any]) -> dict[str, Any]:
        return {
            "id": f"chatcmpl-standin{next(self._ids)}",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": body.get("model", self.model),
            "service_tier": "default",
            "system_fingerprint": None,
        }

    def _events(self, body: dict[str, Any], pieces: list[str], finish: str) -> list[bytes]:
        base = self._chunk_base(body)
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        if include_usage:
            base["usage"] = None

        def chunk(delta: dict[str, Any], logprobs: Any = None, finish_reason: str | None = None) -> bytes:
            choice = {"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}
            return _sse({**base, "choices": [choice]})

        events = [chunk({"role": "assistant", "content": "", "refusal": None})]
        events += [chunk({"content": piece}, _logprobs(body, [piece])) for piece in pieces]
        events.append(chunk({}, None, finish))
        if include_usage:
            events.append(_sse({**base, "choices": [], "usage": _usage(body, pieces)}))
        return [*events, b"data: [DONE]\n\n"]

    def _call_events(self, body: dict[str, Any], call: dict[str, Any]) -> list[bytes]:
        """A streamed tool call as OpenAI sends it: id, type and name with empty arguments first, then
        the arguments in a few pieces, then an empty delta with `finish_reason: "tool_calls"`."""
        base = self._chunk_base(body)
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        if include_usage:
            base["usage"] = None

        def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            return _sse({**base, "choices": [choice]})

        head = {**call, "index": 0, "function": {"name": call["function"]["name"], "arguments": ""}}
        events = [chunk({"role": "assistant", "content": None, "tool_calls": [head], "refusal": None})]
        args = call["function"]["arguments"]
        for i in range(0, len(args), 8):
            events.append(chunk({"tool_calls": [{"index": 0, "function": {"arguments": args[i : i + 8]}}]}))
        events.append(chunk({}, "tool_calls"))
        if include_usage:
            events.append(_sse({**base, "choices": [], "usage": _usage(body, [args])}))
        return [*events, b"data: [DONE]\n\n"]

    # -- misbehaviour --------------------------------------------------------------------------------

    async def _sleep(self, seconds: float) -> None:
        """Sleep, but wake up for shutdown so that a stuck handler never holds the server."""
        end = time.monotonic() + seconds
        # Polled, not an asyncio.Event: `stop()` runs on the test's thread, not on the server's loop.
        while not self._stopping and time.monotonic() < end:  # noqa: ASYNC110
            await asyncio.sleep(min(0.05, max(end - time.monotonic(), 0)))

    async def _drip(self, data: bytes, params: dict[str, Any]) -> AsyncIterator[bytes]:
        for i in range(len(data)):
            yield data[i : i + 1]
            await self._sleep(float(params.get("delay_s", 0.05)))

    async def _stall(self, events: list[bytes]) -> AsyncIterator[bytes]:
        for event in events:
            yield event
        await self._sleep(float("inf"))

    async def _break(self, request: Request, events: list[bytes]) -> AsyncIterator[bytes]:
        for event in events:
            yield event
        await self._drop(request, reset=False)

    async def _drop(self, request: Request, *, reset: bool) -> None:
        """Close this request's TCP connection: RST (`reset`) or FIN after the bytes already written."""
        client = tuple(request.scope["client"])
        conns = self._server.server_state.connections
        conn = next(c for c in conns if tuple(getattr(c, "client", ()) or ()) == client)
        transport = conn.transport
        if reset:
            sock = transport.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            transport.abort()
        else:
            transport.close()
        while conn in conns:  # noqa: ASYNC110 -- uvicorn forgets it once its loop sees the close
            await asyncio.sleep(0.01)


def _last_user_text(body: dict[str, Any]) -> str:
    for message in reversed(body["messages"]):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, list):
                content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
            return str(content or "")
    return ""


@dataclass(frozen=True)
class Reply:
    """What the stand-in answers: a tool call, or text pieces and a finish reason."""

    call: dict[str, Any] | None = None
    pieces: list[str] = field(default_factory=list)
    finish: str = "stop"


def _reply(body: dict[str, Any]) -> Reply:
    """OpenAI's behaviour, made deterministic: `tool_choice` "none" never calls; a named tool is called;
    "required" calls a tool not yet called in this conversation (the one the last user message names,
    else the first); "auto" (or unset) calls a named-in-the-prompt tool unless the last message is a tool
    result, which gets a text answer. Otherwise `response_format` shapes the text: JSON of the schema,
    or a JSON object for `json_object`."""
    call = _tool_to_call(body)
    if call is not None:
        args = json.dumps(example(call.get("parameters") or {"type": "object"}))
        function = {"name": call["name"], "arguments": args}
        tool_call = {"id": "call_standin" + uuid.uuid4().hex[:16], "type": "function", "function": function}
        return Reply(call=tool_call, finish="tool_calls")
    fmt = body.get("response_format") or {}
    if fmt.get("type") == "json_schema":
        text = json.dumps(example((fmt.get("json_schema") or {}).get("schema") or {"type": "object"}))
        return Reply(pieces=re.findall(r"\s*\S+", text))
    if fmt.get("type") == "json_object":
        text = json.dumps({"answer": "Remote answer to: " + _last_user_text(body)[:40]})
        return Reply(pieces=re.findall(r"\s*\S+", text))
    pieces, finish = _answer(body)
    return Reply(pieces=pieces, finish=finish)


def _tool_to_call(body: dict[str, Any]) -> dict[str, Any] | None:
    """The function (its `tools[].function` entry) to call, or None for a text answer."""
    tools = [t["function"] for t in body.get("tools") or () if isinstance(t, dict) and "function" in t]
    choice = body.get("tool_choice")
    if not tools or choice == "none":
        return None
    if isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name")
        return next((t for t in tools if t.get("name") == name), None)
    messages = [m for m in body.get("messages") or () if isinstance(m, dict)]
    called = {
        (c.get("function") or {}).get("name")
        for m in messages
        if m.get("role") == "assistant"
        for c in m.get("tool_calls") or ()
        if isinstance(c, dict)
    }
    fresh = [t for t in tools if t.get("name") not in called] or tools
    prompt = _last_user_text(body).lower()
    named = next((t for t in fresh if str(t.get("name", "")).lower() in prompt), None)
    if choice == "required":
        return named or fresh[0]
    if messages and messages[-1].get("role") == "tool":
        return None
    return named


def example(schema: Any, defs: dict[str, Any] | None = None) -> Any:
    """A value valid against JSON `schema` (the subset tool parameters and structured outputs use:
    objects, arrays, scalars, enum/const, anyOf/oneOf/allOf, local $refs into $defs/definitions)."""
    if not isinstance(schema, dict):
        return {}
    if defs is None:
        defs = {**(schema.get("definitions") or {}), **(schema.get("$defs") or {})}
    if "$ref" in schema:
        return example(defs.get(str(schema["$ref"]).rsplit("/", 1)[-1], {}), defs)
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    if "default" in schema:
        return schema["default"]
    for key in ("anyOf", "oneOf"):
        if schema.get(key):
            options = [s for s in schema[key] if isinstance(s, dict) and s.get("type") != "null"]
            return example((options or schema[key])[0], defs)
    if schema.get("allOf"):
        merged: dict[str, Any] = {}
        for part in schema["allOf"]:
            ref = part.get("$ref") if isinstance(part, dict) else None
            merged.update(defs.get(ref.rsplit("/", 1)[-1], {}) if isinstance(ref, str) else part)
        return example(merged, defs)
    kind = schema.get("type", "object" if "properties" in schema else "string")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object":
        props = schema.get("properties") or {}
        return {name: example(sub, defs) for name, sub in props.items()}
    if kind == "array":
        return [example(schema.get("items") or {}, defs) for _ in range(max(1, schema.get("minItems", 1)))]
    if kind in ("integer", "number"):
        low = schema.get("minimum", schema.get("exclusiveMinimum", 0))
        value = max(low, 1) if "exclusiveMinimum" not in schema else low + 1
        return int(value) if kind == "integer" else float(value)
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    fmt = schema.get("format")
    if fmt == "date":
        return "2024-01-01"
    if fmt == "date-time":
        return "2024-01-01T00:00:00Z"
    return "standin".ljust(int(schema.get("minLength", 0)), "x")


def _answer(body: dict[str, Any]) -> tuple[list[str], str]:
    """The answer's words (each a token, leading space included) and the finish reason."""
    pieces = re.findall(r"\s*\S+", "Remote answer to: " + _last_user_text(body)[:40])
    limit = body.get("max_tokens")
    if isinstance(limit, int) and 0 < limit < len(pieces):
        return pieces[:limit], "length"
    return pieces, "stop"


def legacy_text(prompt: str) -> str:
    """The stand-in's deterministic continuation of a prompt (before `max_tokens` cuts it)."""
    return " remote continuation of: " + prompt[:40]


def legacy_problem(body: dict[str, Any]) -> str | None:
    """OpenAI's 400 for a completions body it refuses, or None."""
    if "messages" in body:
        return "Unrecognized request argument supplied: messages"
    prompt = body.get("prompt")
    if not (isinstance(prompt, str) or (isinstance(prompt, list) and prompt)):
        return "You must provide a prompt."
    lp = body.get("logprobs")
    if lp is not None and (isinstance(lp, bool) or not isinstance(lp, int) or not 0 <= lp <= 5):
        return f"{lp!r} is not valid under any of the given schemas - 'logprobs'"
    return None


def legacy_answer(body: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """`text_completion` choices (one per prompt and `n`, indexed prompt * n + j) and usage."""
    prompts = body["prompt"] if isinstance(body["prompt"], list) else [body["prompt"]]
    n, lp = int(body.get("n") or 1), body.get("logprobs")
    limit = int(body.get("max_tokens") or 16)
    choices, used = [], 0
    for i, prompt in enumerate(prompts):
        pieces = re.findall(r"\s*\S+", legacy_text(str(prompt)))
        finish = "length" if len(pieces) > limit else "stop"
        pieces = pieces[:limit]
        for j in range(n):
            text = "".join(pieces)
            logprobs = None
            if lp is not None:
                at, offsets = len(str(prompt)), []
                for piece in pieces:
                    offsets.append(at)
                    at += len(piece)
                tops = [{q: -0.05, **{f"alt{k}": -3.0 - k for k in range(lp)}} for q in pieces]
                logprobs = {"tokens": pieces, "token_logprobs": [-0.05] * len(pieces),
                            "top_logprobs": tops, "text_offset": offsets}  # fmt: skip
            if body.get("echo"):
                text = str(prompt) + text
            choices.append({"text": text, "index": i * n + j, "logprobs": logprobs, "finish_reason": finish})
            used += len(pieces)
    prompt_tokens = sum(len(str(p).split()) for p in prompts)
    return choices, {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": used,
        "total_tokens": prompt_tokens + used,
    }


def _logprobs(body: dict[str, Any], pieces: list[str]) -> dict[str, Any] | None:
    if not body.get("logprobs"):
        return None
    content = [{"token": p, "logprob": -0.05, "bytes": list(p.encode()), "top_logprobs": []} for p in pieces]
    return {"content": content}


def _usage(body: dict[str, Any], pieces: list[str]) -> dict[str, int]:
    prompt = sum(len(str(m.get("content", "")).split()) for m in body["messages"] if isinstance(m, dict))
    return {"prompt_tokens": prompt, "completion_tokens": len(pieces), "total_tokens": prompt + len(pieces)}


def _error(status: int, message: str, code: str | None, headers: dict[str, str] | None = None) -> Response:
    etype = "invalid_request_error" if status < 500 else "server_error"
    body = {"error": {"message": message, "type": etype, "param": None, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


def _sse(obj: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


async def _aiter(items: list[bytes]) -> AsyncIterator[bytes]:
    for item in items:
        yield item
