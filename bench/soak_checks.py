"""The soak's verdicts: status codes, one audit record per answered request, privacy, and leaks.

Every check is a count or a comparison of counts; none depends on how fast the box is.
"""

from __future__ import annotations

import json
import os
import statistics
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.soak_traffic import BAD_KINDS, PRIVATE_KINDS, Outcome

# 5xx the docs promise (docs/engines.md, docs/privacy.md, docs/security.md, errors.py): 503 for an
# engine or provider that is down, crashed or refused a private request; 504 for the total deadline.
DOCUMENTED_5XX = frozenset({503, 504})
# Steady state is "flat" when the end is within this of the start: RSS may grow by 10 % + 8 MiB
# (allocator noise), file descriptors by 8 (pooled keep-alive connections come and go).
RSS_GROWTH = 0.10
RSS_SLACK_KIB = 8 * 1024
FD_SLACK = 8


def rss_kib(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def fd_count(pid: int) -> int | None:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


@dataclass
class Sample:
    t: float
    gen: int  # which gateway process (0 before the kill, 1 after the restart)
    pid: int
    rss_kib: int
    fds: int


def steady(samples: list[Sample]) -> dict[str, Any] | None:
    """Start vs end of a process's steady state: the first 20 % is warm-up, then the median of the
    first third of the rest is compared with the median of its last third."""
    if len(samples) < 6:
        return None
    rest = samples[len(samples) // 5 :]
    third = max(1, len(rest) // 3)
    start, end = rest[:third], rest[-third:]
    rss0 = statistics.median(s.rss_kib for s in start)
    rss1 = statistics.median(s.rss_kib for s in end)
    fd0 = statistics.median(s.fds for s in start)
    fd1 = statistics.median(s.fds for s in end)
    return {
        "samples": len(samples), "rss_start_mib": round(rss0 / 1024, 1), "rss_end_mib": round(rss1 / 1024, 1),
        "fds_start": fd0, "fds_end": fd1,
        "flat": rss1 <= rss0 * (1 + RSS_GROWTH) + RSS_SLACK_KIB and fd1 <= fd0 + FD_SLACK,
    }  # fmt: skip


def read_audit(path: Path) -> list[dict[str, Any]]:
    """Whole records only (a torn tail, if any, is verify's business)."""
    out = []
    for raw in path.read_bytes().splitlines(keepends=True):
        if raw.endswith(b"\n"):
            out.append(json.loads(raw))
    return out


def accounting(outcomes: list[Outcome], records: list[dict[str, Any]]) -> dict[str, Any]:
    """Match the client's requests with the audit log by request id."""
    by_id = Counter(r["id"] for r in records)
    max_gen = max((o.gen for o in outcomes), default=0)
    rec_of = {r["id"]: r for r in records}
    seen = {o.rid for o in outcomes if o.rid}
    answered = [o for o in outcomes if o.fate == "answered" and o.rid]
    left = [o for o in outcomes if o.fate == "left" and o.rid]
    cut = [o for o in outcomes if o.fate == "cut"]
    # A client that hung up is noticed at the gateway's next send: a kill before that leaves no record.
    left_unnoticed = [o.rid for o in left if by_id[o.rid] == 0 and o.gen < max_gen]
    missing = [o.rid for o in answered + left if by_id[o.rid] == 0 and o.rid not in left_unnoticed]
    dupes = [rid for rid, n in by_id.items() if n > 1]
    # The gateway writes a non-streamed answer's record just before sending it: a kill in between
    # leaves a record the client never saw the id of. Only a kill can explain one.
    unseen = [rid for rid in by_id if rid not in seen]
    wrong_status = [
        o.rid for o in answered
        if o.rid in rec_of and not o.stream_error and o.status != 200 and rec_of[o.rid]["status"] != o.status
    ]  # fmt: skip
    left_statuses = Counter(rec_of[o.rid]["status"] for o in left if o.rid in rec_of)
    private_misclassified = [
        o.rid
        for o in answered
        if o.private and o.rid in rec_of and rec_of[o.rid]["privacy"]["class"] != "private"
    ]
    return {
        "requests": len(outcomes), "answered_with_id": len(answered), "answered_without_id": sum(
            1 for o in outcomes if o.fate == "answered" and not o.rid),
        "left_mid_stream": len(left), "left_statuses": dict(left_statuses),
        "left_before_the_kill_unrecorded": len(left_unnoticed), "cut_by_gateway_kill": len(cut),
        "cut_with_id": sum(1 for o in cut if o.rid), "records": len(records),
        "missing": missing[:20], "missing_count": len(missing), "duplicates": dupes[:20],
        "records_unseen_by_client": len(unseen), "status_mismatch": wrong_status[:20],
        "private_misclassified": private_misclassified[:20],
    }  # fmt: skip


def statuses(outcomes: list[Outcome], records: list[dict[str, Any]]) -> dict[str, Any]:
    """Every status the clients and the audit log saw; which 5xx and which error bodies break the rules."""
    by_kind: dict[str, Counter[str]] = {}
    for o in outcomes:
        label = (
            o.fate
            if o.status is None
            else f"{o.status}{'+stream_error:' + str(o.code) if o.stream_error else ''}"
        )
        by_kind.setdefault(o.kind, Counter())[label] += 1
    bad_5xx = [
        f"{o.kind}:{o.status}:{o.code}"
        for o in outcomes
        if o.status and o.status >= 500 and o.status not in DOCUMENTED_5XX
    ]
    bad_5xx += [f"audit:{r['id']}:{r['status']}:{r.get('error')}" for r in records
                if r["status"] >= 500 and r["status"] not in DOCUMENTED_5XX]  # fmt: skip
    shapeless = [f"{o.kind}:{o.status}" for o in outcomes if o.status and o.status >= 400 and not o.shaped]
    # A bad input gets a 4xx; anything else (a 200, a 5xx) means the edge let it through.
    bad_input_not_4xx = [
        f"{o.kind}:{o.status}" for o in outcomes
        if o.kind in BAD_KINDS and o.fate == "answered" and not (o.status and 400 <= o.status < 500)
    ]  # fmt: skip
    return {
        "by_kind": {k: dict(v) for k, v in sorted(by_kind.items())},
        "undocumented_5xx": bad_5xx[:20], "undocumented_5xx_count": len(bad_5xx),
        "error_bodies_without_shape": shapeless[:20], "bad_inputs_not_4xx": bad_input_not_4xx[:20],
        "transport_errors_unexplained": sum(1 for o in outcomes if o.fate == "transport_error"),
    }  # fmt: skip


def privacy(
    outcomes: list[Outcome], records: list[dict[str, Any]], canary_hits: int, remote_seen: int
) -> dict[str, Any]:
    """Private requests stayed local: no private record tried a remote rung (a refusal by the guard
    sends nothing), and the provider never saw the canary that only private requests carry."""
    private_records = [r for r in records if (r.get("privacy") or {}).get("class") == "private"]
    touched = [
        r["id"] for r in private_records
        if any(a.get("remote") and a.get("outcome") != "refused" for a in r.get("attempts") or ())
    ]  # fmt: skip
    return {
        "private_sent": sum(1 for o in outcomes if o.kind in PRIVATE_KINDS),
        "private_records": len(private_records), "private_records_touching_remote": touched[:20],
        "canary_seen_by_provider": canary_hits, "provider_requests": remote_seen,
    }  # fmt: skip
