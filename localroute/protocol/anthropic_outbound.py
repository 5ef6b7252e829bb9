"""A chat body (`ChatCompletionRequest.remote_body`) as an Anthropic Messages request, for the native
Anthropic rung: the inverse of `protocol/anthropic.MessagesRequest.to_chat`. A chat field that changes the
answer and that the Messages API cannot carry is refused with a 400 naming it, never dropped.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from localroute.errors import InvalidRequestError
from localroute.protocol.anthropic import MEDIA_TYPES

# Chat fields that change the answer and that the Messages API has no way to carry: refused by name.
_NO_EQUIVALENT = ("seed", "presence_penalty", "frequency_penalty", "logit_bias", "logprobs", "top_logprobs",
                  "reasoning_effort", "verbosity")  # fmt: skip
# Chat bookkeeping (no effect on the answer, no Messages field) and what Messages always does (usage).
_UNSENT = frozenset(
    {"metadata", "store", "service_tier", "prompt_cache_key", "safety_identifier", "stream_options"}
)
# What `messages_body` translates or checks.
_READ = frozenset(
    {"model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "stream", "stop",
     "tools", "tool_choice", "parallel_tool_calls", "user", "n", "response_format"}
)  # fmt: skip


def messages_body(chat: Mapping[str, Any], model: str, default_max_tokens: int) -> dict[str, Any]:
    """A chat body (`ChatCompletionRequest.remote_body`) as a Messages request for `model`. Raises
    InvalidRequestError naming a chat field the Messages API cannot honour (see `_NO_EQUIVALENT`)."""
    for key in _NO_EQUIVALENT:
        if chat.get(key) not in (None, False):
            raise _refused(key, "the Anthropic Messages API has no equivalent")
    if (chat.get("n") or 1) > 1:
        raise _refused("n", "the Anthropic Messages API answers with one choice")
    if (chat.get("response_format") or {}).get("type", "text") != "text":
        raise _refused("response_format", "the Anthropic Messages API has no JSON mode")
    unknown = sorted(set(chat) - _UNSENT - _READ - set(_NO_EQUIVALENT))
    if unknown:
        raise _refused(unknown[0], "localroute does not translate it for the Anthropic Messages API")
    limit = chat.get("max_completion_tokens") or chat.get("max_tokens") or default_max_tokens
    system, messages = _anthropic_messages(chat["messages"])
    out: dict[str, Any] = {"model": model, "max_tokens": limit, "messages": messages}
    if system:
        out["system"] = system
    temperature = chat.get("temperature")
    if temperature is not None and temperature > 1:
        raise _refused("temperature", "the Anthropic Messages API takes a temperature from 0 to 1")
    for key in ("temperature", "top_p"):
        if chat.get(key) is not None:
            out[key] = chat[key]
    out["stream"] = bool(chat.get("stream"))
    if (stop := chat.get("stop")) is not None:
        out["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
    if chat.get("user"):
        out["metadata"] = {"user_id": chat["user"]}
    if chat.get("tools"):
        out["tools"] = [_anthropic_tool(t["function"]) for t in chat["tools"]]
    choice = _anthropic_choice(chat.get("tool_choice"), chat.get("parallel_tool_calls") is False)
    if choice is not None and chat.get("tools"):  # Anthropic takes a tool_choice only with tools
        out["tool_choice"] = choice
    return out


def _refused(param: str, why: str) -> InvalidRequestError:
    return InvalidRequestError(f"'{param}' cannot be sent to an Anthropic model: {why}.", param=param)


def _anthropic_tool(fn: Mapping[str, Any]) -> dict[str, Any]:
    # `strict` has no Messages field; the tool's schema still goes with it.
    tool: dict[str, Any] = {"name": fn["name"], "input_schema": fn.get("parameters") or {"type": "object"}}
    if fn.get("description"):
        tool["description"] = fn["description"]
    return tool


def _anthropic_choice(choice: object, single: bool) -> dict[str, Any] | None:
    if isinstance(choice, dict):
        out: dict[str, Any] = {"type": "tool", "name": choice["function"]["name"]}
    elif choice in ("auto", "required", "none"):
        out = {"type": {"auto": "auto", "required": "any", "none": "none"}[str(choice)]}
    elif single:
        out = {"type": "auto"}
    else:
        return None
    if single and out["type"] != "none":
        out["disable_parallel_tool_use"] = True
    return out


def _anthropic_messages(
    chat: Sequence[Mapping[str, Any]],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(system blocks, turns). System and developer messages, wherever they stand, become the system
    prompt (Messages has no system turn); tool messages become `tool_result` blocks of a user turn;
    consecutive turns of one role are merged, as the Messages API requires alternation."""
    system: list[dict[str, Any]] = []
    turns: list[dict[str, Any]] = []
    for i, m in enumerate(chat):
        role = m["role"]
        if role in ("system", "developer"):
            system += [{"type": "text", "text": t} for t in _texts(m.get("content"))]
            continue
        if role == "tool":
            blocks = [
                {
                    "type": "tool_result",
                    "tool_use_id": m["tool_call_id"],
                    "content": "".join(_texts(m.get("content"))),
                }
            ]
            role = "user"
        elif role == "user":
            blocks = _user_blocks(m.get("content"))
        else:
            blocks = [{"type": "text", "text": t} for t in _texts(m.get("content")) if t]
            for j, call in enumerate(m.get("tool_calls") or ()):
                try:
                    args = json.loads(call["function"]["arguments"] or "{}")
                except ValueError:
                    args = None
                if not isinstance(args, dict):
                    raise InvalidRequestError(
                        "An Anthropic model takes a tool call's arguments as a JSON object.",
                        param=f"messages[{i}].tool_calls[{j}].function.arguments",
                    )
                blocks.append(
                    {"type": "tool_use", "id": call["id"], "name": call["function"]["name"], "input": args}
                )
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"] += blocks
        else:
            turns.append({"role": role, "content": blocks})
    return system, turns


def _texts(content: object) -> list[str]:
    if isinstance(content, str):
        return [content]
    if isinstance(content, list):
        return [str(p.get("text") or p.get("refusal") or "") for p in content if isinstance(p, dict)]
    return []


def _user_blocks(content: object) -> list[dict[str, Any]]:
    if not isinstance(content, list):
        return [{"type": "text", "text": str(content or "")}]
    blocks: list[dict[str, Any]] = []
    for p in content:
        if p.get("type") == "image_url":
            blocks.append({"type": "image", "source": _source(str(p["image_url"]["url"]))})
        else:
            blocks.append({"type": "text", "text": str(p.get("text") or "")})
    return blocks


def _source(url: str) -> dict[str, Any]:
    if not url.startswith("data:"):
        return {"type": "url", "url": url}
    head, _, data = url.partition(",")
    media_type = head[5:].split(";")[0]
    if media_type not in MEDIA_TYPES or ";base64" not in head:
        raise InvalidRequestError(
            f"An Anthropic model takes base64 images of type {', '.join(MEDIA_TYPES)}.", param="messages"
        )
    return {"type": "base64", "media_type": media_type, "data": data}
