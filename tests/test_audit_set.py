"""`localroute audit verify LOG...` across logs: request ids recorded twice are found with bounded memory
(a temporary SQLite file sorts them on disk), however many records the logs hold."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

from localroute.privacy.audit_set import verify_set

RECORDS = 100_000  # per log: as a dict of ids, these alone take well over 10 MB of Python objects


def write_log(path: Path, replica: str, ids: list[str]) -> None:
    with path.open("w") as fh:
        for rid in ids:
            fh.write(json.dumps({"id": rid, "replica": replica}) + "\n")


def test_duplicates_across_and_within_logs_are_found_in_bounded_memory(tmp_path: Path) -> None:
    a, b = tmp_path / "audit.gw-a.jsonl", tmp_path / "audit.gw-b.jsonl"
    ids_a = [f"req-a{i:019d}" for i in range(RECORDS)]
    ids_b = [f"req-b{i:019d}" for i in range(RECORDS)]
    ids_b[500] = ids_a[77]  # copied from the other replica's log
    ids_b[900] = ids_b[10]  # written twice by one replica
    write_log(a, "gw-a", ids_a)
    write_log(b, "gw-b", ids_b)
    del ids_a, ids_b
    tracemalloc.start()
    try:
        result = verify_set([a, b])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert sorted(result.problems) == sorted([
        f"{b}: request req-a{77:019d} recorded also in {a}",
        f"{b}: request req-b{10:019d} recorded twice in this log",
    ])  # fmt: skip
    assert peak < 4 * 2**20, peak  # Python's share: no id set held in memory (the ids alone: >10 MB)


def test_problems_stop_after_twenty(tmp_path: Path) -> None:
    ids = [f"req-{i:020d}" for i in range(30)]
    write_log(tmp_path / "audit.x.jsonl", "x", ids)
    write_log(tmp_path / "audit.y.jsonl", "y", ids)
    result = verify_set([tmp_path / "audit.x.jsonl", tmp_path / "audit.y.jsonl"])
    assert len(result.problems) == 21 and result.problems[-1] == "... (stopped after 20 problems)"
    assert not result.ok
