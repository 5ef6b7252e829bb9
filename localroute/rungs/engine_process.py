"""The process half of a supervised engine (supervisor.py adds the serving half): one start at a time
(`start` -> `_load`), waiting for the health check, keeping the process's last output lines, noticing a
crash, backing off after failed loads, stopping the process group, and, under a `Placement`
(host/lifecycle.py), reserving memory before loading and releasing it when stopped.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import math
import signal
import time
from typing import ClassVar, Generic, NoReturn, TypeVar

import anyio
import httpx

from localroute.config.models import LlamaCppModel, VllmModel
from localroute.errors import EngineUnavailableError
from localroute.host.lifecycle import Placement
from localroute.host.resources import Footprint
from localroute.protocol.wire import EngineState
from localroute.rungs.openai_http import OpenAIHTTP
from localroute.rungs.supervise import TimeShare, exit_reason, poll_health, sanitize, signal_group

C = TypeVar("C", LlamaCppModel, VllmModel)  # what the supervisor reads: name, tier, n_ctx, timeouts


class EngineProcess(Generic[C]):
    """An engine process started on first use, health-checked, restarted on the next request after it
    dies, and stopped with its process group. `unavailable` is why it can never run here, if so."""

    kind: ClassVar[str]  # /health's `engine`
    label: ClassVar[str]  # how log lines name it: "engine", "vllm model"
    noun: ClassVar[str]  # what its process is: "worker", "server"
    log: ClassVar[logging.Logger]
    STOP_GRACE_S: ClassVar[float] = 5.0  # SIGTERM, then SIGKILL
    HEALTH_EVERY_S: ClassVar[float] = 0.05
    OUTPUT_LINES: ClassVar[int] = 20  # the last lines of its output kept: the reason of a failed load
    # A load that keeps failing is retried after 1, 2, 4, ... 60 s; meanwhile requests get a fast 503.
    BACKOFF_FIRST_S: ClassVar[float] = 1.0
    BACKOFF_MAX_S: ClassVar[float] = 60.0
    LINE_CHARS: ClassVar[int] = 500

    def __init__(self, cfg: C, *, max_in_flight: int, max_queue: int, unavailable: str | None = None) -> None:
        self.name = cfg.name
        self.cfg: C = cfg
        self.unavailable = unavailable
        self.state: EngineState = "unavailable" if unavailable else "stopped"
        self.last_error = unavailable
        self.served = 0
        self.restarts = 0
        self.load_seconds: float | None = None
        self.max_in_flight = max_in_flight
        self.max_queue = max_queue
        self.last_used = 0.0  # time.monotonic() of the last request's start or end; 0: never
        self.idle_since = 0.0  # ... or of the load: what the idle TTL and LRU eviction count from
        self._placement: Placement | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._client: httpx.AsyncClient | None = None
        self._http: OpenAIHTTP | None = None
        self._output: collections.deque[str] = collections.deque(maxlen=self.OUTPUT_LINES)
        self._watcher: asyncio.Task[None] | None = None
        self._start_lock = asyncio.Lock()
        self._slots = asyncio.Semaphore(max_in_flight)
        self._admitted = 0  # being served + waiting
        self._share = TimeShare()  # each request's share of the engine's time, for its cost
        self._attempts = 0
        self._closing = False
        self._failures = 0  # failed loads in a row
        self._retry_at = 0.0  # time.monotonic() before which no new load is tried

    # -- what a subclass specialises ---------------------------------------------------------------

    async def _load(self) -> None:
        """Start (or reach) the engine and wait until it is healthy; raise an APIError if it cannot."""
        raise NotImplementedError

    def _supervised(self) -> bool:  # it runs a process of ours, not a server someone else runs
        return True

    def _crashed_now(self, proc: asyncio.subprocess.Process) -> None:  # ended unasked: count a restart?
        pass

    def _stopped(self) -> None:  # the process is gone: clean up what it left (a socket file)
        pass

    # -- Managed, for the placement ----------------------------------------------------------------

    def attach(self, placement: Placement) -> None:
        self._placement = placement

    def footprint(self) -> Footprint | None:
        return None

    def busy(self) -> bool:
        return self._admitted > 0 or self._start_lock.locked()

    def idle_ttl(self) -> float | None:
        return self.cfg.idle_ttl_s

    async def unload(self, reason: str) -> bool:
        """Stop the process unless a request or a load is under way; its memory returns to the OS."""
        if self.busy():
            return False
        async with self._start_lock:  # free, so taken at once: nothing slips in between
            self.state = "stopped"
            await self._stop_process()
        self._log_unload(reason)
        return True

    def _log_unload(self, reason: str) -> None:
        self.log.info("%s %s stopped: %s", self.label, self.name, reason)

    # -- lifecycle ---------------------------------------------------------------------------------

    def _alive(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    def _ready(self) -> bool:
        if self.state != "ready" or self._http is None:
            return False
        return not self._supervised() or self._alive()

    async def start(self) -> None:
        """Make the engine ready. Idempotent; an unavailable rung stays so without a word (it was
        logged once when built); a start queued behind one that failed fails with it."""
        if self.unavailable is not None:
            return
        attempt = self._attempts
        async with self._start_lock:
            if self._ready():
                return
            if self._closing:
                raise EngineUnavailableError(f"Model '{self.name}' is shutting down.")
            if self._attempts != attempt and self.state == "failed":
                raise EngineUnavailableError(f"Model '{self.name}' failed to start; see the server log.")
            wait = self._retry_at - time.monotonic()
            if self.state == "failed" and wait > 0:  # backing off: no process is started for this
                raise EngineUnavailableError(
                    f"Model '{self.name}' failed to start; the next attempt is in {math.ceil(wait)} s.",
                    headers={"Retry-After": str(math.ceil(wait))},
                )
            self._attempts += 1
            try:
                await self._load()
            except BaseException:
                # A failed or abandoned load holds no memory and no reservation; shielded, because a
                # cancelled request must not leave a half-loaded process behind.
                with anyio.CancelScope(shield=True):
                    await self._stop_process()
                raise

    async def _reserve(self) -> None:
        """Ask the placement for room before loading; a refusal leaves the engine stopped."""
        if self._placement is None:
            return
        try:  # a queued load waits here, within the time a load may take
            await self._placement.admit(self, self.cfg.load_timeout_s)
        except EngineUnavailableError as exc:
            self.state, self.last_error = "stopped", exc.message
            raise

    def _supervise(self, proc: asyncio.subprocess.Process) -> None:
        """Own `proc` from now on: keep its last output lines and notice when it dies."""
        self._proc = proc
        self._watcher = asyncio.create_task(self._watch(proc))

    async def _watch(self, proc: asyncio.subprocess.Process) -> None:
        out = proc.stdout if proc.stdout is not None else proc.stderr
        if out is not None:
            async for raw in out:
                line = raw.decode("utf-8", "replace").rstrip()
                if line:
                    self._output.append(line[: self.LINE_CHARS])
                    self.log.debug("%s %s: %s", self.label, self.name, line)
        await proc.wait()
        self._crashed(proc)

    def _crashed(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.returncode is not None
        if self._proc is not proc or self.state != "ready":
            return  # stopped on purpose, or a failed load (which says so itself)
        why = exit_reason(proc.returncode)
        self.state, self.last_error = "crashed", f"{self.noun} {why}"
        self._crashed_now(proc)
        self.log.warning(
            "%s %s %s %s; restarting it on the next request", self.label, self.name, self.noun, why
        )

    async def _wait_healthy(self, proc: asyncio.subprocess.Process, t0: float) -> None:
        assert self._client is not None
        left = self.cfg.load_timeout_s - (time.monotonic() - t0)
        outcome = await poll_health(self._client, proc, left, self.HEALTH_EVERY_S)
        if outcome == "ready":
            self._loaded(t0)
            return
        if outcome == "exited":
            assert proc.returncode is not None
            if self._watcher is not None:  # its last lines, usually the reason
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(self._watcher), 2.0)
            why = exit_reason(proc.returncode)
            last = self._output[-1] if self._output else "no output"
            await self._stop_process()  # its own children may outlive it
            self._fail(f"{self.noun} {why} during load: {last}")
        await self._stop_process()
        self._fail(f"{self.noun} not healthy after {self.cfg.load_timeout_s:g}s (load_timeout_s); stopped it")

    def _loaded(self, t0: float) -> None:
        self.load_seconds = time.monotonic() - t0
        self.idle_since = time.monotonic()
        self.state, self.last_error = "ready", None
        self._failures, self._retry_at = 0, 0.0

    def _fail(self, reason: str) -> NoReturn:
        """Record a failed start (the log gets the whole reason, /health one without paths) and raise
        the client's 503."""
        clean = sanitize(reason)
        if self.last_error != clean:  # one line per distinct failure, not one per retry
            self.log.warning("%s %s failed to start: %s", self.label, self.name, reason)
        self.state, self.last_error = "failed", clean
        self._failures += 1
        backoff = min(self.BACKOFF_MAX_S, self.BACKOFF_FIRST_S * 2 ** min(self._failures - 1, 16))
        self._retry_at = time.monotonic() + backoff
        raise EngineUnavailableError(
            f"Model '{self.name}' failed to start; see the server log.",
            headers={"Retry-After": str(math.ceil(backoff))},
        )

    async def aclose(self) -> None:
        self._closing = True
        proc = self._proc
        if proc is not None and proc.returncode is None and self.state == "starting":
            signal_group(proc.pid, signal.SIGTERM)  # a load in progress ends now, not at load_timeout_s
        async with self._start_lock:
            await self._stop_process()
            await self._close_client()
            if self.state != "unavailable":
                self.state = "stopped"
        self._closing = False  # a later start() (a reload after eviction) is allowed again

    async def _close_client(self) -> None:
        client, self._client, self._http = self._client, None, None
        if client is not None:
            await client.aclose()

    async def _stop_process(self) -> None:
        proc, self._proc = self._proc, None
        try:
            if self._supervised():
                await self._close_client()
            if proc is not None:
                await self._terminate(proc)
        finally:
            self._stopped()
            if self._placement is not None:
                self._placement.release(self.name)

    async def _terminate(self, proc: asyncio.subprocess.Process) -> None:
        if proc.returncode is None:
            signal_group(proc.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), self.STOP_GRACE_S)
            except TimeoutError:
                self.log.warning("%s %s %s ignored SIGTERM; killing it", self.label, self.name, self.noun)
        signal_group(proc.pid, signal.SIGKILL)  # whatever of its group is left
        await proc.wait()
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(watcher, 2.0)
