"""The one Backend protocol. Every rung (llama.cpp worker, vLLM server, remote provider) implements it,
so the router never knows which kind of engine it is talking to."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from localroute.protocol.wire import ChatCompletion, ChatCompletionChunk, EngineHealth, EngineState


@dataclass(frozen=True, slots=True)
class Brief:
    """What routing needs to know about a rung, cheaply, on every request."""

    state: EngineState
    local: bool
    load_seconds: float | None = None


@runtime_checkable
class Backend(Protocol):
    """An OpenAI-compatible chat-completions endpoint with a lifecycle.

    `complete` and `stream` take an engine request body (see `ChatCompletionRequest.engine_body`).
    Both raise `errors.APIError`. `stream` raises before its first chunk when nothing was generated,
    so the caller can still answer with a status code; later failures raise mid-iteration.
    """

    name: str

    async def start(self) -> None:
        """Make the backend ready (start a process, open a client). Idempotent."""

    async def complete(self, body: dict[str, Any]) -> ChatCompletion:
        """Return one `chat.completion` object."""

    def stream(self, body: dict[str, Any]) -> AsyncGenerator[ChatCompletionChunk, None]:
        """Yield `chat.completion.chunk` objects until the engine sends `[DONE]`."""

    def health(self) -> EngineHealth:
        """A JSON-able snapshot: at least `state`. Never blocks."""

    def brief(self) -> Brief:
        """State and last load time without touching the OS (no /proc reads): the router calls it
        for every rung on every request."""

    async def aclose(self) -> None:
        """Stop the engine and release every resource it holds."""
