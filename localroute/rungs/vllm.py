"""The vLLM GPU rung: `vllm serve` launched and supervised by localroute (`launch = true`), or an existing
vLLM server at `url`; called over vLLM's OpenAI API, logprobs included. vLLM is never imported: the rung
runs the `vllm` executable (`pip install 'localroute[gpu]'`); without it, or without an NVIDIA GPU, the
rung is `unavailable` from startup, said in one log line, and the router routes around it. A launched
server starts on first use (or at startup when `preload`), restarts on the next request after it dies,
stops after `idle_ttl_s` idle, and is stopped with its process group when the gateway shuts down.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import re
import shutil
import signal
import socket
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from pathlib import Path
from typing import Any, Literal, NoReturn

import httpx

from localroute.config.models import VllmModel
from localroute.config.schema import Config
from localroute.errors import (
    APIError,
    ContextLengthExceededError,
    EngineUnavailableError,
    InvalidRequestError,
    NotFoundError,
    OverloadedError,
    UpstreamError,
)
from localroute.host import resources
from localroute.protocol.backend import Brief, EngineState
from localroute.rungs.openai_http import ConnectionLostError, OpenAIHTTP
from localroute.rungs.supervise import TimeShare, die_with_parent, exit_reason, poll_health, signal_group

log = logging.getLogger("localroute.vllm")

INSTALL_HINT = "pip install 'localroute[gpu]'"
# An override of the GPU probe, for tests (a stand-in `vllm` on a box without a GPU) and for operators
# whose driver the probe cannot see: "1" assumes enough GPUs, "0" turns every launched vLLM rung off.
ASSUME_GPU_ENV = "LOCALROUTE_ASSUME_GPU"
MAX_IN_FLIGHT = 64  # vLLM batches concurrent requests: many in flight at once is its normal load
MAX_QUEUE = 256  # requests waiting beyond those; more get 429
STOP_GRACE_S = 10.0  # SIGTERM, then SIGKILL: vLLM frees GPU memory on a clean exit
_CONTEXT = re.compile(r"maximum context length|longer than the maximum model length", re.IGNORECASE)
_ABS_PATH = re.compile(r"(?<![\w:/.~-])/(?:[^\s'\"/:,;()\[\]{}<>]+/)+([^\s'\"/:,;()\[\]{}<>]*)")

Mode = Literal["launch", "url"]


def sanitize(text: str) -> str:
    """`text` without absolute paths (each becomes `…/<last part>`), for what clients can read."""
    return _ABS_PATH.sub(lambda m: "…/" + m.group(1), text)[:500]


def gpu_problem(need: int = 1) -> str | None:
    """Why fewer than `need` NVIDIA GPUs are usable here, or None. Honours `LOCALROUTE_ASSUME_GPU`."""
    override = os.environ.get(ASSUME_GPU_ENV, "").strip()
    if override == "1":
        return None
    if override == "0":
        return f"no NVIDIA GPU ({ASSUME_GPU_ENV}=0)"
    count = _visible_gpus()
    hidden = os.environ.get("CUDA_VISIBLE_DEVICES")
    if hidden is not None:  # set, even empty: only the listed devices exist for CUDA
        count = min(count, len([d for d in hidden.split(",") if d.strip() and d.strip() != "-1"]))
    if count == 0:
        return "no NVIDIA GPU visible"
    if count < need:
        return f"tensor_parallel_size {need} needs {need} GPUs, {count} visible"
    return None


def _visible_gpus() -> int:
    with contextlib.suppress(OSError):  # the driver lists one folder per GPU, containers included
        if found := len(list(Path("/proc/driver/nvidia/gpus").iterdir())):
            return found
    return len(resources.gpus(timeout=10))


def _bind(port: int = 0) -> int | None:
    """A free loopback port (`port`, or any when 0), or None when `port` is taken."""
    with socket.socket() as s, contextlib.suppress(OSError):
        s.bind(("127.0.0.1", port))
        return int(s.getsockname()[1])
    return None


def _root(url: str) -> str:
    """The server root of a vLLM URL given with or without its `/v1`."""
    url = url.rstrip("/")
    return url[: -len("/v1")] if url.endswith("/v1") else url


def _display(url: str) -> str:
    """`url` without any user:password part, for logs and /health."""
    return re.sub(r"^([a-z]+://)[^/@]*@", r"\1", url)


class VllmEngine:
    """One vLLM server behind a bounded admission: up to `max_in_flight` requests at once (vLLM batches
    them), `max_queue` more waiting, 429 beyond. `unavailable` is why it cannot run here, if it cannot."""

    def __init__(
        self,
        cfg: VllmModel,
        *,
        cwd: Path,
        executable: str | None = None,
        unavailable: str | None = None,
        max_in_flight: int = MAX_IN_FLIGHT,
        max_queue: int = MAX_QUEUE,
    ) -> None:
        self.name = cfg.name
        self.cfg = cfg
        self.mode: Mode = "url" if cfg.url is not None else "launch"
        self.cwd = cwd  # `vllm serve` runs here, so a relative model folder resolves like the config's paths
        self.executable = executable
        self.state: EngineState = "unavailable" if unavailable else "stopped"
        self.last_error = unavailable
        self.served = 0
        self.loads = 0
        self.restarts = 0
        self.load_seconds: float | None = None
        self.max_in_flight = max_in_flight
        self.max_queue = max_queue
        self._root = _root(cfg.url) if cfg.url is not None else None
        self._port: int | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._client: httpx.AsyncClient | None = None
        self._http: OpenAIHTTP | None = None
        self._output: collections.deque[str] = collections.deque(maxlen=50)
        self._start_lock = asyncio.Lock()
        self._slots = asyncio.Semaphore(max_in_flight)
        self._admitted = 0
        self._share = TimeShare()  # GPU time per request, for its cost
        self._attempts = 0
        self._unplanned = False  # the last server ended without being asked to: the next start is a restart
        self._closing = False
        self._last_used = time.monotonic()
        self._watcher: asyncio.Task[None] | None = None
        self._idle_task: asyncio.Task[None] | None = None

    # -- lifecycle -------------------------------------------------------------------------------

    def _ready(self) -> bool:
        if self.state != "ready" or self._http is None:
            return False
        return self.mode == "url" or (self._proc is not None and self._proc.returncode is None)

    async def start(self) -> None:
        """Launch (or, for `url`, reach) the server and wait until it is healthy. An unavailable rung
        stays so without a word: it was logged once when built."""
        if self.state == "unavailable":
            return
        attempt = self._attempts
        async with self._start_lock:
            if self._ready():
                return
            if self._closing:
                raise EngineUnavailableError(f"Model '{self.name}' is shutting down.")
            if self._attempts != attempt and self.state == "failed":  # we queued behind a failed start
                raise EngineUnavailableError(f"Model '{self.name}' failed to start; see the server log.")
            self._attempts += 1
            if self.mode == "url":
                await self._connect()
            else:
                await self._launch()

    def _new_client(self, root: str) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=root,
            timeout=httpx.Timeout(self.cfg.request_timeout_s, connect=5.0, pool=None),
            limits=httpx.Limits(max_connections=self.max_in_flight, max_keepalive_connections=16),
            trust_env=self.mode == "url",  # a launched server is on loopback: never through a proxy
        )

    async def _connect(self) -> None:
        assert self._root is not None
        if self._client is None:
            self._client = self._new_client(self._root)
            self._http = OpenAIHTTP(self._client)
        self.state = "starting"
        t0 = time.monotonic()
        where = _display(self._root)
        try:
            r = await self._client.get("/health", timeout=5.0)
            problem = None if r.status_code == 200 else f"answered GET /health with {r.status_code}"
        except (httpx.TransportError, OSError) as exc:
            problem = f"is unreachable ({exc.__class__.__name__})"
        if problem is not None:
            self._fail(f"the vLLM server at {where} {problem}")
        self.load_seconds = time.monotonic() - t0
        self.state, self.last_error = "ready", None
        log.info("vllm model %s: server at %s is healthy", self.name, where)

    async def _launch(self) -> None:
        await self._stop_process()
        assert self.executable is not None
        port = _bind(self.cfg.port or 0)
        if port is None:  # whatever holds it could answer our health check while our server fails
            self._fail(f"port {self.cfg.port} is already in use")
        cmd = [
            self.executable, "serve", self.cfg.model, "--host", "127.0.0.1", "--port", str(port),
            "--max-model-len", str(self.cfg.n_ctx),
            "--gpu-memory-utilization", str(self.cfg.gpu_memory_utilization),
            "--tensor-parallel-size", str(self.cfg.tensor_parallel_size), *self.cfg.extra_args,
        ]  # fmt: skip
        self.state = "starting"
        self._output.clear()
        if self._unplanned:
            self.restarts += 1
            self._unplanned = False
        t0 = time.monotonic()
        try:
            proc = await asyncio.create_subprocess_exec(
                *cmd,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                cwd=self.cwd,
                start_new_session=True,  # Ctrl-C reaches the gateway, which stops the group in order
                preexec_fn=die_with_parent(signal.SIGTERM),
            )
        except OSError as exc:
            self._fail(f"cannot run `vllm`: {exc.strerror or exc.__class__.__name__}")
        self._proc, self._port = proc, port
        self.loads += 1
        self._watcher = asyncio.create_task(self._watch(proc))
        self._client = self._new_client(f"http://127.0.0.1:{port}")
        self._http = OpenAIHTTP(self._client)
        await self._wait_healthy(proc, t0)
        self.load_seconds = time.monotonic() - t0
        self.state, self.last_error = "ready", None
        self._last_used = time.monotonic()
        if self.cfg.idle_ttl_s is not None:
            self._idle_task = asyncio.create_task(self._idle(self.cfg.idle_ttl_s))
        log.info("vllm model %s ready in %.1fs (pid %d)", self.name, self.load_seconds, proc.pid)

    async def _wait_healthy(self, proc: asyncio.subprocess.Process, t0: float) -> None:
        assert self._client is not None
        left = self.cfg.load_timeout_s - (time.monotonic() - t0)
        outcome = await poll_health(self._client, proc, left, 0.2)
        if outcome == "ready":
            return
        if outcome == "exited":
            assert proc.returncode is not None
            if self._watcher is not None:  # its last lines, usually the reason
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(self._watcher), 2.0)
            why = exit_reason(proc.returncode)
            last = self._output[-1] if self._output else "no output"
            await self._stop_process()  # vLLM's own children may outlive it
            self._fail(f"server {why} during load: {last}")
        await self._stop_process()
        self._fail(f"server not healthy after {self.cfg.load_timeout_s:g}s (load_timeout_s); stopped it")

    def _fail(self, reason: str) -> NoReturn:
        """Record a failed start (the log gets the whole reason) and raise the client's 503. The next
        start counts as a restart."""
        clean = sanitize(reason)
        self._unplanned = True
        if self.last_error != clean:  # one line per distinct failure, not one per retry
            log.warning("vllm model %s failed to start: %s", self.name, reason)
        self.state, self.last_error = "failed", clean
        raise EngineUnavailableError(f"Model '{self.name}' failed to start; see the server log.")

    async def _watch(self, proc: asyncio.subprocess.Process) -> None:
        """Keep the server's last lines (vLLM logs to both streams) and notice when it dies."""
        assert proc.stdout is not None
        async for raw in proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip()
            if line:
                self._output.append(line[:1000])
                log.debug("vllm %s: %s", self.name, line)
        await proc.wait()
        self._crashed(proc)

    def _crashed(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.returncode is not None
        if self._proc is not proc or self.state != "ready":
            return  # stopped on purpose, or a failed load (which says so itself)
        why = exit_reason(proc.returncode)
        self.state, self.last_error, self._unplanned = "crashed", f"server {why}", True
        log.warning("vllm model %s server %s; restarting it on the next request", self.name, why)

    async def _idle(self, ttl: float) -> None:
        while True:
            await asyncio.sleep(max(self._last_used + ttl - time.monotonic(), 0.0) + 0.05)
            if self._admitted or time.monotonic() - self._last_used < ttl:
                continue
            async with self._start_lock:
                if not self._ready():
                    return
                if self._admitted or time.monotonic() - self._last_used < ttl:
                    continue
                log.info("vllm model %s idle for %gs: stopping its server", self.name, ttl)
                await self._stop_process()
                self.state = "stopped"
                return

    async def aclose(self) -> None:
        self._closing = True
        proc = self._proc
        if proc is not None and proc.returncode is None and self.state == "starting":
            signal_group(proc.pid, signal.SIGTERM)  # a load in progress ends now, not at load_timeout_s
        async with self._start_lock:
            await self._stop_process()
            if self._client is not None:
                await self._client.aclose()
                self._client, self._http = None, None
            if self.state != "unavailable":
                self.state = "stopped"
        self._closing = False  # a later start() (a reload after eviction) is allowed again

    async def _stop_process(self) -> None:
        proc, self._proc = self._proc, None
        idle, self._idle_task = self._idle_task, None
        if idle is not None and idle is not asyncio.current_task():
            idle.cancel()
        if self.mode == "launch" and self._client is not None:
            await self._client.aclose()
            self._client, self._http = None, None
        if proc is None:
            return
        if proc.returncode is None:
            signal_group(proc.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), STOP_GRACE_S)
            except TimeoutError:
                log.warning("vllm model %s server ignored SIGTERM; killing it", self.name)
        signal_group(proc.pid, signal.SIGKILL)  # whatever of its group is left (workers)
        await proc.wait()
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(watcher, 2.0)

    # -- serving ---------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _admit(self) -> AsyncIterator[OpenAIHTTP]:
        if self.state == "unavailable":
            raise EngineUnavailableError(f"Model '{self.name}' is unavailable here: {self.last_error}.")
        if self._admitted >= self.max_in_flight + self.max_queue:
            raise OverloadedError(
                f"Model '{self.name}' is busy: {self.max_in_flight} requests in flight and "
                f"{self.max_queue} waiting.",
                headers={"Retry-After": "1"},
            )
        self._admitted += 1
        try:
            async with self._slots:
                if not self._ready():
                    await self.start()
                assert self._http is not None
                self._last_used = time.monotonic()
                yield self._http
        finally:
            self._admitted -= 1
            self._last_used = time.monotonic()

    def _body(self, body: dict[str, Any]) -> dict[str, Any]:
        return {**body, "model": self.cfg.model}  # vLLM serves its model under that name only

    def _mapped(self, exc: APIError) -> APIError:
        if isinstance(exc, NotFoundError):  # the server does not serve `model`: our config, not the client
            log.warning("vllm model %s: the server rejected model %r: %s", self.name, self.cfg.model, exc)
            return UpstreamError(
                f"The vLLM server behind '{self.name}' does not serve the configured model.",
                code="upstream_model_not_found",
            )
        if isinstance(exc, InvalidRequestError) and _CONTEXT.search(exc.message):
            return ContextLengthExceededError(exc.message, param="messages")
        return exc

    async def _lost(self) -> EngineUnavailableError:
        """The connection broke: find out whether the server died, and say so."""
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
        if self.mode == "url" and self.state == "ready":  # re-checked on the next request
            self.state, self.last_error = "failed", "connection to the server lost"
            log.warning("vllm model %s: connection to its server lost", self.name)
        return EngineUnavailableError(f"The connection to model '{self.name}' was lost.")

    def _gpu_seconds(self, share_s: float) -> dict[str, float]:
        return {"compute_s": round(share_s * self.cfg.tensor_parallel_size, 6)}

    async def complete(self, body: dict[str, Any]) -> dict[str, Any]:
        async with self._admit() as http:
            mark = self._share.enter()
            try:
                result = await http.complete(self._body(body))
            except ConnectionLostError:
                raise await self._lost() from None
            except APIError as exc:
                raise self._mapped(exc) from None
            finally:
                share = self._share.leave(mark)
            self.served += 1
            result["x_localroute"] = self._gpu_seconds(share)
            return result

    async def stream(self, body: dict[str, Any]) -> AsyncGenerator[dict[str, Any], None]:
        async with self._admit() as http, contextlib.aclosing(http.stream(self._body(body))) as chunks:
            mark: float | None = self._share.enter()
            try:
                async for chunk in chunks:
                    if mark is not None and chunk.get("usage") and not chunk.get("choices"):
                        # The usage chunk comes last: the request's GPU time is known now.
                        chunk["x_localroute"] = self._gpu_seconds(self._share.leave(mark))
                        mark = None
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
        proc = self._proc
        alive = proc is not None and proc.returncode is None
        dead = self.mode == "launch" and self.state == "ready" and not alive  # before the watcher saw it
        return "crashed" if dead else self.state

    def brief(self) -> Brief:
        return Brief(self._state(), local=True, load_seconds=self.load_seconds)

    def health(self) -> dict[str, Any]:
        proc = self._proc
        alive = proc is not None and proc.returncode is None
        return {
            "state": self._state(),
            "engine": "vllm",
            "tier": self.cfg.tier,
            "mode": self.mode,
            "model": self.cfg.model,
            "n_ctx": self.cfg.n_ctx,
            "pid": proc.pid if alive and proc is not None else None,
            "port": self._port if alive else None,
            "in_flight": self._admitted,
            "queued": max(self._admitted - self.max_in_flight, 0),
            "served": self.served,
            "loads": self.loads,
            "restarts": self.restarts,
            "load_seconds": None if self.load_seconds is None else round(self.load_seconds, 3),
            "last_error": self.last_error,
        }


def from_config(
    config: Config,
    model: VllmModel,
    runtime_dir: Path,
    *,
    which: Callable[[str], str | None] = shutil.which,
    gpu_probe: Callable[[int], str | None] = gpu_problem,
) -> VllmEngine:
    """Build the rung. A launched rung that cannot run on this box (no `vllm`, too few GPUs) is
    `unavailable`, and the log says why in one line."""
    if not model.launch:
        return VllmEngine(model, cwd=config.base_dir)
    executable = which("vllm")
    problems = [p for p in (gpu_probe(model.tensor_parallel_size),) if p]
    if executable is None:
        problems.append(f"no `vllm` executable on PATH ({INSTALL_HINT})")
    reason = "; ".join(problems) or None
    if reason is not None:
        log.warning("vllm model %s unavailable: %s", model.name, reason)
    return VllmEngine(model, cwd=config.base_dir, executable=executable, unavailable=reason)
