"""One engine process supervised behind the Backend protocol: the skeleton that the llama.cpp and vLLM
rungs specialise.

The base class, `EngineProcess` (engine_process.py), owns the process: one start at a time, the
health check, its last output lines, a crash, backoff, the process group, the placement's memory. This
one adds serving, the same for every engine: admitting requests up to `max_in_flight` with `max_queue`
more waiting (429 beyond), each request's share of the engine's time, a lost connection turned into
`engine_crashed` when the process died, and `brief`/`health`. Under a `Placement` (host/lifecycle.py)
it is unloaded when idle past `idle_ttl_s` or evicted. A subclass says how to load (`_load`), how to
name its failures, and what its answers carry.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Any, cast

from localroute.errors import APIError, EngineUnavailableError, OverloadedError
from localroute.protocol.backend import Brief
from localroute.protocol.wire import (
    ChatCompletion,
    ChatCompletionChunk,
    EngineAccounting,
    EngineHealth,
    EngineState,
)
from localroute.rungs.engine_process import C, EngineProcess
from localroute.rungs.openai_http import ConnectionLostError, OpenAIHTTP
from localroute.rungs.supervise import exit_reason


class SupervisedEngine(EngineProcess[C]):
    """An engine process (engine_process.py) that serves: admitting requests up to `max_in_flight` with
    `max_queue` more waiting (429 beyond), accounting each one's share of the engine's time, turning a
    lost connection into `engine_crashed` when the process died, and `brief`/`health`."""

    # -- what a subclass specialises for serving -----------------------------------------------------

    def _body(self, body: dict[str, Any]) -> dict[str, Any]:
        return body

    def _mapped(self, exc: APIError) -> APIError:  # an engine's error as the client should see it
        return exc

    def _accounting(self, share_s: float) -> EngineAccounting | None:
        """What `x_localroute` should carry for a request that had `share_s` seconds of the engine."""
        return None

    def _busy_message(self) -> str:
        return (
            f"Model '{self.name}' is busy: {self.max_in_flight} requests in flight and "
            f"{self.max_queue} waiting."
        )

    def _health_extra(self, pid: int | None) -> dict[str, Any]:
        return {}

    # -- serving -----------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _admit(self) -> AsyncIterator[OpenAIHTTP]:
        if self.unavailable is not None:
            raise EngineUnavailableError(f"Model '{self.name}' is unavailable here: {self.last_error}.")
        if self._admitted >= self.max_in_flight + self.max_queue:
            raise OverloadedError(self._busy_message(), headers={"Retry-After": "1"})
        self._admitted += 1
        self.last_used = self.idle_since = time.monotonic()
        try:
            async with self._slots:
                if not self._ready():
                    await self.start()
                assert self._http is not None
                self.last_used = self.idle_since = time.monotonic()
                yield self._http
        finally:
            self._admitted -= 1
            self.last_used = self.idle_since = time.monotonic()
            if self._placement is not None:
                self._placement.notify()

    async def _lost(self) -> EngineUnavailableError:
        """The connection broke: find out whether the process died, and say so."""
        proc = self._proc
        if proc is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), 1.0)
        if proc is not None and proc.returncode is not None:
            self._crashed(proc)
            why = exit_reason(proc.returncode)
            return EngineUnavailableError(
                f"Model '{self.name}' crashed ({why}) while serving this request; "
                "it will be restarted on the next request.",
                code="engine_crashed",
            )
        if not self._supervised() and self.state == "ready":  # re-checked on the next request
            self.state, self.last_error = "failed", f"connection to the {self.noun} lost"
            self.log.warning("%s %s: connection to its %s lost", self.label, self.name, self.noun)
        return EngineUnavailableError(f"The connection to model '{self.name}' was lost.")

    async def complete(self, body: dict[str, Any]) -> ChatCompletion:
        return cast(ChatCompletion, await self._served(lambda http: http.complete(self._body(body))))

    async def _served(self, send: Callable[[OpenAIHTTP], Awaitable[Any]]) -> Any:
        """One non-streamed call: admitted, its share of the engine's time accounted, errors mapped."""
        async with self._admit() as http:
            mark = self._share.enter()
            try:
                result = await send(http)
            except ConnectionLostError:
                raise await self._lost() from None
            except APIError as exc:
                raise self._mapped(exc) from None
            finally:
                share = self._share.leave(mark)
            self.served += 1
            if (accounting := self._accounting(share)) is not None:
                result["x_localroute"] = accounting
            return result

    async def stream(self, body: dict[str, Any]) -> AsyncGenerator[ChatCompletionChunk, None]:
        async with self._admit() as http, contextlib.aclosing(http.stream(self._body(body))) as chunks:
            mark: float | None = self._share.enter()
            try:
                async for chunk in chunks:
                    if mark is not None and chunk.get("usage") and not chunk.get("choices"):
                        # The usage chunk comes last: the request's share of the engine is known now.
                        accounting = self._accounting(self._share.leave(mark))
                        mark = None
                        if accounting is not None:
                            chunk["x_localroute"] = accounting
                    elif mark is not None and chunk.get("choices") and "x_localroute" not in chunk:
                        # Running accounting: what a stream cut before its usage chunk is charged.
                        if (running := self._accounting(self._share.so_far(mark))) is not None:
                            chunk["x_localroute"] = running
                    yield chunk
            except ConnectionLostError:
                raise await self._lost() from None
            except APIError as exc:
                raise self._mapped(exc) from None
            finally:
                if mark is not None:
                    self._share.leave(mark)
            self.served += 1

    def _state(self) -> EngineState:
        dead = self._supervised() and self.state == "ready" and not self._alive()  # before the watcher saw it
        return "crashed" if dead else self.state

    def brief(self) -> Brief:
        return Brief(self._state(), local=True, load_seconds=self.load_seconds)

    def health(self) -> EngineHealth:
        pid = self._proc.pid if self._proc is not None and self._alive() else None
        # Cast: `EngineHealth` is open (each engine adds keys), which mypy cannot express yet.
        return cast(
            EngineHealth,
            {
                "state": self._state(),
                "engine": self.kind,
                "tier": self.cfg.tier,
                "n_ctx": self.cfg.n_ctx,
                "pid": pid,
                "in_flight": self._admitted,
                "queued": max(self._admitted - self.max_in_flight, 0),
                "max_queue": self.max_queue,
                "served": self.served,
                "restarts": self.restarts,
                "load_seconds": None if self.load_seconds is None else round(self.load_seconds, 3),
                "last_error": self.last_error,
                # Seconds until a failed load is tried again (0: the next request tries it). Rounded
                # up: 0.04 s left must not read as 0, or a client that waits for 0 is still refused.
                "retry_in_s": math.ceil(max(0.0, self._retry_at - time.monotonic()) * 10) / 10
                if self.state == "failed"
                else 0,
                **self._health_extra(pid),
            },
        )
