"""An OpenAI chat-completions client over httpx: the wire every engine speaks to the gateway. A body
carrying `prompt` (a legacy text completion, protocol/completions.py) goes to `/v1/completions`
instead, and its answer comes back in the chat form the router judges."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncGenerator
from typing import Any, cast

import httpx

from localroute.errors import APIError, EngineUnavailableError, api_error_from_body
from localroute.protocol import sse
from localroute.protocol.completions import is_completion, wire_body
from localroute.protocol.text_completion import as_chat, as_chat_chunk
from localroute.protocol.wire import ChatCompletion, ChatCompletionChunk
from localroute.rungs.remote_send import Sender
from localroute.rungs.transport_errors import TRANSPORT_ERRORS, Peer, transport_error


class ConnectionLostError(EngineUnavailableError):
    """The engine's connection failed or closed mid-request (often: the process died)."""


class EngineTimeoutError(EngineUnavailableError):
    default_code = "engine_timeout"


class OpenAIHTTP:
    """POSTs to `/v1/chat/completions` on one base URL and maps every failure to an APIError.

    With `transport` (the client's own, one that we built), requests go straight to it, past httpx's
    client layer, as the remote rung sends (rungs/remote_send.py): on a local stream that layer was
    most of the gateway's work before the first token (docs/bench-ttft.md)."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        path: str = "/v1/chat/completions",
        completions_path: str = "/v1/completions",
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.client = client
        self.path = path
        self.completions_path = completions_path
        read = client.timeout.read
        deadline = "in time" if read is None else f"within request_timeout_s={read:g}s"
        self.peer = Peer("The engine", deadline, EngineTimeoutError, ConnectionLostError)
        self._sender = Sender(client, transport, client.timeout, {})
        base = str(client.base_url).rstrip("/")
        self._urls = {p: httpx.URL(base + p) for p in (path, completions_path)}

    def _request(self, path: str, body: dict[str, Any], extensions: dict[str, Any] | None) -> httpx.Request:
        if self.client.is_closed:  # the engine was stopped: its transport must not reconnect
            raise ConnectionLostError("The engine is not running.")
        req = self._sender.request(self._urls[path], body, {})
        if extensions:
            req.extensions = {**req.extensions, **extensions}
        return req

    async def complete(
        self, body: dict[str, Any], extensions: dict[str, Any] | None = None
    ) -> ChatCompletion:
        """`extensions` go with the request to the transport (lean_http.PEER_CHECK)."""
        text = is_completion(body)
        path, body = (self.completions_path, wire_body(body)) if text else (self.path, body)
        try:
            resp = await self._sender.send(self._request(path, body, extensions))
            try:
                content = await resp.aread()
            finally:
                await resp.aclose()
        except TRANSPORT_ERRORS as exc:
            raise transport_error(exc, self.peer) from None
        if resp.status_code != 200:
            raise _error_from(resp.status_code, content)
        try:
            data = json.loads(content)
        except ValueError:
            raise ConnectionLostError("The engine sent a malformed response.") from None
        if not isinstance(data, dict):
            raise ConnectionLostError("The engine sent a malformed response.")
        if text:
            return as_chat(data)
        return cast(ChatCompletion, data)  # the engine's JSON, trusted as its wire shape: not validated

    async def stream(
        self, body: dict[str, Any], extensions: dict[str, Any] | None = None
    ) -> AsyncGenerator[ChatCompletionChunk, None]:
        text = is_completion(body)
        path, body = (self.completions_path, wire_body(body)) if text else (self.path, body)
        try:
            resp = await self._sender.send(self._request(path, body, extensions))
        except TRANSPORT_ERRORS as exc:
            raise transport_error(exc, self.peer) from None
        try:
            if resp.status_code != 200:
                raise _error_from(resp.status_code, await resp.aread())
            async with contextlib.aclosing(sse.decode_bytes(resp.aiter_bytes())) as chunks:
                async for chunk in chunks:
                    if "error" in chunk:
                        raise api_error_from_body(500, chunk)
                    yield as_chat_chunk(chunk) if text else cast(ChatCompletionChunk, chunk)  # not validated
        except sse.IncompleteStreamError:
            raise ConnectionLostError("The engine closed the stream before it finished.") from None
        except TRANSPORT_ERRORS as exc:
            raise transport_error(exc, self.peer, started=True) from None
        except ValueError:
            raise ConnectionLostError("The engine sent a malformed stream chunk.") from None
        finally:
            await resp.aclose()


def _error_from(status: int, content: bytes) -> APIError:
    try:
        body = json.loads(content)
    except ValueError:
        body = None
    return api_error_from_body(status, body)
