"""The remote embedding rung: an OpenAI-compatible provider's `/v1/embeddings`. It is the remote chat
rung (rungs/remote.py) pointed at another path: the same client, key handling, egress guard (every
body, right before it is sent), bounded retries and error mapping, by inheritance rather than a copy."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from localroute.config.models import RemoteModel
from localroute.config.schema import Config
from localroute.privacy.guard import EgressGuard
from localroute.rungs.remote import RemoteBackend, _json
from localroute.rungs.transport_errors import transport_error


class RemoteEmbedder(RemoteBackend):
    """One embedding model of one provider, reached at `base_url + /embeddings`. Implements `Embedder`.

    Sends `{"model", "input"}` only: vectors come back as floats at their native size (the gateway
    applies `dimensions` and `encoding_format`), and the client's `user` is not passed on."""

    def __init__(self, model: RemoteModel, *, egress_guard: EgressGuard, **kw: Any) -> None:
        super().__init__(model, egress_guard=egress_guard, **kw)
        self.url = model.base_url.rstrip("/") + "/embeddings"
        self._url = httpx.URL(self.url)

    def __repr__(self) -> str:
        return f"RemoteEmbedder(name={self.name!r}, url={self.url!r})"

    async def embed(self, body: dict[str, Any]) -> dict[str, Any]:
        out = self._outgoing(body, stream=False)
        del out["stream"]  # not a parameter of the embeddings API: OpenAI refuses unknown ones
        return await self._served(self._embed_once, out)

    async def _embed_once(self, out: dict[str, Any]) -> dict[str, Any]:
        resp = await self._send(out)
        try:
            content = await resp.aread()
        except httpx.HTTPError as exc:
            raise self._failed(transport_error(exc, self.peer, started=True)) from None
        finally:
            await resp.aclose()
        data = _json(content)
        if not isinstance(data, dict) or not isinstance(data.get("data"), list):
            raise self._failed(self._malformed("response"))
        return data  # checked against the request (count, size, finite) by the gateway


def from_config(
    config: Config, model: RemoteModel, runtime_dir: Path, *, egress_guard: EgressGuard
) -> RemoteEmbedder:
    return RemoteEmbedder(model, egress_guard=egress_guard)
