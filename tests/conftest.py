"""Shared fixtures: a real `localroute serve` process on a free loopback port, over the real model, and
the one way tests write a models.toml for it (`config_text` from rungs and tables, `start_gateway`)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.toml_text import toml_value

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _environment(config: Path, extra: Mapping[str, str | None]) -> dict[str, str]:
    # Hermetic: never reach a real provider from tests, whatever the machine's environment holds.
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    env.update(HF_HUB_OFFLINE="1", LOCALROUTE_AUDIT_PATH=str(config.parent / "audit.jsonl"))
    for k, v in extra.items():
        if v is None:
            env.pop(k, None)
        else:
            env[k] = v
    return env


def _local_engines_ready(health: dict[str, Any]) -> bool:
    engines = health["engines"].values()
    return all(e["state"] == "ready" for e in engines if e.get("engine") == "llama_cpp")


def answering(health: dict[str, Any]) -> bool:
    """The gateway answers /health: its startup, preloads included, is over."""
    return True


class Server:
    """A gateway subprocess; `stop()` sends SIGINT like Ctrl-C and waits for a clean exit."""

    def __init__(self, config: Path, port: int, env: Mapping[str, str | None] | None = None) -> None:
        """`env` is applied on top of this process's environment; a None value removes the variable."""
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log = config.parent / f"server-{port}.log"
        self.audit = config.parent / "audit.jsonl"
        self._log_fh = self.log.open("wb")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "localroute",
                "serve",
                "--config",
                str(config),
                "--port",
                str(port),
            ],
            stdout=self._log_fh,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            # Hermetic: never reach a real provider from tests, whatever the machine's environment holds.
            env=_environment(config, env or {}),
        )

    def wait_ready(
        self, timeout: float = 120.0, until: Callable[[dict[str, Any]], bool] = _local_engines_ready
    ) -> dict[str, Any]:
        """Poll /health until `until` holds (by default: every llama.cpp engine is ready)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited early:\n{self.log.read_text()}")
            try:
                r = httpx.get(self.url + "/health", timeout=2)
                if r.status_code == 200 and until(r.json()):
                    return r.json()  # type: ignore[no-any-return]
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"server not ready in {timeout}s:\n{self.log.read_text()}")

    def started(self, until: Callable[[dict[str, Any]], bool] = _local_engines_ready) -> Server:
        """`wait_ready`, stopping the gateway if it never gets there: no fixture leaves one behind."""
        try:
            self.wait_ready(until=until)
        except BaseException:
            self.stop(signal.SIGKILL)
            raise
        return self

    def health(self) -> dict[str, object]:
        return httpx.get(self.url + "/health", timeout=5).json()  # type: ignore[no-any-return]

    def stop(self, sig: int = signal.SIGINT, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log_fh.close()
        return int(self.proc.returncode)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead for our purposes
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def worker_health(pid: int) -> dict[str, Any]:
    """A llama.cpp worker's own /health (`busy`, `served`, `sampled`: tokens sampled since it started),
    asked on its Unix socket, which its command line names."""
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    sock = argv[argv.index(b"--socket") + 1].decode()
    with httpx.Client(transport=httpx.HTTPTransport(uds=sock), base_url="http://worker", timeout=60) as c:
        return c.get("/health").json()  # type: ignore[no-any-return]


def wait_until(pred: object, timeout: float = 10.0, every: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():  # type: ignore[operator]
            return True
        time.sleep(every)
    return False


@pytest.fixture(scope="session")
def repo_config() -> Path:
    return ROOT / "models.toml"


@pytest.fixture(scope="session")
def smollm2() -> Path:
    """The default model's GGUF, as the repo config resolves it (bootstrap pulls it)."""
    from localroute.config.models import LlamaCppModel
    from localroute.config.schema import load_config

    cfg = load_config(ROOT / "models.toml")
    m = cfg.model("smollm2-135m")
    assert isinstance(m, LlamaCppModel)
    path = cfg.model_path(m)
    if not path.is_file():
        pytest.fail(f"{path} is missing: run `localroute pull` (scripts/bootstrap.sh does)")
    return path


# -- writing a models.toml and serving it -----------------------------------------------------------------

DEFAULT_MODEL = "smollm2-135m"
REMOTE_RUNG = "frontier"


def repo_rung(name: str = DEFAULT_MODEL, **over: object) -> dict[str, object]:
    """The repo's models.toml entry for `name`, with `over` applied (`cache_prompt=False`: deterministic)."""
    repo = tomllib.loads((ROOT / "models.toml").read_text())
    return {**next(m for m in repo["models"] if m["name"] == name), **over}


def repo_routing() -> dict[str, object]:
    """The repo's `[routing]` table without its cascade (each test states the cascade it needs)."""
    routing = tomllib.loads((ROOT / "models.toml").read_text())["routing"]
    return {k: v for k, v in routing.items() if k != "cascade"}


def remote_rung(base_url: str, key_env: str, **over: object) -> dict[str, object]:
    """The remote rung, pointed at a stand-in provider, its key read from `key_env`."""
    return {"name": REMOTE_RUNG, "engine": "remote", "tier": 10, "base_url": base_url,
            "model": "standin-frontier", "api_key_env": key_env, **over}  # fmt: skip


def _table(header: str, values: Mapping[str, object]) -> list[str]:
    return [header, *(f"{k} = {toml_value(v)}" for k, v in values.items()), ""]


def config_text(
    *,
    server: Mapping[str, object] | None = None,
    models: Sequence[Mapping[str, object]] = (),
    routing: Mapping[str, object] | None = None,
    cascade: Mapping[str, object] | None = None,
    privacy: Mapping[str, object] | None = None,
    keys: Sequence[Mapping[str, object]] = (),
    cost: Mapping[str, object] | None = None,
) -> str:
    """A models.toml with these tables; a table left None is not written (its defaults apply)."""
    lines: list[str] = []
    tables = [("[server]", server), *(("[[models]]", m) for m in models), ("[routing]", routing),
              ("[routing.cascade]", cascade), ("[privacy]", privacy), *(("[[keys]]", k) for k in keys),
              ("[cost]", cost)]  # fmt: skip
    for header, values in tables:
        if values is not None:
            lines += _table(header, values)
    return "\n".join(lines)


def start_gateway(
    tmp: Path,
    text: str,
    env: Mapping[str, str | None] | None = None,
    *,
    until: Callable[[dict[str, Any]], bool] = _local_engines_ready,
) -> Server:
    """Write `text` as `tmp`/models.toml and serve it; returns once `until` holds (see `Server`)."""
    cfg = tmp / "models.toml"
    cfg.write_text(text)
    return Server(cfg, free_port(), env).started(until=until)


def start_server(config: Path, tmp: Path, *, deterministic: bool = False) -> Server:
    """Serve a copy of `config`; `deterministic` turns off prompt caching on the default model."""
    text = config.read_text()
    if deterministic:
        assert "\npreload = true" in text
        text = text.replace("\npreload = true", "\npreload = true\ncache_prompt = false", 1)
    return start_gateway(tmp, text)


@pytest.fixture(scope="session")
def server(repo_config: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = start_server(repo_config, tmp_path_factory.mktemp("gw"), deterministic=True)
    yield srv
    srv.stop()
