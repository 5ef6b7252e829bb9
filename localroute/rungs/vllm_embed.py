"""The vLLM embedding rung: `vllm serve --runner pooling` launched and supervised like the chat rung
(rungs/vllm.py: same supervision, admission, restarts, idle stop and GPU-second accounting), or an
existing pooling server at `url`, called on `/v1/embeddings`."""

from __future__ import annotations

import re
from collections.abc import Awaitable
from pathlib import Path
from typing import Any, cast

from localroute.config.models import VllmModel
from localroute.config.schema import Config
from localroute.errors import APIError, ContextLengthExceededError, InvalidRequestError, UpstreamError
from localroute.privacy.trust import mark_untrusted
from localroute.protocol.wire import ChatCompletion
from localroute.rungs import vllm
from localroute.rungs.openai_http import OpenAIHTTP

# vLLM's answer when the server runs a generative model (no `--runner pooling`).
_NOT_POOLING = re.compile(r"does not support (the )?embeddings? api", re.IGNORECASE)


class VllmEmbedder(vllm.VllmEngine):
    """One vLLM pooling server. Implements `Embedder`."""

    async def embed(self, body: dict[str, Any]) -> dict[str, Any]:
        def send(http: OpenAIHTTP) -> Awaitable[Any]:
            return OpenAIHTTP(http.client, "/v1/embeddings").complete(self._body(body))

        if self.egress is not None:  # a server outside the trusted networks: egress, as for chat
            self.egress(body)
        result = cast(dict[str, Any], await self._served(send))  # the wire's JSON, checked by the gateway
        if self.egress is not None:
            mark_untrusted(cast(ChatCompletion, result))  # served, but not local: the audit record says so
        return result

    def _mapped(self, exc: APIError) -> APIError:
        if isinstance(exc, InvalidRequestError) and _NOT_POOLING.search(exc.message):
            self.log.warning("vllm model %s: the server does not serve embeddings: %s", self.name, exc)
            return UpstreamError(  # our config, not the client: and the next rung of the space may serve
                f"The vLLM server behind '{self.name}' does not serve embeddings (is it a pooling runner?).",
                code="upstream_not_embedding",
            )
        mapped = super()._mapped(exc)
        if isinstance(mapped, ContextLengthExceededError):
            return ContextLengthExceededError(mapped.message, param="input")
        return mapped


def from_config(config: Config, model: VllmModel, runtime_dir: Path, **kw: Any) -> VllmEmbedder:
    return cast(VllmEmbedder, vllm.from_config(config, model, runtime_dir, engine=VllmEmbedder, **kw))
