"""The one mapping from a failed HTTP exchange (an httpx or OS error) to the APIError a rung raises.

Engines and the remote provider name the peer and the errors differently, but classify a failure the
same way: a timeout, a peer that could not be reached, or a connection that closed or broke, before the
answer started or in the middle of it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import httpx

from localroute.errors import APIError

# What a connection that failed raises: httpx's transport errors, and the OS's from a Unix socket.
TRANSPORT_ERRORS: tuple[type[Exception], ...] = (httpx.TransportError, OSError)


@dataclass(frozen=True, slots=True)
class Peer:
    """The other end of a connection, as messages name it, and the errors its failures become."""

    who: str  # "The engine", "Remote provider 'frontier'"
    deadline: str  # how long it had: "in time", "within read_timeout_s=30s"
    timed_out: Callable[[str], APIError]  # built from the message
    lost: Callable[[str], APIError]


def transport_error(exc: Exception, peer: Peer, *, started: bool = False) -> APIError:
    """The APIError for `exc`, a failure talking to `peer`; `started`: after the answer began."""
    if isinstance(exc, httpx.TimeoutException):
        verb = "stopped sending" if started else "did not answer"
        return peer.timed_out(f"{peer.who} {verb} {peer.deadline}.")
    if isinstance(exc, httpx.ConnectError):
        what = "could not be reached"
    elif started:
        what = "dropped the connection"
    else:
        what = "closed the connection without answering"
    return peer.lost(f"{peer.who} {what} ({type(exc).__name__}).")
