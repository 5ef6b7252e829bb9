"""The state of a rung's engine endpoints and the choice among them: least outstanding requests, ties
taken in turn, and a circuit per endpoint that opens after `failures_to_open` failures in a row (requests
or health checks), stays open `open_s`, then lets one half-open probe decide whether it closes.

Pure bookkeeping, no I/O: rungs/endpoints.py sends the requests and the probes and reports back here.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable, Collection
from typing import Literal

from localroute.config.models import Balance
from localroute.protocol.wire import EndpointHealth

log = logging.getLogger("localroute.endpoints")

Circuit = Literal["closed", "open", "half_open"]


def display(url: str) -> str:
    """`url` without a user:password part, for logs, /health and metric labels."""
    return re.sub(r"^([a-z]+://)[^/@]*@", r"\1", url.rstrip("/"))


class Endpoint:
    """One engine server of a rung, as the gateway sees it."""

    def __init__(self, url: str) -> None:
        url = url.rstrip("/")
        self.url = url.removesuffix("/v1")  # the server's root, given with or without its /v1
        self.name = display(self.url)
        self.outstanding = 0  # requests sent and not yet finished
        self.served = 0
        self.failures = 0  # every failed request or health check
        self.in_a_row = 0  # failures since the last success
        self.opens = 0  # how many times its circuit opened
        self.circuit: Circuit = "closed"
        self.opened_at = 0.0
        self.healthy: bool | None = None  # the last health check's verdict; None: not checked yet
        self.last_error: str | None = None
        self.peer: str | None = None  # the address its last connection reached
        self.trusted: bool | None = None  # ... and whether that is inside `trusted_networks`
        # Attempts waiting for its first byte: cut (their scope expires) when its circuit opens, so
        # that a hung endpoint's requests fail over now rather than at the read timeout.
        self.waiting: set[asyncio.Timeout] = set()

    def snapshot(self) -> EndpointHealth:
        return {
            "url": self.name,
            "state": "up" if self.healthy else ("unknown" if self.healthy is None else "down"),
            "circuit": self.circuit,
            "outstanding": self.outstanding,
            "served": self.served,
            "failures": self.failures,
            "failures_in_a_row": self.in_a_row,
            "opens": self.opens,
            "peer": self.peer,
            "trusted": self.trusted,
            "last_error": self.last_error,
        }


class Balancer:
    """Picks the endpoint for each attempt and keeps every endpoint's circuit."""

    def __init__(
        self, name: str, urls: Collection[str], cfg: Balance, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.name = name
        self.cfg = cfg
        self.endpoints = [Endpoint(u) for u in urls]
        self._clock = clock
        self._turn = 0

    def pick(self, tried: Collection[Endpoint], private: bool) -> Endpoint | None:
        """The endpoint for the next attempt: a closed circuit, not tried yet for this request, with the
        fewest outstanding requests; ties go round in turn. A private request prefers endpoints last
        seen inside the trusted networks (the transport still checks the one it reaches)."""
        n = len(self.endpoints)
        best: Endpoint | None = None
        best_key: tuple[bool, int, int] | None = None
        for i, ep in enumerate(self.endpoints):
            if ep.circuit != "closed" or ep in tried:
                continue
            key = (private and ep.trusted is False, ep.outstanding, (i - self._turn) % n)
            if best_key is None or key < best_key:
                best, best_key = ep, key
        if best is not None:
            self._turn = (self.endpoints.index(best) + 1) % n
        return best

    def any_closed(self) -> bool:
        return any(ep.circuit == "closed" for ep in self.endpoints)

    def due_probes(self) -> list[Endpoint]:
        """Endpoints to health-check now: every closed one, and each open one whose `open_s` has passed
        (it turns half-open: the probe decides)."""
        now = self._clock()
        due = []
        for ep in self.endpoints:
            if ep.circuit == "open" and now - ep.opened_at >= self.cfg.open_s:
                ep.circuit = "half_open"
                log.info("endpoint %s of %s: circuit half-open, probing", ep.name, self.name)
            if ep.circuit != "open":
                due.append(ep)
        return due

    def succeeded(self, ep: Endpoint, *, probe: bool = False) -> None:
        ep.in_a_row = 0
        ep.last_error = None
        if probe:
            ep.healthy = True
        if ep.circuit != "closed":
            ep.circuit = "closed"
            log.info("endpoint %s of %s: circuit closed", ep.name, self.name)

    def failed(self, ep: Endpoint, why: str, *, probe: bool = False) -> None:
        """Count a failure; open the circuit after `failures_to_open` in a row (or at once when
        half-open), and then cut the attempts still waiting on it."""
        ep.failures += 1
        ep.in_a_row += 1
        ep.last_error = why
        if probe:
            ep.healthy = False
        reopen = ep.circuit == "half_open"
        if reopen or (ep.circuit == "closed" and ep.in_a_row >= self.cfg.failures_to_open):
            ep.circuit, ep.opened_at = "open", self._clock()
            ep.opens += 1
            log.warning(
                "endpoint %s of %s: circuit open for %gs after %d failure(s) in a row: %s",
                ep.name, self.name, self.cfg.open_s, ep.in_a_row, why,
            )  # fmt: skip
            for scope in ep.waiting:
                scope.reschedule(asyncio.get_running_loop().time())  # expires on the next loop turn
