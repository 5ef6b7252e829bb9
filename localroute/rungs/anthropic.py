"""The native Anthropic rung: a remote rung that speaks Anthropic's Messages API, so that a Claude model
can be the top of the ladder with no translating proxy (`engine = "remote"`, `api = "anthropic"`).

It is the remote rung (rungs/remote.py) with another wire: the same HTTP client, timeouts, bounded
retries and error mapping, and the same egress guard, which sees the Messages body itself right before
it is sent. Only the translation differs: a chat body out as a Messages request
(`protocol.anthropic_outbound.messages_body`), a `message` or event stream back as a chat completion or chunks
(`protocol.anthropic_answer`). Authentication is `x-api-key`, with `anthropic-version: 2023-06-01`.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any, ClassVar

import httpx

from localroute.config.models import RemoteModel
from localroute.config.schema import Config
from localroute.privacy.guard import EgressGuard
from localroute.protocol import sse
from localroute.protocol.anthropic_answer import ChunkReader, ProviderStreamError, chat_completion
from localroute.protocol.anthropic_outbound import messages_body
from localroute.protocol.wire import ChatCompletion
from localroute.rungs.remote import RETRY_STATUSES, RemoteBackend

ANTHROPIC_VERSION = "2023-06-01"


class AnthropicBackend(RemoteBackend):
    """One Claude model at `base_url + /messages` (base_url: `https://api.anthropic.com/v1`)."""

    path: ClassVar[str] = "/messages"
    # 529: Anthropic is overloaded; like a 503, nothing was generated and another try may succeed.
    retry_statuses: ClassVar[frozenset[int]] = RETRY_STATUSES | {529}

    def __repr__(self) -> str:
        return f"AnthropicBackend(name={self.name!r}, url={self.url!r})"

    def _outgoing(self, body: dict[str, Any], *, stream: bool) -> dict[str, Any]:
        chat = super()._outgoing(body, stream=stream)  # refuses when disabled
        return messages_body(chat, self.cfg.model, self.cfg.default_max_tokens)

    def _auth_headers(self) -> dict[str, str]:
        headers = {"anthropic-version": ANTHROPIC_VERSION}
        if self._api_key:
            headers["x-api-key"] = self._api_key
        return headers

    def _answer(self, data: Any) -> ChatCompletion:
        if not isinstance(data, dict) or data.get("type") != "message":
            raise self._failed(self._malformed("response"))
        return chat_completion(data)

    def _events(self, resp: httpx.Response) -> AsyncGenerator[dict[str, Any], None]:
        return _chunks(resp.aiter_lines())


async def _chunks(lines: AsyncGenerator[str, None] | Any) -> AsyncGenerator[dict[str, Any], None]:
    """Anthropic's event stream as chat chunks, until `message_stop`. An `error` event comes out as a
    chat error chunk (`{"error": ...}`), which the remote rung raises; a stream that ends before
    `message_stop` raises `sse.IncompleteStreamError`, a `data:` line that is not a JSON object
    ValueError."""
    reader = ChunkReader()
    async for line in lines:
        if not line.startswith("data:"):
            continue  # `event:` lines repeat the data's `type`; blank lines separate events
        data = json.loads(line[5:].strip())
        if not isinstance(data, dict):
            raise ValueError("an SSE event that is not a JSON object")
        try:
            chunks = reader.read(data)
        except ProviderStreamError as exc:
            err = exc.body.get("error")
            yield {"error": err if isinstance(err, dict) else {"message": "stream error"}}
            return
        for chunk in chunks:
            yield dict(chunk)
        if reader.done:
            return
    raise sse.IncompleteStreamError("the stream ended before message_stop")


def from_config(
    config: Config,
    model: RemoteModel,
    runtime_dir: Path,
    *,
    egress_guard: EgressGuard,
) -> AnthropicBackend:
    return AnthropicBackend(model, egress_guard=egress_guard)
