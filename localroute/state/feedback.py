"""The feedback store across replicas (`[state] url`): a label reaches the replica that served the request.

Each replica keeps its own feedback rows (a SQLite file beside its audit log, observe/feedback.py):
the features of a request are computed and kept where it was served. What replicas share is small:
which replica served each request id (`<prefix>fbr:<id>`, kept as long as the rows are), and a queue
of labels per replica (`<prefix>fbq:<replica>`). A label posted to another replica is queued for the
one that served it, which applies it the next time it drains its queue (every few seconds, and before
each feedback call it gets). docs/learning.md says why rows are not moved to the store instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from localroute.state.limits import SharedRateLimiter

MAX_QUEUED = 10_000  # labels waiting for one replica; the oldest go first beyond it
TAKE_AT_ONCE = 256
OWNER_TRIES, OWNER_STEP_S = 9, 0.125  # an unknown id's owner is looked for during ~1 s
QUEUE_TTL_S = 7 * 86_400  # a replica gone for a week loses what was queued for it

# KEYS[1]: the queue; ARGV[1]: how many. LRANGE + LTRIM in one step: no label is taken twice.
_TAKE = """
local items = redis.call('LRANGE', KEYS[1], 0, tonumber(ARGV[1]) - 1)
redis.call('LTRIM', KEYS[1], #items, -1)
return items
"""
# KEYS[1]: the queue; ARGV[1]: the label (JSON), ARGV[2]: the bound, ARGV[3]: the queue's expiry.
_PUT = """
redis.call('RPUSH', KEYS[1], ARGV[1])
redis.call('LTRIM', KEYS[1], -tonumber(ARGV[2]), -1)
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[3]))
return 1
"""


class SharedFeedback:
    """Where each request was served, and the labels queued for this replica."""

    def __init__(self, limiter: SharedRateLimiter, replica: str, keep_s: float) -> None:
        self._client: Any = limiter._client
        self._prefix = limiter._prefix
        self._timeout = limiter._timeout
        self.replica = replica
        self._keep = max(1, int(keep_s))
        self._take = self._client.register_script(_TAKE)
        self._put = self._client.register_script(_PUT)
        self._tasks: set[asyncio.Task[None]] = set()

    def served(self, rid: str) -> None:
        """Say, in the background, that `rid` was served (and its row kept) here."""

        async def run() -> None:
            with contextlib.suppress(Exception):  # a store that fails costs this row its remote labels
                async with asyncio.timeout(self._timeout * 2):
                    await self._client.set(f"{self._prefix}fbr:{rid}", self.replica, ex=self._keep)

        task = asyncio.get_running_loop().create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def forward(self, rid: str, outcome: str, value: float) -> str | None:
        """Queue a label for the replica that served `rid`; its id, or None when no other replica did.
        Raises when the store cannot be reached (the caller answers 503: a label is not dropped silently)."""
        owner = await self._owner(rid)
        if not owner or owner == self.replica:
            return None
        async with asyncio.timeout(self._timeout * 2):
            item = json.dumps({"id": rid, "outcome": outcome, "value": value})
            await self._put(keys=[f"{self._prefix}fbq:{owner}"], args=[item, MAX_QUEUED, QUEUE_TTL_S])
        return str(owner)

    async def _owner(self, rid: str) -> str | None:
        """The replica that served `rid`. `served` writes it in the background, so a label posted to
        another replica right after the answer may arrive first: asked again, OWNER_TRIES times."""
        for attempt in range(OWNER_TRIES):
            if attempt:
                await asyncio.sleep(OWNER_STEP_S)
            async with asyncio.timeout(self._timeout * 2):
                owner = await self._client.get(f"{self._prefix}fbr:{rid}")
            if owner:
                return str(owner)
        return None

    async def take(self) -> list[tuple[str, str, float]]:
        """Labels other replicas queued for this one (up to TAKE_AT_ONCE), oldest first."""
        async with asyncio.timeout(self._timeout * 2):
            items = await self._take(keys=[f"{self._prefix}fbq:{self.replica}"], args=[TAKE_AT_ONCE])
        out: list[tuple[str, str, float]] = []
        for raw in items or ():
            with contextlib.suppress(ValueError, KeyError, TypeError):
                d = json.loads(raw)
                out.append((str(d["id"]), str(d["outcome"]), float(d["value"])))
        return out
