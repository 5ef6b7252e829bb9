"""Floors for bench.ttft_breakdown: the same client's TTFT from servers with no model and no router
(bench/ttftprobe/floor_apps.py), started here and measured in the same rotation as localroute."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from bench.local_sides import free_port

PROBES = Path(__file__).resolve().parent / "ttftprobe"
FLOORS = {
    "floor:http": "a bare uvicorn + Starlette server answering a fixed chunk (serving over HTTP at all)",
    "floor:relay": "the same, relaying over a Unix socket to a bare server in another process "
    "(a model in its own process)",
}


def _uvicorn(app: str, where: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "uvicorn", f"floor_apps:{app}", *where, "--no-access-log",
           "--log-level", "warning"]  # fmt: skip
    with log.open("ab") as out:
        return subprocess.Popen(cmd, env=env, cwd=PROBES, stdout=subprocess.DEVNULL, stderr=out,
                                start_new_session=True)  # fmt: skip


class Floors:
    """The floor servers: name -> port, running until `close`."""

    def __init__(self, work: Path, env: dict[str, str]) -> None:
        env = {**env, "PYTHONPATH": f"{PROBES.parent.parent}:{PROBES}", "FLOOR_UDS": str(work / "floor.sock")}
        log = work / "floors.log"
        self.ports = {name: free_port() for name in FLOORS}
        self.procs = [
            _uvicorn("bare", ["--port", str(self.ports["floor:http"])], env, log),
            _uvicorn("bare", ["--uds", env["FLOOR_UDS"]], env, log),
            _uvicorn("relay", ["--port", str(self.ports["floor:relay"])], env, log),
        ]
        for port in self.ports.values():
            self._wait(port)

    @staticmethod
    def _wait(port: int, limit_s: float = 30.0) -> None:
        deadline = time.monotonic() + limit_s
        body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}
        while time.monotonic() < deadline:
            try:
                if httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=body).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise SystemExit(f"floor server on {port} not ready")

    def close(self) -> None:
        for proc in self.procs:
            os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            proc.wait(30)
