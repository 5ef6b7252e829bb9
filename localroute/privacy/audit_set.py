"""Several audit logs judged together: one per gateway replica, each its own hash chain.

Each log is verified on its own (`audit.verify`); across logs, a request id recorded twice, a log
that holds records of two replicas, or two logs claiming one replica are problems too: they mean
records were copied, merged by hand or written by misconfigured replicas.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from localroute.privacy.audit import Verification, verify


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


def _ids(path: Path) -> tuple[list[str], set[str]]:
    """Request ids and replica ids of a log's whole records (a torn or bad line is verify's matter)."""
    ids: list[str] = []
    replicas: set[str] = set()
    with path.open("rb") as fh:
        for raw in fh:
            try:
                rec = json.loads(raw)
            except ValueError:
                continue
            if isinstance(rec, dict):
                if isinstance(rec.get("id"), str):
                    ids.append(rec["id"])
                replicas.add(str(rec.get("replica") or ""))
    return ids, replicas


def verify_set(paths: Sequence[Path]) -> SetVerification:
    out = SetVerification()
    seen: dict[str, Path] = {}
    owner: dict[str, Path] = {}
    for path in paths:
        out.logs.append((path, verify(path)))
        ids, replicas = _ids(path)
        if len(replicas) > 1:
            names = ", ".join(sorted(r or "(none)" for r in replicas))
            out.problems.append(f"{path}: records of several replicas in one log ({names})")
        for r in replicas:
            if r and r in owner:
                out.problems.append(f"{path}: replica {r!r} also writes {owner[r]}")
            if r:
                owner.setdefault(r, path)
        for rid in ids:
            if rid in seen:
                where = "twice in this log" if seen[rid] == path else f"also in {seen[rid]}"
                out.problems.append(f"{path}: request {rid} recorded {where}")
                if len(out.problems) >= 20:
                    out.problems.append("... (stopped after 20 problems)")
                    return out
            seen[rid] = path
    return out
