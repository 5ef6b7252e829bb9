"""Which local models are loaded: the memory budget, least-recently-used eviction and the idle TTL.

Engines whose processes run on this box (`Managed`) ask the `Placement` before they load (`admit`) and
tell it when they stop (`release`) or finish a request (`notify`); it stops those idle past their TTL
(`sweep`), whatever memory they hold (none, in the budget's sense, for a GPU server). The placement
never stops a model with a request in flight or a load under way, and never starts one that its
estimate says will not fit: the budget, or the RAM the OS has free, whichever is smaller. The OOM
killer never decides.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import anyio

from localroute.config.schema import Config
from localroute.errors import EngineUnavailableError
from localroute.host import resources
from localroute.host.resources import GPU, Footprint, MiB

log = logging.getLogger("localroute.lifecycle")
OverBudget = Literal["queue", "route", "fail"]


class OverBudgetError(EngineUnavailableError):
    """A model cannot be loaded within the memory budget. `reroute`: the router may try another rung
    (`on_over_budget = "route"`); otherwise the request is answered with this 503."""

    default_code = "over_memory_budget"

    def __init__(self, message: str, *, reroute: bool) -> None:
        super().__init__(message, headers={"Retry-After": "5"})
        self.reroute = reroute


@runtime_checkable
class Managed(Protocol):
    """An engine whose process holds memory on this box, as the placement sees it."""

    name: str
    idle_since: float  # time.monotonic() of the last request's start or end, or of the load

    def attach(self, placement: Placement) -> None:
        """Report to `placement` from now on: `admit` before loading, `release` after stopping."""

    def footprint(self) -> Footprint | None:
        """Estimated resident bytes once loaded; None when the weights are not on disk."""

    def busy(self) -> bool:
        """A request is admitted, or a load is under way: it must not be stopped now."""

    def idle_ttl(self) -> float | None:
        """Seconds without a request after which the engine stops; None: never."""

    async def unload(self, reason: str) -> bool:
        """Stop the process if not busy (its memory returns); False if it was busy."""


class Placement:
    """Admits model loads under `budget` bytes and stops idle ones (LRU first, or after their TTL)."""

    def __init__(
        self,
        budget: int,
        on_over_budget: OverBudget = "route",
        *,
        available: Callable[[], int] = resources.available_ram,
        budget_text: str = "",
    ) -> None:
        self.budget = budget
        self.budget_text = budget_text or f"{budget // MiB}MiB"
        self.on_over_budget = on_over_budget
        self._available = available
        self._models: dict[str, Managed] = {}
        self._reserved: dict[str, int] = {}  # name -> estimated bytes, from admit to release
        self._lock = asyncio.Lock()
        self._changed = asyncio.Event()
        self._gpus: tuple[float, list[GPU]] | None = None  # nvidia-smi is slow: asked every 10 s at most
        self.evictions = 0

    @classmethod
    def from_config(cls, config: Config) -> Placement:
        res = config.resources
        budget = resources.parse_budget(res.memory_budget, resources.total_ram())
        return cls(budget, res.on_over_budget, budget_text=res.memory_budget)

    def manage(self, model: Managed) -> None:
        self._models[model.name] = model
        model.attach(self)
        fp = model.footprint()
        if fp is not None:
            log.info("model %s: estimated footprint %d MiB (%s)", model.name, fp.total_mib, fp.method)

    # -- called by engines -----------------------------------------------------------------------

    async def admit(self, model: Managed, wait_s: float) -> None:
        """Reserve room for `model` before it loads: evict idle models, least recently used first.
        If that cannot make room, wait up to `wait_s` for busy ones to finish (`queue`), or raise
        OverBudgetError (`route`: the router moves on; `fail`: the client gets the 503)."""
        fp = model.footprint()
        need = fp.total if fp is not None else 0
        deadline = time.monotonic() + wait_s
        while True:
            async with self._lock:
                self._reserved.pop(model.name, None)
                why = self._shortfall(need, 0)
                if why is not None and self._shortfall(need, self._evictable_bytes(model)) is None:
                    for victim in self._idle(model):
                        if await victim.unload(f"evicted (least recently used) to load {model.name}"):
                            self.evictions += 1
                        why = self._shortfall(need, 0)
                        if why is None:
                            break
                if why is None:
                    self._reserved[model.name] = need
                    return
                hopeless = need > self.budget or not any(m.busy() for m in self._others(model))
                if self.on_over_budget != "queue" or hopeless or time.monotonic() >= deadline:
                    raise self._refusal(model.name, need, why)
                self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), max(deadline - time.monotonic(), 0))

    def release(self, name: str) -> None:
        """The model's process is gone: its reservation returns to the budget."""
        if self._reserved.pop(name, None) is not None:
            self._changed.set()

    def notify(self) -> None:
        """A request ended: a queued load may now evict that model."""
        self._changed.set()

    # -- decisions -------------------------------------------------------------------------------

    def _others(self, model: Managed) -> list[Managed]:
        """The other loaded models that hold budgeted memory: stopping one without any (a vLLM server,
        whose memory is the GPU's) frees nothing here, and waiting for it to finish gains nothing."""
        return [m for n, m in self._models.items() if n != model.name and self._reserved.get(n, 0) > 0]

    def _idle(self, model: Managed) -> list[Managed]:
        return sorted((m for m in self._others(model) if not m.busy()), key=lambda m: m.idle_since)

    def _evictable_bytes(self, model: Managed) -> int:
        return sum(self._reserved[m.name] for m in self._idle(model))

    def _shortfall(self, need: int, freed: int) -> str | None:
        """Why `need` more bytes do not fit after `freed` bytes are evicted; None if they do."""
        held = sum(self._reserved.values()) - freed
        if held + need > self.budget:
            return (
                f"it needs ~{need // MiB} MiB and loaded models hold ~{held // MiB} MiB "
                f"of the {self.budget // MiB} MiB memory budget ({self.budget_text})"
            )
        free = self._available() + freed
        if free < need:
            return f"it needs ~{need // MiB} MiB and only {free // MiB} MiB of RAM is available"
        return None

    def _refusal(self, name: str, need: int, why: str) -> OverBudgetError:
        reroute = self.on_over_budget == "route"
        log.warning("model %s not loaded: %s (on_over_budget=%s)", name, why, self.on_over_budget)
        return OverBudgetError(f"Model '{name}' cannot be loaded now: {why}.", reroute=reroute)

    # -- idle TTL --------------------------------------------------------------------------------

    async def sweep(self) -> None:
        """Stop every model idle for longer than its TTL. Runs until cancelled; returns at once if
        no model has a TTL."""
        ttls = [t for m in self._models.values() if (t := m.idle_ttl()) is not None]
        if not ttls:
            return
        every = min(max(min(ttls) / 4, 0.25), 30.0)
        while True:
            await asyncio.sleep(every)
            for m in list(self._models.values()):
                if self._expired(m):
                    async with self._lock:
                        if self._expired(m):
                            idle = time.monotonic() - m.idle_since
                            await self._unload(m, f"idle for {idle:.0f}s (idle_ttl_s = {m.idle_ttl():g})")

    def _expired(self, m: Managed) -> bool:
        ttl = m.idle_ttl()
        return (
            ttl is not None
            and m.name in self._reserved
            and not m.busy()
            and time.monotonic() - m.idle_since >= ttl
        )

    async def _unload(self, m: Managed, reason: str) -> None:
        try:
            await m.unload(reason)
        except Exception as exc:  # the sweeper must outlive one engine's failure to stop
            log.error("stopping model %s failed: %s: %s", m.name, exc.__class__.__name__, exc)

    # -- reporting -------------------------------------------------------------------------------

    async def snapshot(self, models_dir: Path) -> dict[str, Any]:
        """The budget and the box, for /health (nvidia-smi runs in a thread)."""
        total, available = resources.ram()
        if self._gpus is None or time.monotonic() - self._gpus[0] > 10.0:
            self._gpus = (time.monotonic(), await anyio.to_thread.run_sync(resources.gpus))
        disk = resources.disk_free(models_dir)
        return {
            "memory_budget": self.budget_text,
            "budget_mib": self.budget // MiB,
            "reserved_mib": sum(self._reserved.values()) // MiB,
            "on_over_budget": self.on_over_budget,
            "loaded": sorted(self._reserved),
            "evictions": self.evictions,
            "ram_total_mib": total // MiB,
            "ram_available_mib": available // MiB,
            "disk_free_mib": disk // MiB,
            "gpus": [dataclasses.asdict(g) for g in self._gpus[1]],
        }
