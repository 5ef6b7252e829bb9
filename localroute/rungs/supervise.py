"""The pieces of process supervision: waiting for a health check, naming an exit, keeping paths out of
what clients read, dying with the gateway, and measuring a request's share of a batching engine's time.
The supervisor itself (supervisor.py) puts them together."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import re
import signal
import sys
import time
from collections.abc import Callable
from typing import Literal

import httpx

from localroute.rungs.transport_errors import TRANSPORT_ERRORS

_ABS_PATH = re.compile(r"(?<![\w:/.~-])/(?:[^\s'\"/:,;()\[\]{}<>]+/)+([^\s'\"/:,;()\[\]{}<>]*)")


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
        except TRANSPORT_ERRORS:
            pass
        await asyncio.sleep(every_s)
    return "timeout"


def sanitize(text: str) -> str:
    """`text` without absolute paths (each becomes `…/<last part>`), for what clients can read."""
    return _ABS_PATH.sub(lambda m: "…/" + m.group(1), text)[:500]


def die_with_parent(sig: signal.Signals) -> Callable[[], None] | None:
    """A preexec hook that has the kernel send the child `sig` when the gateway dies, even by SIGKILL
    (Linux; None elsewhere)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def hook() -> None:
        prctl(1, sig)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the gateway died before the hook ran
            os._exit(1)

    return hook


def signal_group(pid: int, sig: signal.Signals) -> None:
    """Signal a child's whole process group (it was started in a session of its own), if it is left."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def exit_reason(code: int) -> str:
    """`killed by SIGKILL`, `exited with status 1`: how a process ended, for logs and 503s."""
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with status {code}"


class TimeShare:
    """Each request's fair share of a batching engine's busy time: the integral of dt / n(t) over
    the time it is in flight, n(t) being the requests in flight then. Shares sum to the busy time."""

    def __init__(self) -> None:
        self._n = 0
        self._acc = 0.0
        self._t = time.monotonic()

    def _tick(self) -> None:
        now = time.monotonic()
        if self._n:
            self._acc += (now - self._t) / self._n
        self._t = now

    def enter(self) -> float:
        """A request starts; keep the mark for `leave`."""
        self._tick()
        self._n += 1
        return self._acc

    def so_far(self, mark: float) -> float:
        """The request's share since `enter`, while it is still in flight."""
        self._tick()
        return self._acc - mark

    def leave(self, mark: float) -> float:
        """The request ended: its share of the engine's time since `enter`, in seconds."""
        self._tick()
        self._n -= 1
        return self._acc - mark
