"""Child processes for the gateway benchmarks: the mock upstream and a `localroute serve` in front of it.

Every child gets its own process group and is stopped by its own pid (SIGTERM, then SIGKILL).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODEL = "mock-1"  # the one name every target answers to, so all see the same request bytes
KEY_ENV = "LOCALROUTE_BENCH_MOCK_KEY"


@dataclass
class Child:
    name: str
    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)

    def tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def spawn(
    name: str, cmd: list[str], port: int, workdir: Path, env: dict[str, str] | None = None, cwd: Path = ROOT
) -> Child:
    """`cmd` in its own session, output to `workdir/<name>.log`. `python -m` puts `cwd` first on
    sys.path, ahead of PYTHONPATH: a child that must import another tree must run in that tree."""
    log = workdir / f"{name}.log"
    with log.open("wb") as fh:
        proc = subprocess.Popen(
            cmd, cwd=cwd, stdout=fh, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
            start_new_session=True,
        )  # fmt: skip
    return Child(name, proc, port, log)


def get_json(port: int, path: str, timeout: float = 2.0, token: str | None = None) -> object:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


def wait_ready(child: Child, path: str, timeout: float, token: str | None = None) -> object:
    """Poll `path` until it answers 200 with JSON; raise RuntimeError with the log tail if it never does."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if child.proc.poll() is not None:
            raise RuntimeError(f"{child.name} exited with {child.proc.returncode}:\n{child.tail()}")
        try:
            return get_json(child.port, path, token=token)
        except (OSError, ValueError):
            time.sleep(0.2)
    raise RuntimeError(f"{child.name} not ready on {path} after {timeout:.0f}s:\n{child.tail()}")


def start_mock(workdir: Path, latency_ms: float = 0.0, gap_ms: float = 0.0) -> Child:
    port = free_port()
    cmd = [sys.executable, "-m", "bench.mock_upstream", "--port", str(port)]
    cmd += ["--latency-ms", str(latency_ms), "--chunk-gap-ms", str(gap_ms)]
    child = spawn("mock", cmd, port, workdir)
    wait_ready(child, "/v1/models", 20)
    return child


def localroute_config(mock_port: int, workdir: Path, audit: bool, feedback: bool = True) -> str:
    """One remote rung pointed at the mock; public by default so the request may leave; the audit
    log and the feedback store (both on by default in localroute) written under `workdir`."""
    store = "" if feedback else "\n[feedback]\nenabled = false\n"
    return f"""\
[[models]]
name = "{MODEL}"
engine = "remote"
tier = 10
base_url = "http://127.0.0.1:{mock_port}/v1"
model = "{MODEL}"
api_key_env = "{KEY_ENV}"

[privacy]
default = "public"
audit_enabled = {str(audit).lower()}
audit_path = "{workdir / "audit.jsonl"}"
{store}"""


def start_localroute(
    mock_port: int,
    workdir: Path,
    audit: bool = True,
    prefix: list[str] | None = None,
    feedback: bool = True,
) -> Child:
    """`localroute serve` in front of the mock; `prefix` replaces the `localroute` executable (a
    wrapper that runs `localroute.cli.main` with the remaining arguments)."""
    cfg = workdir / "models.toml"
    cfg.write_text(localroute_config(mock_port, workdir, audit, feedback), encoding="utf-8")
    port = free_port()
    exe = prefix or [str(Path(sys.executable).with_name("localroute"))]
    cmd = [*exe, "serve", "--config", str(cfg), "--host", "127.0.0.1", "--port", str(port)]
    env = {KEY_ENV: "sk-bench-mock", "LOCALROUTE_AUDIT_PATH": str(workdir / "audit.jsonl")}
    child = spawn("localroute", cmd, port, workdir, env)
    health = wait_ready(child, "/health", 60)
    engine = health.get("engines", {}).get(MODEL, {}) if isinstance(health, dict) else {}
    if not isinstance(health, dict) or health.get("status") != "ok" or engine.get("state") != "ready":
        child.stop()
        raise RuntimeError(f"localroute /health is not ok: {json.dumps(health)[:500]}")
    return child
