"""Helpers shared by benchmarks: machine facts, medians, and appending to bench/RESULTS.md."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import statistics
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def versions(*packages: str) -> str:
    out = [f"python {platform.python_version()}"]
    for p in packages:
        try:
            out.append(f"{p} {importlib.metadata.version(p)}")
        except importlib.metadata.PackageNotFoundError:
            out.append(f"{p} (not installed)")
    return ", ".join(out)


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def append_result(module: str, title: str, table: str, notes: str, packages: tuple[str, ...]) -> None:
    cmd = " ".join(["python -m", module, *sys.argv[1:]])
    block = (
        f"\n## {title} — {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n\n"
        f"- command: `{cmd}`\n"
        f"- machine: {os.cpu_count()} cores, {cpu_model()}\n"
        f"- versions: {versions(*packages)}\n\n{table}\n\n{notes}\n"
    )
    with RESULTS.open("a", encoding="utf-8") as fh:
        fh.write(block)
    print(block)
