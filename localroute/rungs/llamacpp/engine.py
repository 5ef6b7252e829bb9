"""A llama.cpp model as a supervised worker process, implementing the Backend protocol.

The gateway talks to the worker over HTTP on a Unix socket in a private (0700) runtime folder: no TCP
port to race for, and no other local user can reach the model. The worker is started on first use (or
at startup when `preload`), health-checked, and restarted on the next request after it dies. Under a
`Placement` it asks for room in the memory budget before loading, and is stopped when idle.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import math
import os
import signal
import sys
import time
from collections.abc import AsyncGenerator, AsyncIterator
from pathlib import Path
from typing import Any, NoReturn

import anyio
import httpx

from localroute.config.models import LlamaCppModel
from localroute.config.schema import Config
from localroute.errors import (
    EngineUnavailableError,
    InvalidModelFileError,
    ModelCheckInconclusiveError,
    OverloadedError,
)
from localroute.host import gguf, resources
from localroute.host.lifecycle import Placement
from localroute.host.resources import Footprint, MiB
from localroute.protocol.backend import Brief, EngineState
from localroute.rungs.openai_http import ConnectionLostError, OpenAIHTTP
from localroute.rungs.supervise import exit_reason, poll_health, signal_group

log = logging.getLogger("localroute.engine")
INCONCLUSIVE_RETRY_S = 60.0  # a file check that hung or died is tried again after this long


class LlamaCppEngine:
    """One GGUF model served by one worker process, one request at a time, behind a bounded queue."""

    def __init__(self, cfg: LlamaCppModel, model_path: Path, runtime_dir: Path) -> None:
        self.name = cfg.name
        self.cfg = cfg
        self.model_path = model_path
        self.socket = runtime_dir / f"{cfg.name}.sock"
        self.state: EngineState = "stopped"
        self.restarts = 0
        self.served = 0
        self.last_error: str | None = None
        self.load_seconds: float | None = None
        self.rss_at_load: int | None = None
        self.last_used = 0.0  # time.monotonic() of the last request's start or end; 0: never
        self.idle_since = 0.0  # ... or of the load: what the idle TTL and LRU eviction count from
        self._footprint: Footprint | None = None
        self._placement: Placement | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._http: OpenAIHTTP | None = None
        self._client: httpx.AsyncClient | None = None
        self._stderr: collections.deque[str] = collections.deque(maxlen=20)
        self._start_lock = asyncio.Lock()
        self._slot = asyncio.Semaphore(1)
        self._admitted = 0  # being served + waiting
        self._starts = 0
        self._stderr_task: asyncio.Task[None] | None = None
        # (inode, size, mtime) of the model file last checked, and why it failed (None: it passed)
        # (file identity, why it was rejected or None, when to check again)
        self._checked: tuple[tuple[int, int, int], str | None, float] | None = None

    # -- lifecycle -------------------------------------------------------------------------------

    def attach(self, placement: Placement) -> None:
        self._placement = placement

    def footprint(self) -> Footprint | None:
        if self._footprint is None and self.model_path.is_file():
            self._footprint = resources.estimate_gguf(self.model_path, self.cfg.n_ctx, self.cfg.n_batch)
        return self._footprint

    def busy(self) -> bool:
        return self._admitted > 0 or self._start_lock.locked()

    def idle_ttl(self) -> float | None:
        return self.cfg.idle_ttl_s

    async def start(self) -> None:
        async with self._start_lock:
            if self._proc is not None and self._proc.returncode is None and self.state == "ready":
                return
            await self._stop_process()
            if not self.model_path.is_file():
                self.state = "unavailable"
                self.last_error = "model file missing; run `localroute pull`"
                raise EngineUnavailableError(
                    f"Model '{self.name}' is not downloaded; the operator must run `localroute pull`.",
                    code="model_not_downloaded",
                )
            if self._placement is not None:
                try:  # a queued load waits here, within the time a load may take
                    await self._placement.admit(self, self.cfg.load_timeout_s)
                except EngineUnavailableError as exc:
                    self.state, self.last_error = "stopped", exc.message
                    raise
            try:
                await self._spawn()
            except BaseException:
                # A failed or abandoned load holds no memory and no reservation; shielded, because a
                # cancelled request must not leave a half-loaded worker behind.
                with anyio.CancelScope(shield=True):
                    await self._stop_process()
                raise

    async def unload(self, reason: str) -> bool:
        """Stop the worker unless a request or a load is under way; its memory returns to the OS."""
        if self.busy():
            return False
        async with self._start_lock:  # free, so taken at once: nothing slips in between
            self.state = "stopped"
            await self._stop_process()
        log.info("engine %s stopped: %s", self.name, reason)
        return True

    async def _check_file(self) -> None:
        """The GGUF passes our structural check (`host.gguf`) before llama.cpp parses it; checked once
        per version of the file. A failure names the problem in the log and /health, never the path."""
        try:
            st = self.model_path.stat()
        except OSError as exc:
            self._reject(f"cannot read the file: {exc.strerror}")
        stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
        now = time.monotonic()
        if self._checked is None or self._checked[0] != stamp or now >= self._checked[2]:
            try:
                await gguf.verify(self.model_path)
                self._checked = (stamp, None, math.inf)
            except ModelCheckInconclusiveError as exc:  # a hung or killed checker: try again soon
                self._checked = (stamp, str(exc), now + INCONCLUSIVE_RETRY_S)
            except InvalidModelFileError as exc:  # the file's own fault: kept until the file changes
                self._checked = (stamp, str(exc), math.inf)
        if self._checked[1] is not None:
            self._reject(self._checked[1])

    def _reject(self, reason: str) -> NoReturn:
        self.state, self.last_error = "failed", f"model file rejected: {reason}"
        log.warning("engine %s: model file rejected: %s", self.name, reason)
        raise EngineUnavailableError(
            f"Model '{self.name}' failed its file check; see the server log.", code="model_file_invalid"
        )

    async def _spawn(self) -> None:
        self.state = "starting"
        await self._check_file()
        self._stderr.clear()
        with contextlib.suppress(FileNotFoundError):
            self.socket.unlink()
        cmd = [
            sys.executable, "-m", "localroute.rungs.llamacpp.worker",
            "--socket", str(self.socket), "--model-path", str(self.model_path),
            "--name", self.name, "--n-ctx", str(self.cfg.n_ctx),
            "--n-batch", str(self.cfg.n_batch), "--parent-pid", str(os.getpid()),
        ]  # fmt: skip
        if self.cfg.threads:
            cmd += ["--threads", str(self.cfg.threads)]
        if not self.cfg.cache_prompt:
            cmd.append("--no-cache-prompt")
        if self.cfg.chat_format:
            cmd += ["--chat-format", self.cfg.chat_format]
        t0 = time.monotonic()
        self._proc = await asyncio.create_subprocess_exec(
            *cmd,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,  # Ctrl-C reaches the gateway, which stops us in order
        )
        if self._starts:
            self.restarts += 1
        self._starts += 1
        self._stderr_task = asyncio.create_task(self._drain_stderr(self._proc))
        transport = httpx.AsyncHTTPTransport(uds=str(self.socket))
        self._client = httpx.AsyncClient(
            transport=transport,
            base_url="http://engine",
            timeout=httpx.Timeout(self.cfg.request_timeout_s, connect=5.0, pool=None),
        )
        self._http = OpenAIHTTP(self._client)
        await self._wait_healthy(t0)
        self.load_seconds = time.monotonic() - t0
        self.idle_since = time.monotonic()
        self.state = "ready"
        self.last_error = None
        self.rss_at_load = resources.rss(self._proc.pid)
        fp = self.footprint()
        log.info(
            "engine %s ready in %.2fs (pid %d): RSS %s MiB, estimated %s MiB",
            self.name, self.load_seconds, self._proc.pid, _mib(self.rss_at_load), fp and fp.total_mib,
        )  # fmt: skip

    async def _wait_healthy(self, t0: float) -> None:
        assert self._proc is not None and self._client is not None
        left = self.cfg.load_timeout_s - (time.monotonic() - t0)
        outcome = await poll_health(self._client, self._proc, left, 0.05)
        if outcome == "exited":
            await asyncio.sleep(0.05)  # let stderr drain
            assert self._proc.returncode is not None
            reason = self._stderr[-1] if self._stderr else exit_reason(self._proc.returncode)
            self._fail(f"worker exited during load: {reason}")
        if outcome == "timeout":
            await self._stop_process()
            self._fail(f"worker not healthy after {self.cfg.load_timeout_s:.0f}s")

    def _fail(self, reason: str) -> None:
        self.state = "failed"
        self.last_error = reason
        log.warning("engine %s failed to start: %s", self.name, reason)
        raise EngineUnavailableError(f"Model '{self.name}' failed to start; see the server log.")

    async def _drain_stderr(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stderr is not None
        async for raw in proc.stderr:
            line = raw.decode("utf-8", "replace").rstrip()
            if line:
                self._stderr.append(line[:500])

    async def aclose(self) -> None:
        async with self._start_lock:
            await self._stop_process()
            self.state = "stopped"

    async def _stop_process(self) -> None:
        proc, self._proc = self._proc, None
        try:
            await self._reap(proc)
        finally:
            if self._placement is not None:
                self._placement.release(self.name)

    async def _reap(self, proc: asyncio.subprocess.Process | None) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client, self._http = None, None
        if proc is not None and proc.returncode is None:
            signal_group(proc.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 5.0)
            except TimeoutError:
                signal_group(proc.pid, signal.SIGKILL)
                await proc.wait()
        with contextlib.suppress(FileNotFoundError):
            self.socket.unlink()

    # -- serving ---------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _admit(self) -> AsyncIterator[OpenAIHTTP]:
        if self._admitted >= 1 + self.cfg.max_queue:
            raise OverloadedError(
                f"Model '{self.name}' is busy: its queue of {self.cfg.max_queue} is full.",
                headers={"Retry-After": "1"},
            )
        self._admitted += 1
        self.last_used = self.idle_since = time.monotonic()
        try:
            async with self._slot:
                if self._proc is None or self._proc.returncode is not None or self.state != "ready":
                    await self.start()
                assert self._http is not None
                yield self._http
        finally:
            self._admitted -= 1
            self.last_used = self.idle_since = time.monotonic()
            if self._placement is not None:
                self._placement.notify()

    async def _lost(self) -> EngineUnavailableError:
        """The connection broke: find out whether the worker died, and say so."""
        proc = self._proc
        if proc is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), 1.0)
        if proc is not None and proc.returncode is not None:
            why = exit_reason(proc.returncode)
            self.state = "crashed"
            self.last_error = f"worker {why}"
            log.warning("engine %s worker %s; restarting on next request", self.name, why)
            return EngineUnavailableError(
                f"Model '{self.name}' crashed ({why}) while serving this request; "
                "it will be restarted on the next request.",
                code="engine_crashed",
            )
        return EngineUnavailableError(f"The connection to model '{self.name}' was lost.")

    async def complete(self, body: dict[str, Any]) -> dict[str, Any]:
        async with self._admit() as http:
            try:
                result = await http.complete(body)
            except ConnectionLostError:
                raise await self._lost() from None
            self.served += 1
            return result

    async def stream(self, body: dict[str, Any]) -> AsyncGenerator[dict[str, Any], None]:
        async with self._admit() as http, contextlib.aclosing(http.stream(body)) as chunks:
            try:
                async for chunk in chunks:
                    yield chunk
            except ConnectionLostError:
                raise await self._lost() from None
            self.served += 1

    def _state(self) -> EngineState:
        proc = self._proc
        alive = proc is not None and proc.returncode is None
        return self.state if alive or self.state != "ready" else "crashed"

    def brief(self) -> Brief:
        return Brief(self._state(), local=True, load_seconds=self.load_seconds)

    def health(self) -> dict[str, Any]:
        proc = self._proc
        alive = proc is not None and proc.returncode is None
        fp = self._footprint
        return {
            "state": self._state(),
            "engine": "llama_cpp",
            "tier": self.cfg.tier,
            "n_ctx": self.cfg.n_ctx,
            "pid": proc.pid if alive and proc is not None else None,
            "in_flight": self._admitted,
            "queued": max(self._admitted - 1, 0),
            "max_queue": self.cfg.max_queue,
            "served": self.served,
            "starts": self._starts,
            "restarts": self.restarts,
            "load_seconds": None if self.load_seconds is None else round(self.load_seconds, 3),
            "last_used_s_ago": round(time.monotonic() - self.last_used, 1) if self.last_used else None,
            "idle_ttl_s": self.cfg.idle_ttl_s,
            "estimated_mib": None if fp is None else fp.total_mib,
            "estimate_method": None if fp is None else fp.method,
            "rss_mib": _mib(resources.rss(proc.pid)) if alive and proc is not None else None,
            "rss_at_load_mib": _mib(self.rss_at_load),
            "last_error": self.last_error,
        }


def from_config(config: Config, model: LlamaCppModel, runtime_dir: Path) -> LlamaCppEngine:
    return LlamaCppEngine(model, config.model_path(model), runtime_dir)


def _mib(n: int | None) -> int | None:
    return None if n is None else round(n / MiB)
