"""A stand-in for Anthropic's Messages API: a real uvicorn server on loopback (the stand-in provider's
machinery, tests/standin_provider.py) that behaves as api.anthropic.com does where localroute's
Anthropic rung depends on it:

- `POST /v1/messages` needs `x-api-key` (401 `authentication_error` otherwise) and `anthropic-version`
  (400 `invalid_request_error`, "anthropic-version: header is required"), and `model`, `max_tokens`
  and `messages`; errors have Anthropic's shape `{"type": "error", "error": {"type", "message"}}`
  with its error type per status (429 `rate_limit_error`, 529 `overloaded_error`, 500 `api_error`);
- the answer is a `message` with text or, when tools are given and `tool_choice` asks for one (or the
  prompt names one and the last turn is not a tool result), a `tool_use` block whose `input` is valid
  for the tool's schema; `stop_sequences` are honoured (`stop_reason: "stop_sequence"`);
- a stream is the real event sequence: message_start, ping, content_block_start / _delta / _stop per
  block (text_delta, input_json_delta), message_delta (stop reason, output tokens), message_stop.

Failure modes (`set`) are the stand-in provider's; `fail` answers in Anthropic's error shape.
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.standin_provider import StandinProvider, _aiter, example

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}

FIELDS = frozenset(
    {
        "model",
        "max_tokens",
        "messages",
        "system",
        "tools",
        "tool_choice",
        "stop_sequences",
        "temperature",
        "top_p",
        "top_k",
        "stream",
        "metadata",
    }
)


class AnthropicStandin(StandinProvider):
    """Speaks `POST /v1/messages`; `base_url` is what models.toml takes (…/v1)."""

    def __init__(self, *, api_key: str | None = None, model: str = "claude-standin") -> None:
        super().__init__(api_key=api_key, model=model)

    def _routes(self) -> list[Route]:
        return [Route("/v1/messages", self._messages, methods=["POST"])]

    async def _messages(self, request: Request) -> Response:
        body = await self._record(request)
        given = request.headers.get("x-api-key")
        if self.api_key is not None and given != self.api_key:
            return _error(401, "invalid x-api-key")
        if "anthropic-version" not in request.headers:
            return _error(400, "anthropic-version: header is required")
        mode, p = self._take()
        if mode == "fail":
            status = int(p.get("status", 529))
            headers = {"retry-after": str(p["retry_after"])} if "retry_after" in p else None
            return _error(
                status, p.get("message", "Overloaded" if status == 529 else "stand-in failure"), headers
            )
        if mode == "reset":
            await self._drop(request, reset=True)
            return Response(status_code=500)
        if not isinstance(body, dict):
            return _error(400, "Request body is not valid JSON")
        for field in ("model", "max_tokens", "messages"):
            if field not in body:
                return _error(400, f"{field}: Field required")
        unknown = set(body) - FIELDS
        if unknown:
            return _error(400, f"{sorted(unknown)[0]}: Extra inputs are not permitted")
        message = self._message(body)
        if not body.get("stream"):
            return JSONResponse(message, headers={"request-id": "req_standin" + uuid.uuid4().hex[:12]})
        events = _events(message)
        if mode == "stream_break":
            return StreamingResponse(
                self._break(request, events[: int(p.get("chunks", 2))]), media_type="text/event-stream"
            )
        return StreamingResponse(_aiter(events), media_type="text/event-stream")

    def _message(self, body: dict[str, Any]) -> dict[str, Any]:
        content: list[dict[str, Any]]
        tool = _tool_to_use(body)
        stop_sequence = None
        if tool is not None:
            content = [
                {
                    "type": "tool_use",
                    "id": "toolu_standin" + uuid.uuid4().hex[:16],
                    "name": tool["name"],
                    "input": example(tool.get("input_schema") or {}),
                }
            ]
            stop = "tool_use"
        else:
            text = "Claude stand-in answer to: " + _last_user_text(body)[:60]
            stop = "end_turn"
            for seq in body.get("stop_sequences") or ():
                if seq in text:
                    text, stop, stop_sequence = text[: text.index(seq)], "stop_sequence", seq
            words = re.findall(r"\s*\S+", text)
            if len(words) > body["max_tokens"]:
                text, stop = "".join(words[: body["max_tokens"]]), "max_tokens"
            content = [{"type": "text", "text": text}]
        prompt = len(json.dumps(body.get("messages")).split())
        output = len(json.dumps(content).split())
        return {
            "id": "msg_standin" + uuid.uuid4().hex[:16],
            "type": "message",
            "role": "assistant",
            "model": body["model"],
            "content": content,
            "stop_reason": stop,
            "stop_sequence": stop_sequence,
            "usage": {
                "input_tokens": prompt,
                "output_tokens": output,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0,
            },
        }


def _last_user_text(body: dict[str, Any]) -> str:
    for m in reversed(body.get("messages") or ()):
        if m.get("role") != "user":
            continue
        content = m.get("content")
        if isinstance(content, str):
            return content
        return "".join(b.get("text", "") for b in content if b.get("type") == "text")
    return ""


def _tool_to_use(body: dict[str, Any]) -> dict[str, Any] | None:
    """Anthropic's tool_choice: none never, tool its named one, any one (the named-in-prompt or the
    first), auto one the prompt names unless the last turn carries a tool result."""
    tools = body.get("tools") or []
    choice = body.get("tool_choice") or {"type": "auto"}
    if not tools or choice.get("type") == "none":
        return None
    if choice.get("type") == "tool":
        return next((t for t in tools if t["name"] == choice.get("name")), None)
    prompt = _last_user_text(body).lower()
    named = next((t for t in tools if t["name"].lower() in prompt), None)
    if choice.get("type") == "any":
        return named or tools[0]
    last = body["messages"][-1].get("content")
    if isinstance(last, list) and any(b.get("type") == "tool_result" for b in last):
        return None
    return named


def _events(message: dict[str, Any]) -> list[bytes]:
    usage = message["usage"]
    start = {
        **message,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {**usage, "output_tokens": 1},
    }
    out = [
        _event("message_start", {"type": "message_start", "message": start}),
        _event("ping", {"type": "ping"}),
    ]
    for i, block in enumerate(message["content"]):
        if block["type"] == "text":
            head = {"type": "text", "text": ""}
            pieces = [{"type": "text_delta", "text": w} for w in re.findall(r"\s*\S+|\s+$", block["text"])]
        else:
            head = {**block, "input": {}}
            args = json.dumps(block["input"])
            pieces = [
                {"type": "input_json_delta", "partial_json": args[j : j + 7]} for j in range(0, len(args), 7)
            ]
        out.append(
            _event("content_block_start", {"type": "content_block_start", "index": i, "content_block": head})
        )
        out += [
            _event("content_block_delta", {"type": "content_block_delta", "index": i, "delta": d})
            for d in pieces
        ]
        out.append(_event("content_block_stop", {"type": "content_block_stop", "index": i}))
    delta = {"stop_reason": message["stop_reason"], "stop_sequence": message["stop_sequence"]}
    out.append(
        _event(
            "message_delta",
            {"type": "message_delta", "delta": delta, "usage": {"output_tokens": usage["output_tokens"]}},
        )
    )
    return [*out, _event("message_stop", {"type": "message_stop"})]


def _event(name: str, data: dict[str, Any]) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    body = {
        "type": "error",
        "error": {"type": ERROR_TYPES.get(status, "api_error"), "message": message},
        "request_id": "req_standin" + uuid.uuid4().hex[:12],
    }
    return JSONResponse(body, status_code=status, headers=headers)
