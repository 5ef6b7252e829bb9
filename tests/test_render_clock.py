"""The render clock's one watchdog thread: it stops a render that runs past the limit, every time, and
never fires at a render that finished or at the thread's later work (unit, no model)."""

from __future__ import annotations

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
    """The deadline passed before `rendered()` ran: the pending exception is withdrawn and raised
    there, once, so the thread's next bytecode is not hit by it again."""
    clock = RenderClock(0.01)

    def slow_then_rendered() -> str:
        time.sleep(0.1)  # a C call: the async exception waits for the next bytecode
        clock.rendered()
        return "unreachable"

    with pytest.raises(RenderTimeout):
        clock.bounded(slow_then_rendered)
    assert clock.bounded(lambda: "next") == "next"
