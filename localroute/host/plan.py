"""What this box has, and the ladder `localroute init` proposes for it: pure functions of the box, the
memory budget, whether the hub can be reached, and the catalogue (host/catalogue.py)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import psutil

from localroute.host.catalogue import Catalogue, Entry
from localroute.host.resources import GPU, MiB, disk_free, gpus

MAX_LOCAL_RUNGS = 3  # llama.cpp chat rungs: the smallest, the largest, and evenly between
MAX_THREADS = 8  # decode is memory-bound: more threads than this mostly wait
# Difficulty thresholds (`max_score`) of the local rungs, cheapest to dearest: defaults, not measured.
FIRST_MAX_SCORE, TOP_MAX_SCORE = 0.45, 0.75


@dataclass(frozen=True)
class Box:
    """What `inspect_box` found."""

    cpu: str
    cores_logical: int
    cores_physical: int | None
    ram_total: int
    ram_available: int
    disk_free: int  # where models go
    gpus: tuple[GPU, ...]

    @property
    def threads(self) -> int:
        return max(1, min(self.cores_physical or self.cores_logical, MAX_THREADS))

    def describe(self) -> str:
        """One line, stable between runs (nothing that changes by the minute)."""
        cores = f"{self.cores_logical} logical cores" + (
            f" ({self.cores_physical} physical)" if self.cores_physical else ""
        )
        gpu = ", ".join(f"{g.name} {g.total_mib} MiB" for g in self.gpus) or "none"
        return f"{self.cpu}; {cores}; {self.ram_total // MiB} MiB RAM; GPUs: {gpu}"


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine() or "unknown CPU"


def inspect_box(models_dir: Path) -> Box:
    """RAM, cores and disk by psutil; GPUs by nvidia-smi when it is on PATH."""
    vm = psutil.virtual_memory()
    return Box(cpu_name(), psutil.cpu_count() or 1, psutil.cpu_count(logical=False), int(vm.total),
               int(vm.available), disk_free(models_dir), tuple(gpus()))  # fmt: skip


@dataclass(frozen=True)
class Rung:
    """A catalogue entry placed on the ladder."""

    entry: Entry
    tier: int
    max_score: float


@dataclass(frozen=True)
class Plan:
    chat: tuple[Rung, ...]  # cheapest first: llama.cpp rungs, then at most one vLLM rung
    embed: Entry | None
    left_out: tuple[tuple[str, str], ...]  # (name, why)


def _disk_need(e: Entry) -> int | None:
    size = getattr(e.source, "size", None)
    return int(size) if size is not None else None


def _why_not(e: Entry, box: Box, budget: int, hub: bool) -> str:
    if e.needs_hub and not hub:
        return "needs the Hugging Face hub, which cannot be reached"
    need = e.approx_memory_mib * MiB
    if e.engine == "vllm":
        if not box.gpus:
            return "a vLLM model needs an NVIDIA GPU; none found"
        free = max(g.free_mib for g in box.gpus)
        if e.approx_memory_mib > free:
            return (f"needs ~{e.approx_memory_mib} MiB of GPU memory (approximate); "
                    f"the largest GPU has {free} free")  # fmt: skip
        return ""
    if need > budget:
        return f"needs ~{e.approx_memory_mib} MiB (approximate) > memory budget {budget // MiB} MiB"
    disk = _disk_need(e)
    if disk is not None and disk > box.disk_free:
        return f"needs {disk // MiB} MiB of disk; {box.disk_free // MiB} MiB free"
    return ""


def _spread(n: int, keep: int) -> list[int]:
    """Indices of `keep` items out of `n` sorted ones: the first, the last, evenly between."""
    if n <= keep:
        return list(range(n))
    return sorted({round(i * (n - 1) / (keep - 1)) for i in range(keep)})


def plan_ladder(cat: Catalogue, box: Box, budget: int, hub: bool, max_local: int = MAX_LOCAL_RUNGS) -> Plan:
    """The ladder for this box: every entry that fits (memory budget for llama.cpp, GPU memory for vLLM,
    hub reachability, disk), at most `max_local` llama.cpp chat rungs and one vLLM rung (the strongest
    that fits); the embedding rung that fits first. Each rung fits the budget alone: the lifecycle
    unloads idle models to make room (host/lifecycle.py). Everything else is in `left_out`, with why."""
    left: list[tuple[str, str]] = []
    fits: list[Entry] = []
    for e in sorted(cat.models, key=lambda e: e.rank):
        why = _why_not(e, box, budget, hub)
        if why:
            left.append((e.name, why))
        else:
            fits.append(e)
    local = [e for e in fits if e.engine == "llama_cpp" and e.task == "chat"]
    kept = [local[i] for i in _spread(len(local), max_local)]
    left += [(e.name, f"the ladder keeps at most {max_local} llama.cpp rungs (smallest, largest, between)")
             for e in local if e not in kept]  # fmt: skip
    vllm = [e for e in fits if e.engine == "vllm" and e.task == "chat"]
    left += [(e.name, "one vLLM rung is proposed: the strongest that fits") for e in vllm[:-1]]
    chat = kept + vllm[-1:]
    n = len(chat)
    step = (TOP_MAX_SCORE - FIRST_MAX_SCORE) / max(n - 1, 1)
    rungs = tuple(Rung(e, i, round(FIRST_MAX_SCORE + i * step, 2)) for i, e in enumerate(chat))
    embeds = [e for e in fits if e.task == "embed"]
    embed = embeds[0] if embeds else None
    left += [(e.name, "one embedding rung is proposed") for e in embeds[1:]]
    first = rungs[0].entry if rungs and rungs[0].entry.engine == "llama_cpp" else None
    if embed is not None and first is not None:
        # both start with the gateway: together they must fit, or one would evict the other at startup
        together = first.approx_memory_mib + embed.approx_memory_mib
        if together * MiB > budget:
            why = (f"with {first.name} it needs ~{together} MiB (approximate) > memory budget "
                   f"{budget // MiB} MiB; both would start with the gateway")  # fmt: skip
            left.append((embed.name, why))
            embed = None
    return Plan(rungs, embed, tuple(left))
