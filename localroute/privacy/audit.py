"""The audit log: append-only JSONL, one record per request, each record chained to the one before
by SHA-256, so that a deleted, edited or truncated record is found by `localroute audit verify`.

Records hold decisions, privacy classes, rungs tried, tokens, cost and latency; never prompt or
answer text unless the operator opts in, never matched personal data, never keys.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

GENESIS = "0" * 64
log = logging.getLogger("localroute.audit")


def _canonical(record: Mapping[str, Any]) -> bytes:
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def record_hash(record: Mapping[str, Any]) -> str:
    """SHA-256 of the record without its own `hash` field (its `prev` is included)."""
    body = {k: v for k, v in record.items() if k != "hash"}
    return hashlib.sha256(_canonical(body)).hexdigest()


class AuditLog:
    """Appends chained records to one file. Opened once per process; appends are line-atomic."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._drop_torn_tail()
        self._prev = self._tail_hash()
        self._fh = path.open("a", encoding="utf-8")
        os.chmod(path, 0o600)

    def _drop_torn_tail(self) -> None:
        """A crash mid-write leaves a last line without its newline: the record in flight, lost.
        Cut it off, or the next record would be glued onto it and fail to verify, with all after it."""
        if not self.path.exists() or self.path.stat().st_size == 0:
            return
        with self.path.open("rb+") as fh:
            size = fh.seek(0, os.SEEK_END)
            fh.seek(size - 1)
            if fh.read(1) == b"\n":
                return
            keep = 0
            for end in range(size, 0, -65536):
                start = fh.seek(max(0, end - 65536))
                nl = fh.read(end - start).rfind(b"\n")
                if nl >= 0:
                    keep = start + nl + 1
                    break
            fh.truncate(keep)
        log.warning(
            "audit log %s: dropped a torn last record (%d bytes) left by a crash", self.path, size - keep
        )

    def _tail_hash(self) -> str:
        """The hash of the last complete record, so a restart continues the chain."""
        if not self.path.exists() or self.path.stat().st_size == 0:
            return GENESIS
        with self.path.open("rb") as fh:
            fh.seek(max(0, self.path.stat().st_size - 65536))
            lines = fh.read().splitlines()
        for line in reversed(lines):
            try:
                rec = json.loads(line)
            except ValueError:
                continue  # a torn tail: verify will report it; we chain onto the last good record
            if isinstance(rec, dict) and isinstance(rec.get("hash"), str):
                return str(rec["hash"])
        return GENESIS

    def append(self, record: Mapping[str, Any]) -> str:
        body = _canonical({**record, "prev": self._prev})  # what `record_hash` hashes, made once
        digest = hashlib.sha256(body).hexdigest()
        # The hash goes last rather than in sorted place: `verify` re-canonicalises every record, so
        # key order on disk does not matter, and the body is not serialised a second time.
        self._fh.write(body[:-1].decode() + ',"hash":"' + digest + '"}\n')
        self._fh.flush()
        self._prev = digest
        return digest

    def close(self) -> None:
        self._fh.close()


@dataclass
class Verification:
    records: int = 0
    private: int = 0
    private_remote: int = 0
    broken_at: int | None = None  # 1-based line number of the first broken link
    problem: str | None = None
    # A last line without its line end that is not a whole record: the record a crash cut mid-write.
    # It is not a broken link (the next start drops it and chains onto the record before it).
    torn_tail_at: int | None = None
    torn_tail_bytes: int = 0

    @property
    def ok(self) -> bool:
        return self.broken_at is None and self.private_remote == 0

    def report(self) -> str:
        lines = [
            f"records checked: {self.records}",
            f"private records: {self.private}",
            f"private records that touched a remote rung: {self.private_remote}",
        ]
        if self.broken_at is not None:
            lines.append(f"chain BROKEN at line {self.broken_at}: {self.problem}")
        else:
            lines.append("chain intact")
        if self.torn_tail_at is not None:
            lines.append(
                f"torn tail at line {self.torn_tail_at}: {self.torn_tail_bytes} bytes without a line end, "
                "a record cut by a crash mid-write (not tampering; the next start drops it)"
            )
        return "\n".join(lines)


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    with path.open("rb") as fh:
        yield from enumerate(fh, 1)


def verify(path: Path) -> Verification:
    """Check every link of the chain and count private records that reached a remote rung. A torn
    tail (the last line cut short by a crash) is reported as such; anything else amiss breaks the chain."""
    v = Verification()
    prev = GENESIS
    for n, raw in _lines(path):
        try:
            rec = json.loads(raw)
        except ValueError:
            # Only the last line can lack its line end, and a record cut short never parses: that is
            # what a crash mid-write leaves. A whole record without its line end is checked as any other.
            if not raw.endswith(b"\n") and raw.startswith(b"{"):
                v.torn_tail_at, v.torn_tail_bytes = n, len(raw)
            else:
                v.broken_at, v.problem = n, "not valid JSON"
            return v
        if not isinstance(rec, dict):
            v.broken_at, v.problem = n, "not a JSON object"
            return v
        if rec.get("prev") != prev:
            v.broken_at, v.problem = n, "does not follow the previous record (deleted or reordered)"
            return v
        if rec.get("hash") != record_hash(rec):
            v.broken_at, v.problem = n, "content does not match its hash (edited)"
            return v
        prev = rec["hash"]
        v.records += 1
        if (rec.get("privacy") or {}).get("class") == "private":
            v.private += 1
            if any(a.get("remote") and a.get("outcome") != "refused" for a in rec.get("attempts") or ()):
                v.private_remote += 1
    return v
