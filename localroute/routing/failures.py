"""What the router does when a rung fails: move on (and how the move is named), fail closed for a
private request, or give up on a rung above that is still thinking near the deadline."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from localroute.errors import (
    APIError,
    ContextLengthExceededError,
    DeadlineExceededError,
    EngineUnavailableError,
    OverloadedError,
    UpstreamError,
)
from localroute.host.lifecycle import OverBudgetError
from localroute.privacy.guard import PrivacyViolationError
from localroute.protocol.records import Outcome

T = TypeVar("T")
KEEP_MARGIN_S = 0.5  # how long before the deadline an escalation is abandoned for the kept answer


def outcome(exc: APIError) -> Outcome:
    return "refused" if isinstance(exc, PrivacyViolationError) else "error"


def fail_closed(exc: APIError) -> APIError:
    """What a private request gets when no local rung could answer: never a remote attempt."""
    if isinstance(exc, OverloadedError):
        return exc  # busy, not unservable: the client should retry after Retry-After
    if isinstance(exc, ContextLengthExceededError):
        return ContextLengthExceededError(
            exc.message + " This request is private, so it is not sent to a remote model.", param=exc.param
        )
    return PrivacyViolationError(
        f"No local model could serve this private request ({exc.code or exc.type}); "
        "it is not sent off this machine."
    )


def failure_route(exc: APIError) -> str | None:
    """How to move on after a rung failed, or None when the client's request itself is at fault, or
    the memory budget's policy says to answer with the error (`on_over_budget = "fail"`)."""
    if isinstance(exc, OverBudgetError):
        return "fallback:over_memory_budget" if exc.reroute else None
    if isinstance(exc, ContextLengthExceededError):
        return "escalated:context"
    if isinstance(exc, EngineUnavailableError | UpstreamError | OverloadedError) or exc.status >= 500:
        return "fallback:engine_error"
    return None


async def before(aw: Awaitable[T], deadline: float | None) -> T:
    """`aw`, given up shortly before the request's deadline: a kept local answer is worth more to the
    client than a 504 from a rung above that is still thinking (the caller then keeps its answer)."""
    if deadline is None:
        return await aw
    try:
        async with asyncio.timeout_at(deadline - KEEP_MARGIN_S):
            return await aw
    except TimeoutError:
        raise DeadlineExceededError("The rung above did not answer before the deadline.") from None
