"""The render clock's one watchdog thread: it stops a render that runs past the limit, every time, and
never fires at a render that finished or at the thread's later work (unit, no model)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time

import pytest

from localroute.rungs.llamacpp.render_clock import RenderClock, RenderTimeout


def endless() -> None:
    while True:  # Python bytecode: the async exception lands here
        pass


def test_a_render_past_its_limit_is_stopped_each_time_by_one_watchdog() -> None:
    clock = RenderClock(0.05)
    before = threading.active_count()
    for _ in range(3):
        with pytest.raises(RenderTimeout):
            clock.bounded(endless)
    assert threading.active_count() == before + 1  # one watchdog, kept: no thread per render


def test_a_finished_render_is_never_fired_at_later() -> None:
    clock = RenderClock(0.05)

    def render_then_decode() -> str:
        clock.rendered()  # the template is done: the clock stops here
        deadline = time.monotonic() + 0.3  # "decoding" well past the limit
        while time.monotonic() < deadline:
            pass
        return "ok"

    assert clock.bounded(render_then_decode) == "ok"
    assert clock.bounded(lambda: "quick") == "quick"
    time.sleep(0.15)  # past the last render's limit: nothing pending may land in this thread
    assert sum(range(1000)) == 499500


def test_a_render_that_runs_out_just_as_it_finishes_raises_once() -> None:
    """The deadline passed before `rendered()` ran: the pending exception lands there, once, so the
    thread's next bytecode is not hit by it again."""
    clock = RenderClock(0.01)

    def slow_then_rendered() -> str:
        time.sleep(0.1)  # a C call: the async exception waits for the next bytecode
        clock.rendered()
        return "unreachable"

    with pytest.raises(RenderTimeout):
        clock.bounded(slow_then_rendered)
    assert clock.bounded(lambda: "next") == "next"


def test_a_timed_out_render_leaves_a_traced_thread_running() -> None:
    """Under a tracer (coverage, a debugger) the thread goes on after a render that ran out as it
    finished. Withdrawing the pending exception with PyThreadState_SetAsyncExc(NULL) left Python's
    async-exception flag set for good before 3.13, and a traced thread then spun in place for ever:
    the suite hung here under `coverage run`. A child process, so that a hang fails the test."""
    script = textwrap.dedent(
        """
        import sys, time
        from localroute.rungs.llamacpp.render_clock import RenderClock, RenderTimeout

        def tracer(frame, event, arg):
            return tracer

        clock = RenderClock(0.01)

        def slow_then_rendered():
            time.sleep(0.1)
            clock.rendered()

        sys.settrace(tracer)
        for _ in range(2):
            try:
                clock.bounded(slow_then_rendered)
            except RenderTimeout:
                pass
        print(sum(range(1000)), clock.bounded(lambda: "next"))
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["499500", "next"]
