"""Spend budgets per API key (`[[keys]] budget_usd`), kept in this process or, for replicas, in
Redis/Valkey.

Spend is counted per calendar period in UTC ("2026-12-03" for a daily budget, "2026-12" for a
monthly one), so every replica names the same counter without agreeing on a reset time: a new period
is a new counter, and the old one expires. With a shared store each charge is one INCRBYFLOAT (with
its expiry) in a Lua script, atomic on the server. If the store cannot be reached, the replica keeps
going on what it knew (the last total it read plus what it charged since) and adds its own charges to
the store once it is back, so an outage neither lifts the budget nor loses spend. docs/keys.md says why.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal, Protocol

from localroute.state.limits import Outage

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from localroute.state.limits import SharedRateLimiter

log = logging.getLogger("localroute.state")
Period = Literal["day", "month"]


def period_id(period: Period, now: datetime | None = None) -> str:
    """The name of the current budget period, in UTC."""
    now = now or datetime.now(UTC)
    return now.strftime("%Y-%m-%d" if period == "day" else "%Y-%m")


def seconds_left(period: Period, now: datetime | None = None) -> float:
    """Seconds until the current period ends (when a spent budget is available again)."""
    now = now or datetime.now(UTC)
    if period == "day":
        end = datetime(now.year, now.month, now.day, tzinfo=UTC) + timedelta(days=1)
    else:
        end = datetime(now.year + now.month // 12, now.month % 12 + 1, 1, tzinfo=UTC)
    return (end - now).total_seconds()


class Budgets(Protocol):
    async def spent(self, key: str, period: Period) -> float:
        """USD charged to `key` in the current period."""
        ...

    async def charge(self, key: str, period: Period, usd: float) -> None:
        """Add one request's cost to `key`'s current period."""
        ...

    async def flush(self) -> None:
        """Send what was charged here and not yet shared (at shutdown)."""
        ...


class LocalBudgets:
    """Spend per key and period in this process (one gateway, or `[state]` unset)."""

    def __init__(self) -> None:
        self._spent: dict[tuple[str, str], float] = defaultdict(float)

    def add(self, slot: tuple[str, str], usd: float) -> None:
        self._spent[slot] += usd

    def get(self, slot: tuple[str, str]) -> float:
        return self._spent.get(slot, 0.0)

    def forget_before(self, current: set[str]) -> None:
        """Drop counters of periods that are over (bounded: keys x current periods)."""
        for slot in [s for s in self._spent if s[1] not in current]:
            del self._spent[slot]

    async def spent(self, key: str, period: Period) -> float:
        return self.get((key, period_id(period)))

    async def charge(self, key: str, period: Period, usd: float) -> None:
        if usd > 0:
            self.forget_before({period_id("day"), period_id("month")})
            self.add((key, period_id(period)), usd)

    async def flush(self) -> None:
        """Nothing to send: this process is the only counter."""


# KEYS[1]: the counter; ARGV[1]: USD to add; ARGV[2]: expiry in seconds. Returns the new total.
_CHARGE = """
local v = redis.call('INCRBYFLOAT', KEYS[1], ARGV[1])
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[2]))
return v
"""


class SharedBudgets:
    """Spend counters in Redis/Valkey, shared by every replica on the same store (and client)."""

    def __init__(self, limiter: SharedRateLimiter) -> None:
        self._client: Any = limiter._client
        self._script: Callable[..., Awaitable[Any]] = self._client.register_script(_CHARGE)
        self._prefix = limiter._prefix + "bud:"
        self._timeout = limiter._timeout
        # Budgets keep their own outage: a budget failure does not make rate limits per replica. Counted
        # with the store's other failures (metrics).
        self._outage = Outage("budgets count this replica's spend", limiter._on_error)
        self._known = LocalBudgets()  # the last total read from the store
        self._unsent = LocalBudgets()  # charged here while the store was down

    def _name(self, key: str, pid: str) -> str:
        return f"{self._prefix}{pid}:{key}"

    async def flush(self) -> None:
        """Send the spend kept while the store was down (at shutdown); what still fails is logged."""
        for slot in list(self._unsent._spent):
            pending = self._unsent._spent.pop(slot, 0.0)
            if pending <= 0:
                continue
            try:
                async with asyncio.timeout(self._timeout * 2):
                    await self._script(keys=[self._name(*slot)], args=[repr(pending), _ttl(slot[1])])
            except Exception as exc:
                self._unsent.add(slot, pending)
                log.warning("budget spend not sent at shutdown: %s", exc.__class__.__name__)

    async def spent(self, key: str, period: Period) -> float:
        slot = (key, period_id(period))
        if not self._outage.down():
            try:
                async with asyncio.timeout(self._timeout * 2):
                    value = await self._client.get(self._name(*slot))
                self._known.forget_before({period_id("day"), period_id("month")})
                self._known._spent[slot] = float(value or 0.0)
            except Exception as exc:  # down or slow: decide on what this replica knows
                self._outage.failed(exc)
        return self._known.get(slot) + self._unsent.get(slot)

    async def charge(self, key: str, period: Period, usd: float) -> None:
        if usd <= 0:
            return
        slot = (key, period_id(period))
        if self._outage.down():
            self._unsent.add(slot, usd)
            return
        # Taken before the await: a concurrent charge cannot send it again, nor a failure's spend be lost.
        pending = self._unsent._spent.pop(slot, 0.0)
        ttl = int(seconds_left(period)) + 86_400  # kept a day past its period, then gone
        try:
            async with asyncio.timeout(self._timeout * 2):
                value = await self._script(keys=[self._name(*slot)], args=[repr(usd + pending), ttl])
            self._known._spent[slot] = float(value)
        except Exception as exc:  # kept here and sent with this key's next charge that succeeds
            self._unsent.add(slot, usd + pending)
            self._outage.failed(exc)


def _ttl(pid: str) -> int:
    """A counter's expiry: a day past the end of its period (named by `pid`)."""
    period: Period = "day" if len(pid) == len("2026-12-03") else "month"
    return int(seconds_left(period)) + 86_400
