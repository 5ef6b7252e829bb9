"""A time limit on rendering the model's chat template, in the worker.

The template comes with the GGUF (the operator's model, not the client): llama-cpp-python renders it
with Jinja in an immutable sandbox, which stops escapes but not work: three nested `range(99999)`
loops hold the decoding thread, and with it the model, for ever. The render runs on the executor
thread that then decodes, so neither SIGALRM (main thread only) nor `asyncio.timeout` (the thread
would go on) can stop it. A timer raises `RenderTimeout` in that thread instead
(`PyThreadState_SetAsyncExc`), which Python delivers at the next bytecode: a Jinja loop is Python
code, so the render stops within the limit and the thread, the lock and the worker are free again.

The clock is armed when a chat completion starts and disarmed when llama-cpp-python asks for the
completion of the rendered prompt (the runner's `create_completion` hook): only the render is timed,
never the decode. Rejected: counting loop iterations in a sandbox subclass (a loop over a long
string or list calls no hook) and rendering in a child process (a fork per request).
"""

from __future__ import annotations

import ctypes
import threading
import time
from collections.abc import Callable
from typing import NoReturn, TypeVar

from localroute.errors import InternalError

T = TypeVar("T")

_LAND_S = 0.5  # bound on waiting for a fired exception that the render may have swallowed


class RenderTimeout(Exception):
    """Raised in the rendering thread when the chat template ran past its limit."""


def _raise_in(thread_id: int) -> None:
    """Ask Python to raise `RenderTimeout` in the thread at its next bytecode.

    Never called with NULL to withdraw a pending exception: before Python 3.13 that leaves the
    interpreter's "async exception" flag set for good (only delivering an exception clears it), so
    every later bytecode takes the slow path, and under a tracer (coverage, a debugger) the thread
    spins in place for ever. A fired exception is always let land instead (`_land`)."""
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), ctypes.py_object(RenderTimeout))


class RenderClock:
    """Bounds the render of one chat completion at a time (the runner serialises them).

    One watchdog thread, started with the first render and kept, waits for the armed deadline: a
    `threading.Timer` per request started a thread on the way to every first token (Thread.start
    waits for the new thread to run: up to milliseconds on a busy box, docs/bench-ttft.md).

    The rendering thread takes the plain lock with `with self._lock` (C `__enter__`/`__exit__`): an
    exception landing in the block releases it, where `Condition.__enter__`, Python code, could take
    the lock and then be interrupted before the block, leaving it held."""

    def __init__(self, limit_s: float) -> None:
        self.limit_s = limit_s
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._thread: int | None = None  # the thread rendering now; None: nothing is timed
        self._deadline: float | None = None  # when the armed render runs out (monotonic)
        self._fired = False
        self._watchdog: threading.Thread | None = None

    def bounded(self, call: Callable[[], T]) -> T:
        """`call()` on this thread, its template render limited to `limit_s` (see `rendered`)."""
        with self._lock:
            if self._watchdog is None:
                self._watchdog = threading.Thread(target=self._watch, name="render-clock", daemon=True)
                self._watchdog.start()
            self._thread, self._fired = threading.get_ident(), False
            self._deadline = time.monotonic() + self.limit_s
            self._cond.notify()
        landed = False
        try:
            return call()
        except RenderTimeout:
            landed = True
            raise
        finally:
            if self._stop() and not landed:
                _land()  # fired as `call` returned: the exception lands here, not in the caller

    def rendered(self) -> None:
        """The template is rendered: stop the clock. Raises `RenderTimeout` if it had already run out
        (the exception it sent may not have landed yet: it lands here, once)."""
        if self._thread == threading.get_ident() and self._stop():
            _land()

    def _stop(self) -> bool:
        """Disarm; True if the watchdog had fired at this render."""
        with self._lock:
            fired = self._fired
            self._thread, self._deadline, self._fired = None, None, False
        return fired

    def _watch(self) -> None:
        with self._cond:
            while True:
                if self._deadline is None:
                    self._cond.wait()
                    continue
                left = self._deadline - time.monotonic()
                if left > 0:
                    self._cond.wait(left)
                    continue
                self._deadline = None
                if self._thread is not None:
                    self._fired = True
                    _raise_in(self._thread)

    def error(self) -> InternalError:
        """What the client gets: the model's template is at fault, not the request."""
        return InternalError(
            f"The model's chat template did not render within {self.limit_s:g} s; the operator "
            "should check the model file's template (or set `chat_format`).",
            code="chat_template_timeout",
        )


def _land() -> NoReturn:
    """The watchdog fired at this thread: run bytecode until its `RenderTimeout` lands (at once when
    it is pending), so that it is raised here and never in whatever the thread does next. Raises one
    itself when none comes: the render had met it already and swallowed it."""
    deadline = time.monotonic() + _LAND_S
    while time.monotonic() < deadline:
        pass
    raise RenderTimeout
