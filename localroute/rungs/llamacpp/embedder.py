"""A GGUF embedding model (BERT: all-MiniLM-L6-v2 by default) as a supervised llama.cpp worker process,
implementing the `Embedder` protocol.

Everything but the worker and the admission is the chat engine's (engine.py): the Unix socket in the
private runtime folder, the file check, the memory reservation under a `Placement`, health, crash
restart on the next request, idle unload. The worker is embed_worker.py. Unlike the chat engine, which
admits one request at a time (a llama context decodes one prompt at a time), several requests are let
through to the worker at once: it embeds their inputs together in shared decodes (embed_batch.py).
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any, ClassVar

from localroute.config.models import LlamaCppModel
from localroute.config.schema import Config
from localroute.errors import APIError
from localroute.rungs.llamacpp.engine import LlamaCppEngine
from localroute.rungs.openai_http import ConnectionLostError, OpenAIHTTP

# Requests handed to the worker at once: what it can batch together. Beyond these, `max_queue` wait.
MAX_IN_FLIGHT = 8


class LlamaCppEmbedder(LlamaCppEngine):
    """One GGUF embedding model served by one worker process, batching concurrent requests."""

    label = "embedder"
    log: ClassVar[logging.Logger] = logging.getLogger("localroute.embedder")
    worker_module: ClassVar[str] = "localroute.rungs.llamacpp.embed_worker"

    def __init__(self, cfg: LlamaCppModel, model_path: Path, runtime_dir: Path) -> None:
        super().__init__(cfg, model_path, runtime_dir)
        self.max_in_flight = MAX_IN_FLIGHT
        self._slots = asyncio.Semaphore(MAX_IN_FLIGHT)

    def _busy_message(self) -> str:
        return (
            f"Model '{self.name}' is busy: {self.max_in_flight} requests being embedded and "
            f"{self.max_queue} waiting."
        )

    async def embed(self, body: dict[str, Any]) -> dict[str, Any]:
        """Embed every input of `body` (`{"model", "input": [str | [int, ...], ...]}`), in order; the
        answer carries `x_localroute.compute_s`, this request's share of the worker's CPU-seconds."""
        async with self._admit():
            assert self._client is not None
            http = OpenAIHTTP(self._client, "/v1/embeddings")
            try:
                result = dict(await http.complete({"model": self.name, "input": body.get("input")}))
            except ConnectionLostError:
                raise await self._lost() from None
            except APIError as exc:
                raise self._mapped(exc) from None
            self.served += 1
            return result


def from_config(config: Config, model: LlamaCppModel, runtime_dir: Path) -> LlamaCppEmbedder:
    return LlamaCppEmbedder(model, config.model_path(model), runtime_dir)
