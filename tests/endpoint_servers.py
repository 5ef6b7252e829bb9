"""Engine servers for the endpoints tests: tests/fake_vllm.py processes on loopback ports that a test
kills, hangs (SIGSTOP) and restarts, and stand-in providers bound to a chosen loopback address (127.0.0.2
is loopback too on Linux), which record every request they see."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from tests.standin_provider import StandinProvider

FAKE = Path(__file__).resolve().parent / "fake_vllm.py"
MODEL = "fake-lan-model"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class FakeEngine:
    """A `vllm serve` stand-in process on a fixed loopback port: `kill`, `hang`, `resume`, `restart`,
    `stop`. `args` go to `vllm serve` after the address; with a `log` its output goes there and is shown
    when it fails to start."""

    def __init__(
        self, port: int | None = None, model: str = MODEL, args: tuple[str, ...] = (), log: Path | None = None
    ) -> None:
        self.port = port or free_port()
        self.model = model
        self.args = args
        self.log = log
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> FakeEngine:
        cmd = [sys.executable, str(FAKE), "serve", self.model, "--host", "127.0.0.1"]
        cmd += ["--port", str(self.port), *self.args]
        with contextlib.ExitStack() as stack:
            out = stack.enter_context(self.log.open("ab")) if self.log is not None else subprocess.DEVNULL
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"fake engine on port {self.port} exited with {self.proc.returncode}{self._tail()}"
                )
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return self
            time.sleep(0.05)
        raise RuntimeError(f"fake engine on port {self.port} did not start{self._tail()}")

    def _tail(self) -> str:
        return "" if self.log is None else ":\n" + self.log.read_text(errors="replace")[-2000:]

    def stop(self) -> None:
        """SIGTERM, as an operator's service manager would stop it."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)  # a stopped process must run to die cleanly
            self.proc.kill()
            self.proc.wait()

    def hang(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGCONT)

    def restart(self) -> None:
        self.kill()
        self.start()


class HostedStandin(StandinProvider):
    """A stand-in provider bound to `host` (and `port`, when given); `redirect_to` makes every chat
    request a 307 to that URL (a redirect an engine must never make us follow)."""

    def __init__(self, host: str, port: int = 0, redirect_to: str | None = None, **kw: object) -> None:
        self.redirect_to = redirect_to
        super().__init__(**kw)  # type: ignore[arg-type]
        self._sock.close()
        self._sock = socket.socket()
        self._sock.bind((host, port))
        self.host = host
        self.port = self._sock.getsockname()[1]
        self._thread = threading.Thread(target=self._server.run, args=([self._sock],), daemon=True)

    def _routes(self) -> list[Route]:
        routes = super()._routes()
        if self.redirect_to is not None:
            routes.insert(0, Route("/v1/chat/completions", self._redirect, methods=["POST"]))
        return routes

    async def _redirect(self, request: Request) -> Response:
        await self._record(request)
        return RedirectResponse(str(self.redirect_to) + "/v1/chat/completions", status_code=307)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def chats(self) -> int:
        return sum(r.path.endswith("/chat/completions") for r in self.requests)


def standins_on_one_port(hosts: list[str]) -> list[HostedStandin]:
    """One stand-in per loopback address, all on the same port (a name resolving to either reaches the
    same URL); started."""
    for _ in range(50):
        port = free_port(hosts[0])
        made: list[HostedStandin] = []
        try:
            for host in hosts:
                made.append(HostedStandin(host, port))
        except OSError:
            for s in made:
                s._sock.close()
            continue
        return [s.start() for s in made]
    raise RuntimeError("no port free on every address")
