"""The vLLM GPU rung: `vllm serve` launched and supervised by localroute (`launch = true`), or an existing
vLLM server at `url`; called over vLLM's OpenAI API, logprobs included. vLLM is never imported: the rung
runs the `vllm` executable (`pip install 'localroute[gpu]'`); without it, or without an NVIDIA GPU, the
rung is `unavailable` from startup, said in one log line, and the router routes around it. A launched
server starts on first use (or at startup when `preload`), restarts on the next request after it dies,
is stopped by the placement's sweep after `idle_ttl_s` idle, and is stopped with its process group when
the gateway shuts down. The supervision is rungs/supervisor.py's; this module says how vLLM is launched,
reached, and what its answers carry (GPU-seconds per request, vLLM's errors as the client's).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import shutil
import signal
import socket
import time
from collections.abc import AsyncGenerator, Callable
from pathlib import Path
from typing import Any, ClassVar, Literal, NoReturn

import httpx

from localroute.config.models import VllmModel
from localroute.config.schema import Config
from localroute.errors import (
    APIError,
    ContextLengthExceededError,
    InvalidRequestError,
    NotFoundError,
    UpstreamError,
)
from localroute.host import resources
from localroute.privacy.guard import EgressGuard, PrivacyViolationError
from localroute.privacy.trust import TrustedNetworks, mark_untrusted, ray_problem, url_problem
from localroute.protocol.wire import ChatCompletion, ChatCompletionChunk, EngineAccounting
from localroute.rungs.openai_http import OpenAIHTTP
from localroute.rungs.supervise import die_with_parent, sanitize
from localroute.rungs.supervisor import SupervisedEngine
from localroute.rungs.transport_errors import TRANSPORT_ERRORS

log = logging.getLogger("localroute.vllm")

INSTALL_HINT = "pip install 'localroute[gpu]'"
# An override of the GPU probe, for tests (a stand-in `vllm` on a box without a GPU) and for operators
# whose driver the probe cannot see: "1" assumes enough GPUs, "0" turns every launched vLLM rung off.
ASSUME_GPU_ENV = "LOCALROUTE_ASSUME_GPU"
MAX_IN_FLIGHT = 64  # vLLM batches concurrent requests: many in flight at once is its normal load
MAX_QUEUE = 256  # requests waiting beyond those; more get 429
STOP_GRACE_S = 10.0  # SIGTERM, then SIGKILL: vLLM frees GPU memory on a clean exit
_CONTEXT = re.compile(r"maximum context length|longer than the maximum model length", re.IGNORECASE)

Mode = Literal["launch", "url"]
__all__ = ["VllmEngine", "from_config", "gpu_problem", "launch_env", "parallel_args", "sanitize", "task_args"]


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
        return f"{need} GPUs needed (tensor x pipeline x data parallel), {count} visible"
    return None


def parallel_args(cfg: VllmModel) -> list[str]:
    """`vllm serve` flags for pipeline and data parallelism and the executor, only where set."""
    args: list[str] = []
    if cfg.pipeline_parallel_size > 1:
        args += ["--pipeline-parallel-size", str(cfg.pipeline_parallel_size)]
    if cfg.data_parallel_size > 1:
        args += ["--data-parallel-size", str(cfg.data_parallel_size)]
    if cfg.distributed_executor_backend is not None:
        args += ["--distributed-executor-backend", cfg.distributed_executor_backend]
    return args


def launch_env(cfg: VllmModel) -> dict[str, str] | None:
    """The launched server's environment: ours, plus RAY_ADDRESS when the rung names a cluster."""
    return {**os.environ, "RAY_ADDRESS": cfg.ray_address} if cfg.ray_address else None


def gpus_per_copy(cfg: VllmModel) -> int:
    """GPUs one copy of the model spans (tensor x pipeline): the GPU-seconds a second of it costs."""
    return cfg.tensor_parallel_size * cfg.pipeline_parallel_size


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


def task_args(cfg: VllmModel) -> list[str]:
    """`--runner pooling` for an embedding rung: vLLM's flag since 0.10 (`--task embed` before, now
    removed). An operator on an older vLLM gives `--task embed` in `extra_args`, which then wins."""
    given = {a.split("=", 1)[0] for a in cfg.extra_args}
    return ["--runner", "pooling"] if cfg.task == "embed" and not given & {"--runner", "--task"} else []


class VllmEngine(SupervisedEngine[VllmModel]):
    """One vLLM server behind a bounded admission: up to `max_in_flight` requests at once (vLLM batches
    them), `max_queue` more waiting, 429 beyond. `unavailable` is why it cannot run here, if it cannot."""

    kind = "vllm"
    label = "vllm model"
    noun = "server"
    log: ClassVar[logging.Logger] = log
    STOP_GRACE_S = STOP_GRACE_S
    HEALTH_EVERY_S = 0.2
    OUTPUT_LINES = 50
    LINE_CHARS = 1000

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
        super().__init__(cfg, max_in_flight=max_in_flight, max_queue=max_queue, unavailable=unavailable)
        self.mode: Mode = "url" if cfg.url is not None else "launch"
        self.cwd = cwd  # `vllm serve` runs here, so a relative model folder resolves like the config's paths
        self.executable = executable
        self.loads = 0
        self._root = _root(cfg.url) if cfg.url is not None else None
        self._port: int | None = None
        self._unplanned = False  # the last server ended without being asked to: the next start is a restart
        # Set for a rung on a Ray cluster outside the trusted networks (`from_config`): every request
        # is egress, so the guard refuses a private one before anything is sent (the router falls
        # back to another local rung, or fails closed) and re-scans a public one.
        self.egress: Callable[[dict[str, Any]], None] | None = None

    async def complete(self, body: dict[str, Any]) -> ChatCompletion:
        if self.egress is None:
            return await super().complete(body)
        self.egress(body)
        result = await super().complete(body)
        mark_untrusted(result)  # served, but not local: the audit record says so
        return result

    async def stream(self, body: dict[str, Any]) -> AsyncGenerator[ChatCompletionChunk, None]:
        if self.egress is not None:
            self.egress(body)
        first = self.egress is not None
        async with contextlib.aclosing(super().stream(body)) as chunks:
            async for chunk in chunks:
                if first:
                    mark_untrusted(chunk)
                    first = False
                yield chunk

    def _supervised(self) -> bool:
        return self.mode == "launch"

    def idle_ttl(self) -> float | None:
        return self.cfg.idle_ttl_s if self.mode == "launch" else None  # a server of ours only

    # -- loading -----------------------------------------------------------------------------------

    async def _load(self) -> None:
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
        except TRANSPORT_ERRORS as exc:
            problem = f"is unreachable ({exc.__class__.__name__})"
        if problem is not None:
            self._fail(f"the vLLM server at {where} {problem}")
        self._loaded(t0)
        self.log.info("vllm model %s: server at %s is healthy", self.name, where)

    async def _launch(self) -> None:
        await self._stop_process()
        assert self.executable is not None
        await self._reserve()  # no budgeted RAM (its memory is the GPU's), but its idle TTL runs there
        port = _bind(self.cfg.port or 0)
        if port is None:  # whatever holds it could answer our health check while our server fails
            self._fail(f"port {self.cfg.port} is already in use")
        cmd = [
            self.executable, "serve", self.cfg.model, "--host", "127.0.0.1", "--port", str(port),
            "--max-model-len", str(self.cfg.n_ctx),
            "--gpu-memory-utilization", str(self.cfg.gpu_memory_utilization),
            "--tensor-parallel-size", str(self.cfg.tensor_parallel_size), *parallel_args(self.cfg),
            *task_args(self.cfg), *self.cfg.extra_args,
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
                stderr=asyncio.subprocess.STDOUT,  # vLLM logs to both streams
                cwd=self.cwd,
                env=launch_env(self.cfg),
                start_new_session=True,  # Ctrl-C reaches the gateway, which stops the group in order
                preexec_fn=die_with_parent(signal.SIGTERM),
            )
        except OSError as exc:
            self._fail(f"cannot run `vllm`: {exc.strerror or exc.__class__.__name__}")
        self._port = port
        self.loads += 1
        self._supervise(proc)
        self._client = self._new_client(f"http://127.0.0.1:{port}")
        self._http = OpenAIHTTP(self._client)
        await self._wait_healthy(proc, t0)
        self.log.info("vllm model %s ready in %.1fs (pid %d)", self.name, self.load_seconds, proc.pid)

    def _fail(self, reason: str) -> NoReturn:
        self._unplanned = True  # the next start counts as a restart
        super()._fail(reason)

    def _crashed_now(self, proc: asyncio.subprocess.Process) -> None:
        self._unplanned = True

    def _log_unload(self, reason: str) -> None:
        ttl = self.cfg.idle_ttl_s
        if ttl is not None and time.monotonic() - self.idle_since >= ttl:
            self.log.info("vllm model %s idle for %gs: stopping its server", self.name, ttl)
        else:
            super()._log_unload(reason)

    # -- serving -----------------------------------------------------------------------------------

    def _body(self, body: dict[str, Any]) -> dict[str, Any]:
        return {**body, "model": self.cfg.model}  # vLLM serves its model under that name only

    def _mapped(self, exc: APIError) -> APIError:
        if isinstance(exc, NotFoundError):  # the server does not serve `model`: our config, not the client
            self.log.warning(
                "vllm model %s: the server rejected model %r: %s", self.name, self.cfg.model, exc
            )
            return UpstreamError(
                f"The vLLM server behind '{self.name}' does not serve the configured model.",
                code="upstream_model_not_found",
            )
        if isinstance(exc, InvalidRequestError) and _CONTEXT.search(exc.message):
            return ContextLengthExceededError(exc.message, param="messages")
        return exc

    def _accounting(self, share_s: float) -> EngineAccounting:
        return {"compute_s": round(share_s * gpus_per_copy(self.cfg), 6)}  # GPU-seconds

    def _health_extra(self, pid: int | None) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "model": self.cfg.model,
            "port": self._port if pid is not None else None,
            "loads": self.loads,
        }


def from_config(
    config: Config,
    model: VllmModel,
    runtime_dir: Path,
    *,
    which: Callable[[str], str | None] = shutil.which,
    gpu_probe: Callable[[int], str | None] = gpu_problem,
    engine: type[VllmEngine] = VllmEngine,
    egress_guard: EgressGuard | None = None,
) -> VllmEngine:
    """Build the rung. A launched rung that cannot run on this box (no `vllm`, too few GPUs) is
    `unavailable`, and the log says why in one line. A rung on an untrusted Ray cluster, or served at
    a `url` outside the trusted networks, gets the egress guard (`VllmEngine.egress`; none given: a
    private guard that refuses everything)."""
    built = _built(config, model, which, gpu_probe, engine)
    networks = TrustedNetworks(config.privacy.trusted_networks)
    untrusted = ray_problem(model.distributed_executor_backend, model.ray_address, networks) or url_problem(
        model.url, networks
    )
    if untrusted is not None:
        log.warning("vllm model %s: not local for private requests: %s", model.name, untrusted)
        built.egress = egress_guard if egress_guard is not None else _refuse_all
    return built


def _refuse_all(body: dict[str, Any]) -> None:
    raise PrivacyViolationError("This request cannot be sent to a model outside the trusted networks.")


def _built(
    config: Config,
    model: VllmModel,
    which: Callable[[str], str | None],
    gpu_probe: Callable[[int], str | None],
    engine: type[VllmEngine],
) -> VllmEngine:
    if not model.launch:
        return engine(model, cwd=config.base_dir)
    executable = which("vllm")
    # A Ray cluster's GPUs are on other hosts: Ray counts them, and vLLM's load fails if too few.
    local_gpus = None if model.ray_address else gpus_per_copy(model) * model.data_parallel_size
    problems = [p for p in (gpu_probe(local_gpus) if local_gpus else None,) if p]
    if executable is None:
        problems.append(f"no `vllm` executable on PATH ({INSTALL_HINT})")
    reason = "; ".join(problems) or None
    if reason is not None:
        log.warning("vllm model %s unavailable: %s", model.name, reason)
    return engine(model, cwd=config.base_dir, executable=executable, unavailable=reason)
