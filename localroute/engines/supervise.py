"""What every supervised engine process shares: waiting for its health check, and naming its exit."""

from __future__ import annotations

import asyncio
import signal
import time
from typing import Literal

import httpx


async def poll_health(
    client: httpx.AsyncClient, proc: asyncio.subprocess.Process, timeout_s: float, every_s: float
) -> Literal["ready", "exited", "timeout"]:
    """Poll `GET /health` until it answers 200, the process exits, or `timeout_s` passes."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.returncode is not None:
            return "exited"
        try:
            r = await client.get("/health", timeout=2.0)
            if r.status_code == 200:
                return "ready"
        except (httpx.TransportError, OSError):
            pass
        await asyncio.sleep(every_s)
    return "timeout"


def exit_reason(code: int) -> str:
    """`killed by SIGKILL`, `exited with status 1`: how a process ended, for logs and 503s."""
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with status {code}"
