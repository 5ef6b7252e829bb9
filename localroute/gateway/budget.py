"""Per-key spend budgets at the gateway: admitted before routing, charged with the audited cost.

A key with `budget_usd` is checked before its request is routed; once the period's spend reaches the
budget, the request is refused (429 `budget_exceeded`, in the called API's shape, `Retry-After` the end
of the period) or, with `over_budget = "local"`, routed to local rungs only. Each request's cost, as
its audit record gives it, is then charged to the key: awaited before a JSON answer leaves (so the next
request, on any replica, sees it), in the background after a stream. docs/keys.md says why.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
from collections.abc import Sequence

from localroute.config.models import LOCAL_ENGINES, ModelConfig
from localroute.config.privacy import APIKey
from localroute.config.schema import Config
from localroute.errors import BudgetExceededError
from localroute.routing.policy import Hints
from localroute.state.budgets import Budgets, LocalBudgets, seconds_left

log = logging.getLogger("localroute")


class Billing:
    """Admits requests against their key's budget and charges what they cost."""

    def __init__(self, config: Config, budgets: Budgets | None = None) -> None:
        self.config = config
        self.budgets: Budgets = budgets if budgets is not None else LocalBudgets()
        self._tasks: set[asyncio.Task[None]] = set()

    def _local_only(self, model: str, hints: Hints, rungs: Sequence[ModelConfig]) -> bool:
        """Whether a request can be kept to local rungs without overriding what the client named;
        never when none of `rungs` (those the request may use) is local: the client would get a routing
        error about a tier it never asked for, instead of the budget's 429."""
        named = self.config.model(model) if model != "auto" else None
        if named is not None and named.engine not in LOCAL_ENGINES:
            return False
        if named is None and not any(m.engine in LOCAL_ENGINES for m in rungs):
            return False
        if hints.tier is None or hints.tier == "local":
            return True
        if hints.tier == "remote":
            return False
        tier = [m for m in rungs if str(m.tier) == hints.tier]
        return all(m.engine in LOCAL_ENGINES for m in tier)

    async def admit(
        self, key: APIKey | None, model: str, hints: Hints, rungs: Sequence[ModelConfig] | None = None
    ) -> Hints:
        """The hints to route with; raises BudgetExceededError when the key's budget is spent.
        `rungs`: those the request may be served by (default: the chat ladder)."""
        if key is None or key.budget_usd is None:
            return hints
        spent = await self.budgets.spent(key.name, key.budget_period)
        if spent < key.budget_usd:
            return hints
        candidates = self.config.ladder() if rungs is None else rungs
        if key.over_budget == "local" and self._local_only(model, hints, candidates):
            return hints if hints.tier is not None else dataclasses.replace(hints, tier="local")
        wait = max(1, math.ceil(seconds_left(key.budget_period)))
        where = " for paid models; local models remain available" if key.over_budget == "local" else ""
        every = "daily" if key.budget_period == "day" else "monthly"
        raise BudgetExceededError(
            f"The {every} budget of this API key (${key.budget_usd:g}) is spent{where}. "
            "It renews at the start of the next period (UTC).",
            headers={"Retry-After": str(wait)},
        )

    async def charge(self, key: APIKey | None, usd: float) -> None:
        """Add a request's cost to its key's budget; a failure costs the count, never the answer."""
        if key is None or key.budget_usd is None or not usd > 0:
            return
        try:
            await self.budgets.charge(key.name, key.budget_period, usd)
        except Exception as exc:
            log.error("budget charge failed: %s", exc.__class__.__name__)

    def charge_soon(self, key: APIKey | None, usd: float) -> None:
        """`charge` in the background (after a stream, whose client may be gone)."""
        if key is None or key.budget_usd is None or not usd > 0:
            return
        task = asyncio.get_running_loop().create_task(self.charge(key, usd))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def settle(self, within_s: float) -> None:
        """At shutdown: wait (at most `within_s`) for the charges in the background, then send the
        spend kept while a shared store was down."""
        await settle(self._tasks, within_s)
        try:
            async with asyncio.timeout(within_s):
                await self.budgets.flush()
        except Exception as exc:
            log.warning("budget spend not sent at shutdown: %s", exc.__class__.__name__)


async def settle(tasks: set[asyncio.Task[None]], within_s: float) -> None:
    """Wait for `tasks` (at most `within_s`); those still running then are cancelled."""
    if not tasks:
        return
    _, late = await asyncio.wait(set(tasks), timeout=within_s)
    for task in late:
        task.cancel()
    if late:
        log.warning("shutdown: %d background store call(s) cut short", len(late))
