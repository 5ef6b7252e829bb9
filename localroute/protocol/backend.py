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


@runtime_checkable
class Embedder(Protocol):
    """An embedding rung: an OpenAI-compatible `/v1/embeddings` endpoint with a lifecycle (a llama.cpp
    worker in embedding mode, `vllm serve --task embed`, a remote provider).

    `embed` takes an engine body `{"model": rung name, "input": [str, ...] or [[token id, ...], ...]}`
    (always a list; the gateway normalises the client's input and applies `encoding_format` and
    `dimensions` itself) and returns OpenAI's `{"object": "list", "data": [{"object": "embedding",
    "index": i, "embedding": [float, ...]}], "model", "usage": {"prompt_tokens", "total_tokens"}}` with
    float vectors, in input order. Raises `errors.APIError`.
    """

    name: str

    async def start(self) -> None:
        """Make the rung ready. Idempotent."""

    async def embed(self, body: dict[str, Any]) -> dict[str, Any]:
        """Embed every input of `body`, in order."""

    def health(self) -> EngineHealth:
        """A JSON-able snapshot: at least `state`. Never blocks."""

    def brief(self) -> Brief:
        """State and last load time without touching the OS."""

    async def aclose(self) -> None:
        """Stop the engine and release every resource it holds."""
