"""A llama.cpp model as a supervised worker process, implementing the Backend protocol.

The gateway talks to the worker over HTTP on a Unix socket in a private (0700) runtime folder: no TCP
port to race for, and no other local user can reach the model. The worker is started on first use (or
at startup when `preload`), health-checked, and restarted on the next request after it dies (the
skeleton is rungs/supervisor.py). Under a `Placement` it asks for room in the memory budget before
loading, and is stopped when idle.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import stat
import sys
import time
from pathlib import Path
from typing import Any, ClassVar, NoReturn

import httpx

from localroute.config.models import LlamaCppModel
from localroute.config.schema import Config
from localroute.errors import EngineUnavailableError, InvalidModelFileError, ModelCheckInconclusiveError
from localroute.host import gguf, resources
from localroute.host.resources import Footprint, MiB
from localroute.rungs.lean_http import LeanTransport
from localroute.rungs.openai_http import OpenAIHTTP
from localroute.rungs.supervisor import SupervisedEngine

INCONCLUSIVE_RETRY_S = 60.0  # a file check that hung or died is tried again after this long


class LlamaCppEngine(SupervisedEngine[LlamaCppModel]):
    """One GGUF model served by one worker process, one request at a time, behind a bounded queue."""

    kind = "llama_cpp"
    label = "engine"
    noun = "worker"
    log: ClassVar[logging.Logger] = logging.getLogger("localroute.engine")
    worker_module: ClassVar[str] = "localroute.rungs.llamacpp.worker"  # embedder.py runs another

    def __init__(self, cfg: LlamaCppModel, model_path: Path, runtime_dir: Path) -> None:
        super().__init__(cfg, max_in_flight=1, max_queue=cfg.max_queue)  # llama.cpp is not re-entrant
        self.model_path = model_path
        self.socket = runtime_dir / f"{cfg.name}.sock"
        self.rss_at_load: int | None = None
        self._footprint: Footprint | None = None
        self._starts = 0
        # (file identity, why it was rejected or None, when to check again) of the model file last checked
        self._checked: tuple[tuple[int, int, int], str | None, float] | None = None

    def footprint(self) -> Footprint | None:
        if self._footprint is None and self.model_path.is_file():
            self._footprint = resources.estimate_gguf(self.model_path, self.cfg.n_ctx, self.cfg.n_batch)
        return self._footprint

    # -- loading -----------------------------------------------------------------------------------

    async def _load(self) -> None:
        await self._stop_process()
        if not self.model_path.is_file():
            self.state = "unavailable"
            self.last_error = "model file missing; run `localroute pull`"
            raise EngineUnavailableError(
                f"Model '{self.name}' is not downloaded; the operator must run `localroute pull`.",
                code="model_not_downloaded",
            )
        await self._reserve()
        self.state = "starting"
        # One open file for the check and the load: the file checked is the file llama.cpp loads, even
        # if the path is swapped in between (rename, symlink). The children read it as /proc/self/fd/N.
        try:  # non-blocking: a FIFO swapped in for the file must not hang the event loop
            fd = os.open(self.model_path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError as exc:
            self._reject(f"cannot read the file: {exc.strerror}")
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                self._reject("not a regular file")
            await self._spawn(fd)
        finally:
            os.close(fd)  # the worker holds its own copy

    async def _spawn(self, fd: int) -> None:
        held = Path(f"/proc/self/fd/{fd}") if sys.platform == "linux" else self.model_path
        await self._check_file(fd, held)
        self._output.clear()
        with contextlib.suppress(FileNotFoundError):
            self.socket.unlink()
        cmd = [
            sys.executable, "-m", self.worker_module,
            "--socket", str(self.socket), "--model-path", str(held),
            "--name", self.name, "--n-ctx", str(self.cfg.n_ctx),
            "--n-batch", str(self.cfg.n_batch), "--parent-pid", str(os.getpid()),
            "--render-timeout-s", str(self.cfg.render_timeout_s),
        ]  # fmt: skip
        if self.cfg.threads:
            cmd += ["--threads", str(self.cfg.threads)]
        if not self.cfg.cache_prompt:
            cmd.append("--no-cache-prompt")
        if self.cfg.chat_format:
            cmd += ["--chat-format", self.cfg.chat_format]
        t0 = time.monotonic()
        proc = await asyncio.create_subprocess_exec(
            *cmd,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,  # Ctrl-C reaches the gateway, which stops us in order
            pass_fds=(fd,),
        )
        if self._starts:
            self.restarts += 1
        self._starts += 1
        self._supervise(proc)
        # our HTTP/1.1 transport, not httpcore's, and sent to directly: less gateway CPU per request
        # and a shorter way to the first token (docs/bench-ttft.md)
        lean = LeanTransport(uds=str(self.socket))
        self._client = httpx.AsyncClient(
            transport=lean,
            base_url="http://engine",
            timeout=httpx.Timeout(self.cfg.request_timeout_s, connect=5.0, pool=None),
        )
        self._http = OpenAIHTTP(self._client, transport=lean)
        await self._wait_healthy(proc, t0)
        self.rss_at_load = resources.rss(proc.pid)
        fp = self.footprint()
        self.log.info(
            "engine %s ready in %.2fs (pid %d): RSS %s MiB, estimated %s MiB",
            self.name, self.load_seconds, proc.pid, _mib(self.rss_at_load), fp and fp.total_mib,
        )  # fmt: skip

    async def _check_file(self, fd: int, held: Path) -> None:
        """The GGUF open on `fd` (read as `held`) passes our structural check (`host.gguf`) before
        llama.cpp parses it; checked once per version of the file. A failure names the problem in the
        log and /health, never the path."""
        st = os.fstat(fd)
        stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
        now = time.monotonic()
        if self._checked is None or self._checked[0] != stamp or now >= self._checked[2]:
            try:
                await gguf.verify(held, pass_fds=(fd,))
                self._checked = (stamp, None, math.inf)
            except ModelCheckInconclusiveError as exc:  # a hung or killed checker: try again soon
                self._checked = (stamp, str(exc), now + INCONCLUSIVE_RETRY_S)
            except InvalidModelFileError as exc:  # the file's own fault: kept until the file changes
                self._checked = (stamp, str(exc), math.inf)
        if self._checked[1] is not None:
            self._reject(self._checked[1])

    def _reject(self, reason: str) -> NoReturn:
        self.state, self.last_error = "failed", f"model file rejected: {reason}"
        self.log.warning("engine %s: model file rejected: %s", self.name, reason)
        raise EngineUnavailableError(
            f"Model '{self.name}' failed its file check; see the server log.", code="model_file_invalid"
        )

    def _stopped(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.socket.unlink()

    # -- reporting ---------------------------------------------------------------------------------

    def _busy_message(self) -> str:
        return f"Model '{self.name}' is busy: its queue of {self.cfg.max_queue} is full."

    def _health_extra(self, pid: int | None) -> dict[str, Any]:
        fp = self._footprint
        return {
            "starts": self._starts,
            "last_used_s_ago": round(time.monotonic() - self.last_used, 1) if self.last_used else None,
            "idle_ttl_s": self.cfg.idle_ttl_s,
            "estimated_mib": None if fp is None else fp.total_mib,
            "estimate_method": None if fp is None else fp.method,
            "rss_mib": _mib(resources.rss(pid)) if pid is not None else None,
            "rss_at_load_mib": _mib(self.rss_at_load),
            # what `localroute init` measured on this box (load_s, prompt/decode tokens/s, ttft_ms, when)
            "measured": None if self.cfg.measured is None else self.cfg.measured.model_dump(mode="json"),
        }


def from_config(config: Config, model: LlamaCppModel, runtime_dir: Path) -> LlamaCppEngine:
    return LlamaCppEngine(model, config.model_path(model), runtime_dir)


def _mib(n: int | None) -> int | None:
    return None if n is None else round(n / MiB)
