"""An API surface: how the answer to one request, served in the internal chat form, goes back in the
shape of the API the client called (chat completions, legacy completions, Responses, Anthropic Messages).

Each surface translates its request *into* a `ChatCompletionRequest` when it parses it, so routing,
privacy, the cascade, cost and audit apply unchanged; it translates the answer back here. A stream is
translated by a synchronous, stateful `Translator`: one call per chunk, no extra async hop per token.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, Protocol

from localroute.errors import APIError
from localroute.protocol import sse
from localroute.protocol.wire import ChatCompletion, ChatCompletionChunk

Api = Literal["chat", "completions", "responses", "messages", "embeddings"]


class Translator(Protocol):
    """Turns one chat stream into the bytes (SSE frames) of the called API's stream."""

    def feed(self, chunk: ChatCompletionChunk) -> bytes:
        """The frames for one chunk (possibly none: b"")."""

    def close(self) -> bytes:
        """The frames after the last chunk (the stream's end marker)."""

    def fail(self, exc: APIError) -> bytes:
        """The frame that ends a stream with an error, in the called API's error shape."""


class Surface(Protocol):
    """One request's way back to its client."""

    api: Api

    def answer(self, result: ChatCompletion) -> Mapping[str, Any]:
        """The JSON body of a non-streamed answer."""

    def translator(self) -> Translator:
        """A fresh translator for this request's stream."""


class _ChatStream:
    """Chat completions: chunks go out as they are, then `[DONE]`."""

    def feed(self, chunk: ChatCompletionChunk) -> bytes:
        return sse.encode(chunk)

    def close(self) -> bytes:
        return sse.DONE

    def fail(self, exc: APIError) -> bytes:
        return sse.encode(exc.body())  # headers are gone; the SDK raises on an error event


class ChatSurface:
    """OpenAI chat completions, the internal form itself: nothing to translate."""

    api: Api = "chat"

    def answer(self, result: ChatCompletion) -> Mapping[str, Any]:
        return result

    def translator(self) -> Translator:
        return _ChatStream()


CHAT = ChatSurface()


def opening(chunk: Mapping[str, Any]) -> bool:
    """A stream's opening chunk: the assistant's role, no text, no tool call, no end. Engines send it
    just before the first token's chunk; it is written together with that one (docs/bench-ttft.md)."""
    choices = chunk.get("choices") or []
    return (
        len(choices) == 1
        and choices[0].get("finish_reason") is None
        and set(choices[0].get("delta") or {}) <= {"role"}
    )
