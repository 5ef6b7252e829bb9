"""The legacy `text_completion` answer both ways.

Into the chat form (`as_chat`, `as_chat_chunk`): a rung's engine answers `POST /v1/completions`, and
the rung hands the router what it judges everywhere: `message.content` (or `delta.content`) is the
text, and the legacy logprobs (`tokens`, `token_logprobs`, `top_logprobs`) become chat's
`logprobs.content`, so the cascade reads a completion's confidence as it reads a chat answer's.

Back out (`CompletionsSurface`): the gateway answers the client with OpenAI's `text_completion` objects
and stream chunks, rebuilding `text_offset` (characters from the start of the prompt), writing the
prompt back for `echo`, and numbering choices `prompt index * n + j` across a list of prompts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal, NotRequired, cast

from typing_extensions import TypedDict  # pydantic reads only this one on Python < 3.12

from localroute.errors import APIError
from localroute.protocol import sse
from localroute.protocol.surface import Api, Translator
from localroute.protocol.wire import ChatCompletion, ChatCompletionChunk, Count, FinishReason, Usage


class TextLogprobs(TypedDict):
    """A choice's legacy `logprobs`: per token, its text, logprob, likeliest alternatives (the sampled
    token among them) and where it starts, in characters from the start of the prompt."""

    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float]] | None
    text_offset: list[Count]


class TextChoice(TypedDict):
    """One choice of a `text_completion` (index: prompt index * n + j)."""

    text: str
    index: Count
    logprobs: TextLogprobs | None
    finish_reason: FinishReason


class TextCompletion(TypedDict):
    """The answer of `POST /v1/completions`, and each event of its stream (the last with `usage` and
    no choices when `stream_options.include_usage` asks for it)."""

    id: str
    object: Literal["text_completion"]
    created: Count
    model: str
    choices: list[TextChoice]
    usage: NotRequired[Usage | None]
    system_fingerprint: NotRequired[str | None]


# -- legacy -> chat (rungs) -------------------------------------------------------------------------


def _entries(logprobs: object) -> list[dict[str, Any]] | None:
    """Chat `logprobs.content` entries from a legacy `logprobs` object; None when there is none."""
    if not isinstance(logprobs, Mapping):
        return None
    tokens = logprobs.get("tokens") or []
    values = logprobs.get("token_logprobs") or []
    tops = logprobs.get("top_logprobs") or [None] * len(tokens)
    out: list[dict[str, Any]] = []
    for token, value, top in zip(tokens, values, tops, strict=False):
        if value is None:  # the first token of an echoed prompt has no logprob
            continue
        alternatives = sorted((top or {}).items(), key=lambda kv: -kv[1])
        out.append({
            "token": token, "logprob": value, "bytes": list(str(token).encode()),
            "top_logprobs": [{"token": t, "logprob": v, "bytes": list(t.encode())} for t, v in alternatives],
        })  # fmt: skip
    return out


def _chat_logprobs(choice: Mapping[str, Any]) -> dict[str, Any] | None:
    entries = _entries(choice.get("logprobs"))
    return None if entries is None else {"content": entries}


def as_chat(answer: Mapping[str, Any]) -> ChatCompletion:
    """A `text_completion` object in the chat form the router judges (usage and accounting kept)."""
    choices = [
        {
            "index": ch.get("index", i),
            "message": {"role": "assistant", "content": ch.get("text") or ""},
            "finish_reason": ch.get("finish_reason"),
            "logprobs": _chat_logprobs(ch),
        }
        for i, ch in enumerate(answer.get("choices") or ())
    ]
    out = {**answer, "object": "chat.completion", "choices": choices}
    return cast(ChatCompletion, out)


def as_chat_chunk(chunk: Mapping[str, Any]) -> ChatCompletionChunk:
    """A legacy stream chunk in the chat form; a usage chunk (no choices) stays as it is."""
    choices = [
        {
            "index": ch.get("index", i),
            "delta": {"content": ch.get("text") or ""},
            "finish_reason": ch.get("finish_reason"),
            "logprobs": _chat_logprobs(ch),
        }
        for i, ch in enumerate(chunk.get("choices") or ())
    ]
    return cast(ChatCompletionChunk, {**chunk, "object": "chat.completion.chunk", "choices": choices})


# -- chat -> legacy (the gateway's surface) --------------------------------------------------------


class _Offsets:
    """Where the next token of each choice starts, in characters from the start of the prompt."""

    def __init__(self, start: int) -> None:
        self.start = start
        self.at: dict[int, int] = {}

    def logprobs(self, index: int, lp: object) -> dict[str, Any] | None:
        content = lp.get("content") if isinstance(lp, Mapping) else None
        if not isinstance(content, Sequence):
            return None
        tokens: list[str] = []
        values: list[float] = []
        tops: list[dict[str, float]] = []
        offsets: list[int] = []
        at = self.at.get(index, self.start)
        for e in content:
            token = str(e.get("token", ""))
            top = {str(t["token"]): t["logprob"] for t in e.get("top_logprobs") or ()}
            top.setdefault(token, e["logprob"])  # OpenAI always lists the sampled token too
            tokens.append(token)
            values.append(e["logprob"])
            tops.append(top)
            offsets.append(at)
            at += len(token)
        self.at[index] = at
        return {"tokens": tokens, "token_logprobs": values, "top_logprobs": tops, "text_offset": offsets}


class _Stream:
    """Chat chunks out as `text_completion` chunks, then `[DONE]`."""

    def __init__(self, surface: CompletionsSurface) -> None:
        self.surface = surface
        self.offsets = _Offsets(len(surface.prompt))
        self.echoed: set[int] = set()

    def feed(self, chunk: ChatCompletionChunk) -> bytes:
        s = self.surface
        choices = []
        for ch in chunk.get("choices") or ():
            index = ch.get("index", 0)
            text = (ch.get("delta") or {}).get("content") or ""
            if s.echo and index not in self.echoed:
                self.echoed.add(index)
                text = s.prompt + text
            lp = self.offsets.logprobs(index, ch.get("logprobs")) if s.logprobs else None
            if not text and ch.get("finish_reason") is None and lp is None:
                continue  # chat's opening role-only delta: nothing a legacy client would see
            choices.append(
                {
                    "text": text,
                    "index": s.base + index,
                    "logprobs": lp,
                    "finish_reason": ch.get("finish_reason"),
                }
            )
        if not choices and chunk.get("usage") is None:
            return b""
        out: dict[str, Any] = {
            "id": chunk.get("id"), "object": "text_completion", "created": chunk.get("created"),
            "model": chunk.get("model"), "choices": choices,
        }  # fmt: skip
        if chunk.get("usage") is not None:
            out["usage"] = chunk["usage"]
        return sse.encode(out)

    def close(self) -> bytes:
        return sse.DONE

    def fail(self, exc: APIError) -> bytes:
        return sse.encode(exc.body())


class CompletionsSurface:
    """One prompt of a legacy completions request: its answer as OpenAI's `text_completion`."""

    api: Api = "completions"

    def __init__(self, prompt: str, *, echo: bool, logprobs: bool, base: int = 0) -> None:
        self.prompt = prompt
        self.echo = echo
        self.logprobs = logprobs
        self.base = base  # this prompt's first choice index: prompt index * n
        self.body: dict[str, Any] | None = None  # the last answer, for a handler merging a list

    def answer(self, result: ChatCompletion) -> Mapping[str, Any]:
        offsets = _Offsets(len(self.prompt))
        choices = []
        for ch in result.get("choices") or ():
            index = ch.get("index", 0)
            text = (ch.get("message") or {}).get("content") or ""
            choices.append({
                "text": self.prompt + text if self.echo else text,
                "index": self.base + index,
                "logprobs": offsets.logprobs(index, ch.get("logprobs")) if self.logprobs else None,
                "finish_reason": ch.get("finish_reason"),
            })  # fmt: skip
        body: dict[str, Any] = {
            "id": result.get("id"), "object": "text_completion", "created": result.get("created"),
            "model": result.get("model"), "choices": choices,
        }  # fmt: skip
        if "usage" in result:
            body["usage"] = result["usage"]
        if result.get("system_fingerprint") is not None:
            body["system_fingerprint"] = result["system_fingerprint"]
        self.body = body
        return body

    def translator(self) -> Translator:
        return _Stream(self)
