"""`localroute serve --workers N`: N gateway processes on one port, the engines supervised once.

The parent starts one `localroute engine` per local chat rung on a loopback port (each supervises its
llama.cpp worker or `vllm serve` as the gateway does, and answers only to a secret made for this run),
then runs N uvicorn workers on the shared listening socket. Every worker serves the same config in
which those rungs list their engine as their one `endpoint`: routing, privacy, the cascade and the
audit stay in the workers, the models are loaded once. Each worker claims a slot (`w0`, `w1`, ...) by
a lock file, so its replica id and audit log (`audit.<id>-w0.jsonl`) stay the same across restarts
of that worker by uvicorn's supervisor. An engine that exits is restarted with backoff (1 s doubling
to 30 s); the workers' balancer sees it down meanwhile, and a private request fails closed.

Shared between workers only through `[state] url`: per-key rate limits. Without it, configured rate
limits would be counted N times, so the command refuses to start. Per worker: the stats window and
the dashboard (each shows its own share), /metrics (scrape the port: each scrape reaches one worker;
`localroute report` over the audit logs is the whole picture). Embedding rungs are not served through
endpoints: each worker runs its own.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from localroute.config.models import Balance, LlamaCppModel, VllmModel
from localroute.config.privacy import LOOPBACK_NETWORKS
from localroute.config.schema import Config
from localroute.rungs.supervise import die_with_parent

if TYPE_CHECKING:
    from starlette.applications import Starlette

CONFIG_ENV = "LOCALROUTE_WORKER_CONFIG"  # the workers' config (JSON), written by the parent
SLOTS_ENV = "LOCALROUTE_WORKER_SLOTS"  # the folder of slot lock files
TOKEN_ENV = "LOCALROUTE_ENGINE_TOKEN"  # the secret between the workers and this run's engines


def engine_rungs(cfg: Config) -> list[LlamaCppModel | VllmModel]:
    """The rungs the parent serves once: local chat rungs run by a process of ours."""
    out: list[LlamaCppModel | VllmModel] = []
    for m in cfg.models:
        if isinstance(m, LlamaCppModel) and m.task == "chat" and not m.endpoints:
            out.append(m)
        elif isinstance(m, VllmModel) and m.task == "chat" and m.launch:
            out.append(m)
    return out


def rate_limited(cfg: Config) -> bool:
    """Whether a limit or a budget is configured: counted per worker unless [state] url is set."""
    limits = any(k.requests_per_minute or k.budget_usd for k in cfg.keys)
    return cfg.server.requests_per_minute is not None or limits


class Engine:
    """One `localroute engine` child on a loopback port, restarted with backoff when it exits."""

    def __init__(self, cfg_path: Path, name: str, env: dict[str, str], log_dir: Path) -> None:
        self.cfg_path, self.name, self.env = cfg_path, name, env
        self.port = _free_port()
        self.log = log_dir / f"engine-{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        self._stopping = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> None:
        cmd = [sys.executable, "-m", "localroute", "engine", "--model", self.name,
               "--listen", f"127.0.0.1:{self.port}", "--config", str(self.cfg_path)]  # fmt: skip
        with self.log.open("ab") as fh:
            self.proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=fh, stderr=subprocess.STDOUT, env=self.env,
                start_new_session=True, preexec_fn=die_with_parent(signal.SIGTERM),
            )  # fmt: skip

    def watch(self) -> None:
        """Restart the engine whenever it exits, until `stop` (a thread of the parent)."""
        delay = 1.0
        while not self._stopping.is_set():
            assert self.proc is not None
            started = time.monotonic()
            while self.proc.poll() is None and not self._stopping.wait(0.5):
                pass
            if self._stopping.is_set():
                return
            delay = 1.0 if time.monotonic() - started > 60 else min(delay * 2, 30.0)
            code = self.proc.returncode
            print(
                f"localroute: engine {self.name} exited ({code}); restarting in {delay:g} s", file=sys.stderr
            )
            if self._stopping.wait(delay):
                return
            self.restarts += 1
            self.start()

    def stop(self, grace: float) -> None:
        self._stopping.set()
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(grace + 5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ready(engine: Engine, token: str, limit_s: float) -> bool:
    """Wait until the engine answers /health (ready, or stopped with preload off)."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if engine.proc is not None and engine.proc.poll() is not None:
            return False
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"http://127.0.0.1:{engine.port}/health", timeout=2).status_code == 200:
                return True
        time.sleep(0.2)
    return False


def workers_config(cfg: Config, engines: list[Engine]) -> Config:
    """The config every worker serves: each engine rung reached at its engine's one endpoint."""
    by_name = {e.name: e for e in engines}
    models: list[Any] = []
    for m in cfg.models:
        e = by_name.get(m.name)
        if e is None:
            models.append(m)
            continue
        update: dict[str, Any] = {
            "endpoints": [e.url],
            "balance": Balance(key_env=TOKEN_ENV, health_every_s=1.0),
        }
        if isinstance(m, VllmModel):
            update["launch"] = False
        models.append(m.model_copy(update=update))
    # The engines are this run's own children on loopback: trusted whatever `trusted_networks` lists
    # for other hosts, so that private requests reach them as they would in one process.
    networks = list(dict.fromkeys([*cfg.privacy.trusted_networks, *LOOPBACK_NETWORKS]))
    privacy = cfg.privacy.model_copy(update={"trusted_networks": networks})
    return cfg.model_copy(update={"models": models, "privacy": privacy})


def serve(cfg: Config, cfg_path: Path, host: str, port: int, workers: int) -> int:
    """Start the engines, then `workers` gateway processes on `host:port`; returns the exit status."""
    import uvicorn

    from localroute.gateway.edge import EdgeProtocol
    from localroute.observe.logs import level_from

    if rate_limited(cfg) and cfg.state.resolved_url() is None:
        why = "each worker would count its own rate limits and budgets: set [state] url (Redis or Valkey,"
        print(f"localroute: --workers N: {why} docs/scale-out.md), or serve one worker.", file=sys.stderr)
        return 2
    run_dir = Path(tempfile.mkdtemp(prefix="localroute-workers-"))
    token = secrets.token_urlsafe(32)
    env = {**os.environ, TOKEN_ENV: token}
    engines = [Engine(cfg_path, m.name, env, run_dir) for m in engine_rungs(cfg)]
    threads: list[threading.Thread] = []
    try:
        for e in engines:
            e.start()
        for e, m in zip(engines, engine_rungs(cfg), strict=True):
            if not _ready(e, token, m.load_timeout_s + 30):
                tail = e.log.read_text(errors="replace").splitlines()[-15:] if e.log.exists() else []
                print(f"localroute: engine {e.name} did not start; the end of its log:", file=sys.stderr)
                print("\n".join("  " + line for line in tail), file=sys.stderr)
                return 1
            t = threading.Thread(target=e.watch, name=f"watch-{e.name}", daemon=True)
            t.start()
            threads.append(t)
        served = workers_config(cfg, engines)
        (run_dir / "config.json").write_text(served.model_dump_json(), encoding="utf-8")
        (run_dir / "meta.json").write_text(json.dumps({"base_dir": str(cfg.base_dir), "port": port}))
        (run_dir / "slots").mkdir()
        os.environ.update({CONFIG_ENV: str(run_dir), SLOTS_ENV: str(run_dir / "slots"), TOKEN_ENV: token})
        uvicorn.run(
            "localroute.workers:worker_app", factory=True, host=host, port=port, workers=workers,
            log_config=None, log_level=level_from(cfg.server.log_level), access_log=False,
            timeout_graceful_shutdown=cfg.server.shutdown_grace_s, http=EdgeProtocol,
        )  # fmt: skip
        return 0
    finally:
        for e in engines:
            e.stop(cfg.server.shutdown_grace_s)
        with contextlib.suppress(OSError):
            import shutil

            shutil.rmtree(run_dir)


_slot_lock: Any = None  # held for the worker's life: its slot


def _claim_slot(slots: Path) -> int:
    """The lowest free slot; the lock is released by the kernel when this worker exits."""
    global _slot_lock
    for i in range(1024):
        fh = (slots / f"w{i}.lock").open("w")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.close()
            continue
        _slot_lock = fh
        return i
    raise RuntimeError("no free worker slot")


def worker_app() -> Starlette:
    """uvicorn's factory in each worker process: the parent's config, this worker's replica id."""
    from localroute.gateway.app import create_app
    from localroute.observe.logs import configure as configure_logs

    run_dir = Path(os.environ[CONFIG_ENV])
    meta = json.loads((run_dir / "meta.json").read_text())
    cfg = Config.model_validate_json((run_dir / "config.json").read_text())
    cfg = cfg.model_copy(update={"base_dir": Path(meta["base_dir"])})
    slot = _claim_slot(Path(os.environ[SLOTS_ENV]))
    base = cfg.state.replica(int(meta["port"])) or ""
    os.environ["LOCALROUTE_REPLICA_ID"] = f"{base}-w{slot}" if base else f"w{slot}"
    configure_logs(cfg.server.log_level, cfg.server.log_format)
    return create_app(cfg)
