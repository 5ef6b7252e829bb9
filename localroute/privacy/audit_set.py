"""Several audit logs judged together: one per gateway replica, each its own hash chain.

Each log is verified on its own (`audit.verify`); across logs, a request id recorded twice, a log
that holds records of two replicas, or two logs claiming one replica are problems too: they mean
records were copied, merged by hand or written by misconfigured replicas.
"""

from __future__ import annotations

import json
import sqlite3
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from localroute.privacy.audit import Verification, verify

MAX_PROBLEMS = 20
MAX_REPLICAS = 100  # distinct replica ids kept per log: more is a problem already, and is reported
BATCH = 10_000  # request ids per insert
CACHE_KIB = 16_384  # SQLite's page cache for the ids: the memory verify_set uses, whatever the logs hold


@dataclass
class SetVerification:
    logs: list[tuple[Path, Verification]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems and all(v.ok for _, v in self.logs)

    def report(self) -> str:
        if len(self.logs) == 1 and not self.problems:
            return self.logs[0][1].report()
        lines: list[str] = []
        for path, v in self.logs:
            lines.append(f"== {path}")
            lines += ["  " + line for line in v.report().splitlines()]
        lines.append(f"== {len(self.logs)} logs: {sum(v.records for _, v in self.logs)} records in all")
        lines += self.problems or ["no request recorded twice; one replica per log"]
        return "\n".join(lines)


def _records(path: Path) -> Iterator[tuple[str | None, str]]:
    """(request id, replica id) of each whole record of a log, read line by line (a torn or bad line
    is verify's matter)."""
    with path.open("rb") as fh:
        for raw in fh:
            try:
                rec = json.loads(raw)
            except ValueError:
                continue
            if isinstance(rec, dict):
                rid = rec.get("id")
                yield (rid if isinstance(rid, str) else None), str(rec.get("replica") or "")


def verify_set(paths: Sequence[Path]) -> SetVerification:
    """Verify each log, then the set. Memory stays bounded whatever the logs hold: request ids go to a
    temporary SQLite file (its page cache capped), and duplicates are found by its sort, on disk."""
    out = SetVerification()
    owner: dict[str, Path] = {}
    with tempfile.TemporaryDirectory(prefix="localroute-verify-") as tmp:
        db = sqlite3.connect(Path(tmp) / "ids.sqlite3")
        try:
            db.execute("PRAGMA journal_mode=OFF")
            db.execute("PRAGMA synchronous=OFF")
            db.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
            db.execute("PRAGMA temp_store=FILE")
            db.execute("CREATE TABLE ids (id TEXT NOT NULL, log INTEGER NOT NULL)")
            for n, path in enumerate(paths):
                out.logs.append((path, verify(path)))
                replicas = _scan(db, n, path)
                if len(replicas) > 1:
                    names = ", ".join(sorted(r or "(none)" for r in replicas))
                    out.problems.append(f"{path}: records of several replicas in one log ({names})")
                for r in sorted(replicas):
                    if r and r in owner:
                        out.problems.append(f"{path}: replica {r!r} also writes {owner[r]}")
                    if r:
                        owner.setdefault(r, path)
            _duplicates(db, paths, out)
        finally:
            db.close()
    return out


def _scan(db: sqlite3.Connection, n: int, path: Path) -> set[str]:
    """Store the log's request ids (in batches); its replica ids (at most MAX_REPLICAS are kept)."""
    replicas: set[str] = set()
    batch: list[tuple[str, int]] = []
    for rid, replica in _records(path):
        if len(replicas) < MAX_REPLICAS:
            replicas.add(replica)
        if rid is not None:
            batch.append((rid, n))
        if len(batch) >= BATCH:
            db.executemany("INSERT INTO ids VALUES (?, ?)", batch)
            batch.clear()
    db.executemany("INSERT INTO ids VALUES (?, ?)", batch)
    return replicas


def _duplicates(db: sqlite3.Connection, paths: Sequence[Path], out: SetVerification) -> None:
    """Each request id recorded more than once, in log order, up to MAX_PROBLEMS problems in all."""
    rows = db.execute(
        "SELECT id, log FROM ids WHERE id IN (SELECT id FROM ids GROUP BY id HAVING count(*) > 1)"
        " ORDER BY id, log, rowid"
    )
    first: tuple[str, int] | None = None
    for rid, log in rows:
        if first is None or first[0] != rid:
            first = (rid, log)
            continue
        where = "twice in this log" if first[1] == log else f"also in {paths[first[1]]}"
        out.problems.append(f"{paths[log]}: request {rid} recorded {where}")
        if len(out.problems) >= MAX_PROBLEMS:
            out.problems.append(f"... (stopped after {MAX_PROBLEMS} problems)")
            return
