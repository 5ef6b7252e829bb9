"""What this box has (RAM, disk, GPUs) and what a model will take of it.

psutil for memory and disk; `nvidia-smi` for GPUs, run only when asked and only if it is on PATH.
A GGUF model's footprint is estimated from its header (see `estimate_gguf`), so the estimate is known
before the model is loaded and can be checked against the worker's RSS after.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import psutil

from localroute.host.gguf import read_gguf_metadata

MiB = 1 << 20
_UNITS = {
    "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
    "KIB": 1 << 10, "MIB": 1 << 20, "GIB": 1 << 30, "TIB": 1 << 40,
}  # fmt: skip


def total_ram() -> int:
    return int(psutil.virtual_memory().total)


def available_ram() -> int:
    """Bytes the OS can hand out now without swapping (psutil's `available`)."""
    return int(psutil.virtual_memory().available)


def ram() -> tuple[int, int]:
    """(total, available) bytes of RAM."""
    vm = psutil.virtual_memory()
    return int(vm.total), int(vm.available)


def rss(pid: int, children: bool = True) -> int | None:
    """Resident bytes of a process (and its descendants); None when it is gone."""
    try:
        proc = psutil.Process(pid)
        total = int(proc.memory_info().rss)
        for child in proc.children(recursive=True) if children else ():
            try:
                total += int(child.memory_info().rss)
            except psutil.Error:
                pass  # it exited between listing and reading: it holds nothing now
        return total
    except psutil.Error:
        return None


def disk_free(path: Path) -> int:
    """Free bytes on the filesystem that holds `path`, or the nearest folder above it that exists."""
    p = path.expanduser().absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return int(psutil.disk_usage(str(p)).free)


def parse_budget(text: str, total: int) -> int:
    """Bytes for a budget like "70%" (of `total`), "8GiB", "512MiB" or "2GB"."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(%|[KMGT]i?B|B)\s*", text, re.IGNORECASE)
    if m is None:
        raise ValueError(f"not a memory budget: {text!r} (expected e.g. '70%', '8GiB', '512MiB')")
    number, unit = float(m.group(1)), m.group(2).upper()
    if unit == "%":
        return int(total * number / 100)
    return int(number * _UNITS[unit])


@dataclass(frozen=True)
class GPU:
    index: int
    name: str
    total_mib: int
    free_mib: int


def gpus(timeout: float = 5.0) -> list[GPU]:
    """The NVIDIA GPUs `nvidia-smi` reports, with their free memory; [] without it or on any error."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return []
    query = "--query-gpu=index,name,memory.total,memory.free"
    try:
        out = subprocess.run(
            [exe, query, "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=timeout, check=True,
        ).stdout  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return []
    found = []
    for line in out.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != 4:
            continue
        try:
            found.append(GPU(int(parts[0]), parts[1], int(float(parts[2])), int(float(parts[3]))))
        except ValueError:
            continue  # "[N/A]" and the like: a GPU we cannot place anything on
    return found


# -- footprint -----------------------------------------------------------------------------------

# The worker's own process (Python, llama-cpp-python, numpy, the HTTP server) before any model:
# measured at ~45 MiB; rounded up for allocator slack and llama.cpp's fixed buffers.
BASE_OVERHEAD = 96 * MiB
# Vocabulary tables in llama.cpp and the tokenizer, per token (SmolLM2: 49k, gemma-3: 262k tokens);
# a header that does not say how many tokens is taken to have the largest common vocabulary.
PER_VOCAB_TOKEN = 256
DEFAULT_VOCAB = 262_144
# Without a readable header: weights plus this share of them again for KV cache and buffers.
FALLBACK_RATIO = 1.0


@dataclass(frozen=True)
class Footprint:
    """Estimated resident bytes of one llama.cpp worker; `method` says how they were derived."""

    weights: int
    kv_cache: int
    overhead: int
    method: Literal["gguf", "ratio"]

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.overhead

    @property
    def total_mib(self) -> int:
        return -(-self.total // MiB)


def estimate_gguf(path: Path, n_ctx: int, n_batch: int = 512) -> Footprint:
    """weights (the file, memory-mapped and all touched) + f16 K and V for `n_ctx` tokens
    (2 * n_layer * n_ctx * n_embd_kv * 2 bytes) + overhead: BASE_OVERHEAD, PER_VOCAB_TOKEN per token,
    and the attention scores of one micro-batch (n_ctx * n_ubatch * n_head * 4 bytes, f32).
    A header that cannot be read gives weights * (1 + FALLBACK_RATIO) + BASE_OVERHEAD."""
    weights = path.stat().st_size
    try:
        meta = read_gguf_metadata(path)
        arch = str(meta["general.architecture"])
        n_layer = int(meta[f"{arch}.block_count"])
        n_embd = int(meta[f"{arch}.embedding_length"])
        n_head = int(meta[f"{arch}.attention.head_count"])
        n_head_kv = int(meta.get(f"{arch}.attention.head_count_kv", n_head))
        head_k = int(meta.get(f"{arch}.attention.key_length", n_embd // max(n_head, 1)))
        head_v = int(meta.get(f"{arch}.attention.value_length", head_k))
        n_vocab = int(meta.get(f"{arch}.vocab_size", meta.get("tokenizer.ggml.tokens.length", DEFAULT_VOCAB)))
    except (ValueError, KeyError, TypeError, OSError):
        return Footprint(weights, int(weights * FALLBACK_RATIO), BASE_OVERHEAD, "ratio")
    kv = n_layer * n_ctx * n_head_kv * (head_k + head_v) * 2
    scores = n_ctx * min(n_batch, 512) * n_head * 4
    return Footprint(weights, kv, BASE_OVERHEAD + n_vocab * PER_VOCAB_TOKEN + scores, "gguf")
