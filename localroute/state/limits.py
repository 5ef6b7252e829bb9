"""Per-caller rate limits as token buckets, kept in this process or, for replicas, in Redis/Valkey.

With a shared store the bucket is read, refilled and spent by one Lua script, atomically on the
server and by the server's clock, so N replicas behind a load balancer hand out `per_minute`
requests a minute in all, not N times that. If the store cannot be reached within `timeout_s`, the
replica falls back to its own in-process bucket for that call (logged once a minute, counted in
`localroute_state_errors_total`): a rate limit keeps working, per replica, rather than failing every
request while Redis is down. docs/scale-out.md says why.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from typing import TYPE_CHECKING, Any, Protocol

from localroute.config.state import StateConfig

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

log = logging.getLogger("localroute.state")
RETRY_S = 5.0  # after the store failed a call, this long on the replica's own buckets before retrying


class Limiter(Protocol):
    async def take(self, caller: str, per_minute: int) -> float:
        """Spend one request; 0.0 when allowed, else the seconds until the next one is."""
        ...

    async def aclose(self) -> None: ...


class Outage:
    """A shared store's failures as one replica's user of it sees them: after a failure the store is
    left alone for RETRY_S (no timeout paid on every request), the failure is counted (`on_error`),
    and a warning saying what goes on meanwhile (`meanwhile`) is logged at most once a minute."""

    def __init__(self, meanwhile: str, on_error: Callable[[], None] | None = None) -> None:
        self.meanwhile = meanwhile
        self.on_error = on_error
        self._warned_at = -1e9
        self._until = -1e9

    def down(self) -> bool:
        return time.monotonic() < self._until

    def failed(self, exc: BaseException) -> None:
        now = time.monotonic()
        self._until = now + RETRY_S
        if self.on_error is not None:
            self.on_error()
        if now - self._warned_at >= 60:
            self._warned_at = now
            # The exception's class only: a connection error's text can carry the URL and its password.
            log.warning(
                "shared state unreachable (%s); %s until it is back", exc.__class__.__name__, self.meanwhile
            )


class RateLimiter:
    """A token bucket per caller in this process: `per_minute` a minute, bursts up to the same number."""

    def __init__(self, max_callers: int = 10_000) -> None:
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # caller -> (tokens, at)
        self._max = max_callers

    def spend(self, caller: str, per_minute: int, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        rate = per_minute / 60.0
        tokens, at = self._buckets.pop(caller, (float(per_minute), now))
        tokens = min(float(per_minute), tokens + (now - at) * rate)
        wait = 0.0 if tokens >= 1.0 else (1.0 - tokens) / rate
        self._buckets[caller] = (tokens - 1.0 if wait == 0.0 else tokens, now)
        while len(self._buckets) > self._max:  # bounded: the longest-idle callers are forgotten
            self._buckets.popitem(last=False)
        return wait

    async def take(self, caller: str, per_minute: int) -> float:
        return self.spend(caller, per_minute)

    async def aclose(self) -> None:
        return None


# KEYS[1]: the bucket; ARGV[1]: per_minute. Returns the wait in seconds as a string (Lua numbers
# come back to the client as integers). The bucket expires once it would be full again anyway.
_TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local cap = tonumber(ARGV[1])
local rate = cap / 60.0
local b = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(b[1]) or cap
local at = tonumber(b[2]) or now
tokens = math.min(cap, tokens + math.max(0, now - at) * rate)
local wait = 0
if tokens >= 1 then tokens = tokens - 1 else wait = (1 - tokens) / rate end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('EXPIRE', KEYS[1], 61)
return tostring(wait)
"""


class SharedRateLimiter:
    """Token buckets in Redis/Valkey, shared by every replica that points at the same store."""

    def __init__(self, url: str, cfg: StateConfig, on_error: Callable[[], None] | None = None) -> None:
        import redis.asyncio as aioredis  # the `redis` extra; imported only when [state] url is set

        self._client: Any = aioredis.from_url(
            url, socket_timeout=cfg.timeout_s, socket_connect_timeout=cfg.timeout_s, decode_responses=True
        )
        self._script: Callable[..., Awaitable[Any]] = self._client.register_script(_TAKE)
        self._prefix = cfg.key_prefix
        self._timeout = cfg.timeout_s
        self._local = RateLimiter()  # while the store is unreachable
        self._on_error = on_error
        self._outage = Outage("rate limits are per replica", on_error)

    async def take(self, caller: str, per_minute: int) -> float:
        if self._outage.down():  # known down: no timeout paid on every request
            return self._local.spend(caller, per_minute)
        try:
            async with asyncio.timeout(self._timeout * 2):
                wait = await self._script(keys=[f"{self._prefix}rl:{caller}"], args=[per_minute])
            return float(wait)
        except Exception as exc:  # redis-py's errors, timeouts, a closed connection: all mean 'down'
            self._outage.failed(exc)
            return self._local.spend(caller, per_minute)

    async def aclose(self) -> None:
        await self._client.aclose()


def open_limiter(cfg: StateConfig, on_error: Callable[[], None] | None = None) -> Limiter:
    """The limiter `[state]` asks for: shared when a store URL is set, else in this process."""
    url = cfg.resolved_url()
    return SharedRateLimiter(url, cfg, on_error) if url else RateLimiter()


STICKY_TTL_S = 86_400  # a conversation's rung is remembered in the shared store for a day


class SharedConversations:
    """The stickiness map's shared half (routing/sticky.py): answer digest -> "tier:rung" in
    Redis/Valkey, so that a follow-up reaching another replica is not sent lower either. Best effort:
    a store that fails or is slow only costs that replica the other replicas' memory."""

    def __init__(self, limiter: SharedRateLimiter) -> None:
        self._client = limiter._client
        self._prefix = limiter._prefix + "st:"
        self._timeout = limiter._timeout
        self._tasks: set[asyncio.Task[None]] = set()

    def put(self, key: bytes, tier: int, model: str) -> None:
        """Store in the background (never delays the answer)."""

        async def run() -> None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(self._timeout * 2):
                    await self._client.set(self._prefix + key.hex(), f"{tier}:{model}", ex=STICKY_TTL_S)

        task = asyncio.get_running_loop().create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def get_many(self, keys: list[bytes]) -> dict[bytes, tuple[int, str]]:
        if not keys:
            return {}
        try:
            async with asyncio.timeout(self._timeout * 2):
                values = await self._client.mget([self._prefix + k.hex() for k in keys])
        except Exception:  # down or slow: this replica decides from what it remembers itself
            return {}
        out: dict[bytes, tuple[int, str]] = {}
        for k, v in zip(keys, values, strict=True):
            tier, _, model = (v or "").partition(":")
            if model and tier.lstrip("-").isdigit():
                out[k] = (int(tier), model)
        return out
