"""The remote frontier tier: an OpenAI-compatible provider over HTTPS, the only traffic that leaves the
machine. Every request passes the egress guard right before it is sent, retries are bounded and only
for failures that cannot have produced an answer, and the API key never appears in a message or log.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import math
import os
import random
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar, TypeVar, cast

import httpx

from localroute.config.models import RemoteModel
from localroute.config.schema import Config
from localroute.errors import (
    APIError,
    EngineUnavailableError,
    InvalidRequestError,
    OverloadedError,
    UpstreamError,
    api_error_from_body,
)
from localroute.observe import tracing
from localroute.privacy.guard import EgressGuard
from localroute.protocol import sse
from localroute.protocol.backend import Brief
from localroute.protocol.completions import is_completion, wire_body
from localroute.protocol.text_completion import as_chat, as_chat_chunk
from localroute.protocol.wire import ChatCompletion, ChatCompletionChunk, EngineHealth, EngineState
from localroute.rungs import lean_http
from localroute.rungs.remote_send import Sender, read_all
from localroute.rungs.transport_errors import Peer, transport_error

log = logging.getLogger("localroute.remote")
T = TypeVar("T")
_Opened = tuple[httpx.Response, AsyncGenerator[dict[str, Any], None], ChatCompletionChunk | None]

RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
# Failures that happen before any response byte arrived: the provider cannot have answered.
RETRY_EXCEPTIONS = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)
BACKOFF_BASE_S = 0.2
BACKOFF_CAP_S = 2.0


class RemoteTimeoutError(EngineUnavailableError):
    """The provider did not answer within a read timeout or the total deadline."""

    status = 504
    default_code = "remote_timeout"


class _Retry(Exception):
    """One attempt failed in a way worth another try; `error` is what the caller sees if none is left."""

    def __init__(self, error: APIError, retry_after: float | None = None) -> None:
        super().__init__(error.message)
        self.error = error
        self.retry_after = retry_after


class RemoteBackend:
    """One model of one OpenAI-compatible provider, reached at `base_url + /chat/completions`.

    `egress_guard` is required: it sees every outgoing body right before it is sent, and nothing can
    build a rung that leaves the machine without one. A subclass speaking another API (rungs/anthropic.py)
    overrides `path`, `retry_statuses`, `_outgoing`, `_auth_headers`, `_answer` and `_events`."""

    path: ClassVar[str] = "/chat/completions"
    retry_statuses: ClassVar[frozenset[int]] = RETRY_STATUSES

    def __init__(
        self,
        model: RemoteModel,
        *,
        egress_guard: EgressGuard,
        env: Mapping[str, str] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.name = model.name
        self.cfg = model
        self.who = f"Remote provider '{model.name}'"  # how every message names the provider
        self.peer = Peer(self.who, f"within read_timeout_s={model.read_timeout_s:g}s", RemoteTimeoutError,
                         _unavailable)  # fmt: skip
        self.url = model.base_url.rstrip("/") + self.path
        self._url = httpx.URL(self.url)  # parsed once, not per request
        # A legacy text completion (its body carries `prompt`) goes to the provider's /completions.
        self._completions_url = httpx.URL(model.base_url.rstrip("/") + "/completions")
        self._host = self._url.host
        self.attempts = 0  # network sends, retries included
        self.served = 0
        self.failures = 0
        self.retry_delays: collections.deque[float] = collections.deque(maxlen=32)
        self.last_error: str | None = None
        self._egress_guard = egress_guard
        self._transport = transport
        self._client: httpx.AsyncClient | None = None
        self._sender: Sender | None = None
        # Writes share the read limit; the pool waits as long as a connect may.
        self._timeout = httpx.Timeout(
            model.read_timeout_s, connect=model.connect_timeout_s, pool=model.connect_timeout_s
        )
        self._warned = False
        environ = os.environ if env is None else env
        self._api_key = environ.get(model.api_key_env, "") if model.api_key_env else ""
        self._disabled: str | None = None
        if model.api_key_env and not self._api_key:
            self._disabled = f"API key variable {model.api_key_env} is not set"
            self.last_error = self._disabled

    def __repr__(self) -> str:
        return f"RemoteBackend(name={self.name!r}, url={self.url!r})"

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        if self._disabled is not None:
            if not self._warned:
                self._warned = True
                log.warning("remote model %s is disabled: %s", self.name, self._disabled)
            return
        self._http()

    async def aclose(self) -> None:
        client, self._client, self._sender = self._client, None, None
        if client is not None:
            await client.aclose()

    def brief(self) -> Brief:
        return Brief("unavailable" if self._disabled is not None else "ready", local=False)

    def health(self) -> EngineHealth:
        state: EngineState = "unavailable" if self._disabled is not None else "ready"
        # Cast: `EngineHealth` is open (each engine adds keys), which mypy cannot express yet.
        return cast(
            EngineHealth,
            {
                "state": state,
                "engine": "remote",
                "tier": self.cfg.tier,
                "model": self.cfg.model,
                "host": self._host,
                "served": self.served,
                "failures": self.failures,
                "last_error": self.last_error,
            },
        )

    def _http(self) -> Sender:
        if self._sender is None:
            transport = self._transport or lean_http.default_transport()
            self._client = httpx.AsyncClient(transport=transport, timeout=self._timeout)
            self._sender = Sender(self._client, transport, self._timeout, self._auth_headers())
        return self._sender

    # -- serving ---------------------------------------------------------------------------------

    async def complete(self, body: dict[str, Any]) -> ChatCompletion:
        out = self._outgoing(body, stream=False)
        result = await self._served(self._complete_once, out)
        return as_chat(result) if is_completion(out) else result

    async def _served(self, once: Callable[[dict[str, Any]], Awaitable[T]], out: dict[str, Any]) -> T:
        """One non-streamed call (`once`, retried as `_retrying` allows) within the total deadline."""
        try:
            async with asyncio.timeout_at(self._deadline_at()) as scope:
                result = await self._retrying(once, out)
        except TimeoutError:
            if not scope.expired():
                raise
            raise self._late() from None
        self.served += 1
        return result

    async def stream(self, body: dict[str, Any]) -> AsyncGenerator[ChatCompletionChunk, None]:
        out = self._outgoing(body, stream=True)
        deadline = self._deadline_at()
        # The deadline is armed only while this generator runs, never while the caller holds a chunk.
        try:
            async with asyncio.timeout_at(deadline) as scope:
                resp, chunks, chunk = await self._retrying(self._open_stream, out)
        except TimeoutError:
            if not scope.expired():
                raise
            raise self._late() from None
        text = is_completion(out)
        try:
            while chunk is not None:
                yield as_chat_chunk(chunk) if text else chunk
                try:
                    async with asyncio.timeout_at(deadline) as scope:
                        chunk = await self._next_chunk(chunks)
                except _Retry as exc:  # after the first chunk nothing is retried
                    raise self._failed(exc.error) from None
                except TimeoutError:
                    if not scope.expired():
                        raise
                    raise self._late() from None
            self.served += 1
        finally:
            await chunks.aclose()
            await resp.aclose()

    def _outgoing(self, body: dict[str, Any], *, stream: bool) -> dict[str, Any]:
        if self._disabled is not None:
            raise EngineUnavailableError(
                f"Remote model '{self.name}' is disabled: {self._disabled}.", code="remote_disabled"
            )
        out = wire_body(body) if is_completion(body) else body
        return {**out, "model": self.cfg.model, "stream": stream}

    def _deadline_at(self) -> float:
        return asyncio.get_running_loop().time() + self.cfg.total_timeout_s

    def _late(self) -> APIError:
        late = f"{self.who} did not finish within total_timeout_s={self.cfg.total_timeout_s:g}s."
        return self._failed(RemoteTimeoutError(late))

    async def _retrying(self, attempt: Callable[[dict[str, Any]], Awaitable[T]], out: dict[str, Any]) -> T:
        for n in range(self.cfg.max_retries + 1):
            try:
                return await attempt(out)
            except _Retry as exc:
                if n == self.cfg.max_retries:
                    raise self._failed(exc.error) from None
                delay = min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2**n)
                delay = random.uniform(delay / 2, delay)
                if exc.retry_after is not None:
                    delay = min(BACKOFF_CAP_S, max(delay, exc.retry_after))
                self.retry_delays.append(delay)
                log.info("remote %s: %s; retry in %.2fs", self.name, exc.error.message, delay)
                await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    async def _send(self, out: dict[str, Any]) -> httpx.Response:
        """One network attempt; returns a 200 response whose body is not yet read."""
        sender = self._http()
        self._egress_guard(out)  # the last word before any byte leaves the machine
        url = self._completions_url if is_completion(out) else self._url
        # W3C trace context, for a public request only
        request = sender.request(url, out, tracing.outgoing())
        self.attempts += 1
        try:
            resp = await sender.send(request)
        except RETRY_EXCEPTIONS as exc:
            raise _Retry(transport_error(exc, self.peer)) from None
        except httpx.HTTPError as exc:
            raise self._failed(transport_error(exc, self.peer)) from None
        if resp.status_code == 200:
            return resp
        try:
            content = await resp.aread()
        except httpx.HTTPError:
            content = b""  # an error body cut short is still an error; its status says which
        finally:
            await resp.aclose()
        retry_after = _retry_after(resp.headers)
        error = self._status_error(resp.status_code, content, retry_after)
        if resp.status_code in self.retry_statuses:
            raise _Retry(error, retry_after)
        raise self._failed(error)

    async def _complete_once(self, out: dict[str, Any]) -> ChatCompletion:
        resp = await self._send(out)
        try:
            content = await read_all(resp)
        except httpx.HTTPError as exc:
            raise self._failed(transport_error(exc, self.peer, started=True)) from None
        finally:
            await resp.aclose()
        return self._answer(_json(content))

    def _auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}

    def _answer(self, data: Any) -> ChatCompletion:
        """The provider's answer (decoded JSON) as a chat completion."""
        if not isinstance(data, dict) or not isinstance(data.get("choices"), list):
            raise self._failed(self._malformed("response"))
        return cast(ChatCompletion, data)  # the provider's JSON, trusted as its wire shape: not validated

    def _events(self, resp: httpx.Response) -> AsyncGenerator[dict[str, Any], None]:
        """The stream's chat chunks; raises `sse.IncompleteStreamError` if it ends before its end marker."""
        return sse.decode(resp.aiter_lines())

    async def _open_stream(self, out: dict[str, Any]) -> _Opened:
        """Send, and read up to the first chunk: every failure until then may be retried."""
        resp = await self._send(out)
        chunks = self._events(resp)
        try:
            return resp, chunks, await self._next_chunk(chunks)
        except BaseException:
            await chunks.aclose()
            await resp.aclose()
            raise

    async def _next_chunk(self, chunks: AsyncGenerator[dict[str, Any], None]) -> ChatCompletionChunk | None:
        """The next SSE chunk, None at `[DONE]`. A dropped connection raises `_Retry`."""
        try:
            chunk = await anext(chunks)
        except StopAsyncIteration:
            return None
        except httpx.HTTPError as exc:
            raise _Retry(transport_error(exc, self.peer, started=True)) from None
        except sse.IncompleteStreamError:
            raise _Retry(
                UpstreamError(f"{self.who} ended the stream before it finished.", code="upstream_incomplete")
            ) from None
        except ValueError:
            raise self._failed(self._malformed("stream chunk")) from None
        if "error" in chunk:
            raise self._failed(api_error_from_body(502, self._scrubbed(chunk)))
        return cast(ChatCompletionChunk, chunk)  # as for `_complete_once`: not validated

    # -- errors ----------------------------------------------------------------------------------

    def _failed(self, error: APIError) -> APIError:
        self.failures += 1
        # The code only: a provider's own message can echo request content, and /health is public.
        self.last_error = f"{type(error).__name__}: {error.code or error.type}"
        log.warning("remote %s failed: %s", self.name, self.last_error)
        return error

    def _malformed(self, what: str) -> UpstreamError:
        return UpstreamError(f"{self.who} sent a malformed {what}.", code="upstream_malformed")

    def _scrubbed(self, body: dict[str, Any]) -> dict[str, Any]:
        """The error body with the key redacted and the provider named (providers echo bad keys)."""
        err = dict(body["error"]) if isinstance(body.get("error"), dict) else {}
        message = str(err.get("message") or "upstream error")[:500]
        if self._api_key:
            message = message.replace(self._api_key, "[redacted]")
        return {"error": {**err, "message": f"{self.who}: {message}"}}

    def _status_error(self, status: int, content: bytes, retry_after: float | None) -> APIError:
        who, body = self.who, _json(content)
        shaped = body if isinstance(body, dict) and isinstance(body.get("error"), dict) else None
        if status in (401, 403):
            denied = (
                f"{who} rejected localroute's credentials (HTTP {status}); the operator must check its key."
            )
            return UpstreamError(denied, code="remote_auth_failed")
        if status == 404:  # a wrong base_url or model in models.toml, not the client's mistake
            return UpstreamError(
                f"{who} answered 404; check its base_url and model.", code="remote_not_found"
            )
        if status in (400, 422) and shaped:
            return api_error_from_body(400, self._scrubbed(shaped))
        if status in (400, 422):
            return InvalidRequestError(f"{who} refused the request (HTTP {status}).")
        if status == 429:
            wait = {"Retry-After": str(max(1, round(retry_after or 0)))}
            return OverloadedError(
                f"{who} is rate-limiting localroute.", code="remote_rate_limited", headers=wait
            )
        if status == 408 or status >= 500:
            return EngineUnavailableError(f"{who} is unavailable (HTTP {status}).", code="remote_unavailable")
        code = shaped["error"].get("code") if shaped else None
        return UpstreamError(f"{who} answered HTTP {status}.", code=code if isinstance(code, str) else None)


def _json(text: bytes | str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None


def _unavailable(message: str) -> APIError:
    return EngineUnavailableError(message, code="remote_unavailable")


def _retry_after(headers: httpx.Headers) -> float | None:
    try:
        value = float(headers.get("retry-after", ""))
    except ValueError:
        return None
    return value if math.isfinite(value) and value >= 0 else None


def from_config(
    config: Config,
    model: RemoteModel,
    runtime_dir: Path,
    *,
    egress_guard: EgressGuard,
) -> RemoteBackend:
    return RemoteBackend(model, egress_guard=egress_guard)
