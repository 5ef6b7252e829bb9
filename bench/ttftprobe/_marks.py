"""Timestamps for bench.ttft_breakdown: one `name time` line per event, appended to the file named by
$LOCALROUTE_TTFT_MARKS with one unbuffered write (time.monotonic(): one clock for every process)."""

from __future__ import annotations

import json
import os
import time

_FD: list[int] = []


def mark(name: str) -> None:
    t = time.monotonic()
    if not _FD:
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT
        _FD.append(os.open(os.environ["LOCALROUTE_TTFT_MARKS"], flags, 0o600))
    os.write(_FD[0], f"{name} {t:.6f}\n".encode())


def has_content(frame: bytes) -> bool:
    """An SSE frame (or several) whose chunk carries text."""
    for line in frame.split(b"\n"):
        if line.startswith(b"data: {"):
            chunk = json.loads(line[6:])
            for ch in chunk.get("choices") or ():
                if (ch.get("delta") or {}).get("content"):
                    return True
    return False
