"""Tools and structured output on llama.cpp, in the worker process.

- `response_format` json_object / json_schema: the output is held to a grammar (llama.cpp's GBNF built
  from the JSON schema), so it is JSON, and JSON of that shape, by construction.
- Tools with `tool_choice` "required" or a named function: the output is held to a grammar for
  `{"name": <a declared tool>, "arguments": <its parameters>}` and returned as an OpenAI tool call.
- Tools with `tool_choice` "auto": the tools are described in a system message, and an answer of the
  form `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` becomes a tool call; anything else
  is a text answer. The gateway checks every call against the declared schemas and escalates one that
  does not hold (`escalated:invalid_output`).

History is rendered for chat templates that know only system/user/assistant text: an assistant's tool
calls as `<tool_call>` text, a tool result as a user turn in `<tool_response>` tags, image parts refused
(no llama.cpp rung declares vision).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

OPEN, CLOSE = "<tool_call>", "</tool_call>"
_JSON_GBNF_KEY = "<json>"


def flatten(message: dict[str, Any]) -> dict[str, Any]:
    """One history message as plain `{"role", "content"}` text for the model's chat template."""
    role = message.get("role")
    content = message.get("content")
    if isinstance(content, list):
        content = "".join(
            str(p.get("text") or p.get("refusal") or "") for p in content if isinstance(p, dict)
        )
    text = str(content or "")
    if role == "developer":  # chat templates know "system", not OpenAI's newer alias
        role = "system"
    elif role == "tool":
        role, text = "user", f"<tool_response>\n{text}\n</tool_response>"
    elif role == "assistant":
        if not text and isinstance(message.get("refusal"), str):
            text = message["refusal"]
        for call in message.get("tool_calls") or ():
            fn = call.get("function") or {}
            try:
                args = json.loads(fn.get("arguments") or "{}")
            except ValueError:
                args = fn.get("arguments")
            text += f"{OPEN}{json.dumps({'name': fn.get('name'), 'arguments': args})}{CLOSE}"
    return {"role": role, "content": text}


@dataclass
class Structured:
    """What one request asks of the output's shape, and how this worker holds the model to it."""

    mode: str  # "json": a grammar for the answer; "forced": a grammar for one tool call; "auto"
    schema: dict[str, Any] | None = None  # the grammar's JSON schema; None in "json" mode: any JSON object
    tools: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def of(cls, body: dict[str, Any]) -> Structured | None:
        tools = [t["function"] for t in body.get("tools") or () if isinstance(t, dict) and "function" in t]
        choice = body.get("tool_choice")
        if tools and choice != "none":
            if isinstance(choice, dict):
                named = choice["function"]["name"]
                return cls("forced", _call_schema([t for t in tools if t["name"] == named]), tools)
            if choice == "required":
                return cls("forced", _call_schema(tools), tools)
            return cls("auto", None, tools)
        fmt = body.get("response_format") or {}
        if fmt.get("type") == "json_object":
            return cls("json")
        if fmt.get("type") == "json_schema":
            schema = (fmt.get("json_schema") or {}).get("schema")
            return cls("json", schema if isinstance(schema, dict) else None)
        return None

    def messages(self, flat: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The history with the tools described in a system message (tool modes only)."""
        if not self.tools:
            return flat
        lines = ["You can call these tools:"]
        for t in self.tools:
            params = json.dumps(t.get("parameters") or {"type": "object"}, separators=(",", ":"))
            lines.append(f"- {t['name']}: {t.get('description') or ''} Parameters (JSON schema): {params}")
        if self.mode == "auto":
            lines.append(
                f'To call a tool, answer with only {OPEN}{{"name": ..., "arguments": {{...}}}}{CLOSE}.'
            )
            lines.append("Otherwise answer normally.")
        else:
            lines.append('Answer with the tool call as JSON: {"name": ..., "arguments": {...}}.')
        note = {"role": "system", "content": "\n".join(lines)}
        if flat and flat[0]["role"] == "system":
            return [{"role": "system", "content": flat[0]["content"] + "\n\n" + note["content"]}, *flat[1:]]
        return [note, *flat]

    def grammar_key(self) -> str | None:
        """What the grammar is built from (a JSON schema as text, or the plain-JSON marker), if any."""
        if self.mode == "auto":
            return None
        if self.schema is None:
            return _JSON_GBNF_KEY
        # Key order kept: the grammar emits properties in the schema's order (a call's name before its
        # arguments, so a stream can name the call early), and so the cache key must not sort them.
        return json.dumps(self.schema)

    def answer(self, text: str, finish: str | None) -> tuple[dict[str, Any], str | None]:
        """The assistant message for generated `text`, and the finish reason to report."""
        call = self._call(text)
        if call is None:
            return {"role": "assistant", "content": text}, finish
        # A call cut off by max_tokens says so, as OpenAI's does: its arguments are not whole.
        message = {"role": "assistant", "content": None, "tool_calls": [call]}
        return message, "length" if finish == "length" else "tool_calls"

    def _call(self, text: str) -> dict[str, Any] | None:
        if self.mode == "json":
            return None
        raw = text.strip()
        if self.mode == "auto":
            if not raw.startswith(OPEN):
                return None
            raw = raw[len(OPEN) :].removesuffix(CLOSE).strip()
        try:
            value = json.loads(raw)
        except ValueError:
            value = None
        if not isinstance(value, dict):  # kept as a call the gateway finds broken: it escalates it
            return _tool_call("", raw)
        args = value.get("arguments")
        return _tool_call(str(value.get("name") or ""), json.dumps(args if args is not None else {}))

    def shaper(self) -> Callable[[str, str | None], list[dict[str, Any]]] | None:
        """For a stream: a function from each content delta (and the finish reason, at the end) to
        the deltas to send. None when content streams as it is (json mode)."""
        if self.mode == "json":
            return None
        return _StreamShaper(self).feed


class _StreamShaper:
    """Turns a tool-call answer into `tool_calls` deltas as it is generated: the call's id and name
    first, then its arguments as they come. A text answer (auto mode) passes through once it is clear
    that it is not a call."""

    def __init__(self, plan: Structured) -> None:
        self.plan = plan
        self.text = ""
        self.state = "undecided" if plan.mode == "auto" else "call"
        self.call: dict[str, Any] | None = None

    def feed(self, delta: str, finish: str | None) -> list[dict[str, Any]]:
        self.text += delta
        if self.state == "undecided":
            head = self.text.lstrip()
            if head and not OPEN.startswith(head[: len(OPEN)]):
                self.state = "text"
                return [{"content": self.text}, *self._end(finish)]
            if head.startswith(OPEN):
                self.state = "call"
        if self.state == "text":
            return ([{"content": delta}] if delta else []) + self._end(finish)
        if finish is None:
            return self._open_call()
        if self.state == "undecided":  # the answer ended while it still looked like a call could come
            return [{"content": self.text}, *self._end(finish)]
        message, _ = self.plan.answer(self.text, finish)
        calls = message.get("tool_calls") or []
        if not calls:
            return [{"content": self.text}, *self._end(finish)]
        out = self._open_call()
        args = calls[0]["function"]["arguments"]
        if self.call is None:
            out = [{"tool_calls": [{**calls[0], "index": 0}]}]
        elif args:  # held back until the end: sent once, re-serialised from the parsed call
            out.append(_args_delta(args))
        return out + self._end("length" if finish == "length" else "tool_calls")

    def _open_call(self) -> list[dict[str, Any]]:
        """The call's first delta (id, name) as soon as the name is known; argument text held back
        until the end, where it is re-serialised from what was parsed."""
        if self.call is not None:
            return []
        body = self.text.strip().removeprefix(OPEN).lstrip()
        try:
            start = body.index('"arguments"')
            name = json.loads(body[:start].rstrip().rstrip(",") + "}").get("name")
        except (ValueError, AttributeError):
            return []
        if not isinstance(name, str) or not name:
            return []
        self.call = _tool_call(name, "")
        return [{"tool_calls": [{**self.call, "index": 0}]}]

    @staticmethod
    def _end(finish: str | None) -> list[dict[str, Any]]:
        return [] if finish is None else [{"finish_reason": finish}]


def _args_delta(text: str) -> dict[str, Any]:
    return {"tool_calls": [{"index": 0, "function": {"arguments": text}}]}


def _tool_call(name: str, arguments: str) -> dict[str, Any]:
    return {
        "id": "call_" + os.urandom(12).hex(),
        "type": "function",
        "function": {"name": name, "arguments": arguments},
    }


def _call_schema(tools: list[dict[str, Any]]) -> dict[str, Any]:
    """The JSON schema of one call to any of `tools`: name first, so it is known early in a stream."""
    shapes = [
        {
            "type": "object",
            "properties": {
                "name": {"const": t["name"]},
                "arguments": t.get("parameters") or {"type": "object"},
            },
            "required": ["name", "arguments"],
        }
        for t in tools
    ]
    return shapes[0] if len(shapes) == 1 else {"anyOf": shapes}
