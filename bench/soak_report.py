"""The soak's summary: every check with its verdict and figures, as JSON and as lines a person reads."""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING, Any

from bench.soak_checks import (
    FD_SLACK,
    RSS_GROWTH,
    RSS_SLACK_KIB,
    Sample,
    accounting,
    privacy,
    read_audit,
    statuses,
    steady,
)

if TYPE_CHECKING:
    from bench.soak import Soak


def longest_incarnation(samples: list[Sample]) -> list[Sample]:
    by_pid: dict[int, list[Sample]] = defaultdict(list)
    for s in samples:
        by_pid[s.pid].append(s)
    return max(by_pid.values(), key=len, default=[])


def summarize(soak: Soak, final: dict[str, Any], canary: int, provider_requests: int) -> dict[str, Any]:
    outcomes, ev, idle = soak.traffic.outcomes, soak.events, soak.idle
    records = read_audit(soak.audit)
    acc = accounting(outcomes, records)
    st = statuses(outcomes, records)
    pv = privacy(outcomes, records, canary, provider_requests)
    gw_steady = steady([s for s in soak.gw_samples if s.gen == 1])
    worker_steady = steady(longest_incarnation(soak.worker_samples))
    at_kill = ev.get("verify_at_kill") or {"rc": None, "report": []}
    torn = [line for line in at_kill["report"] if line.startswith("torn tail")]
    start, end = idle.get("gen1_start") or {}, idle.get("gen1_end") or {}
    restarts = (ev.get("gen1_health_end") or {}).get("restarts", 0)
    gen0_tasks = (idle.get("gen0_start") or {}).get("tasks")
    peak = max(soak.tasks_seen, default=0)
    kills, final_status = ev["worker_kills"], ev.get("final_request_status")
    one_record = (
        acc["missing_count"] == 0
        and not acc["duplicates"]
        and not acc["status_mismatch"]
        and acc["records_unseen_by_client"] <= acc["cut_by_gateway_kill"]
    )
    stayed = not pv["private_records_touching_remote"] and canary == 0 and not acc["private_misclassified"]
    checks: list[tuple[str, bool, str]] = [
        ("no undocumented 5xx", st["undocumented_5xx_count"] == 0,
         f"{st['undocumented_5xx_count']} (documented: 503, 504) {st['undocumented_5xx']}"),
        ("errors in the API's shape", not st["error_bodies_without_shape"],
         str(st["error_bodies_without_shape"])),
        ("bad inputs get a 4xx", not st["bad_inputs_not_4xx"], str(st["bad_inputs_not_4xx"])),
        ("no transport error without a kill", st["transport_errors_unexplained"] == 0,
         str(st["transport_errors_unexplained"])),
        ("one audit record per answered request", one_record,
         f"{acc['answered_with_id']} answered + {acc['left_mid_stream']} left, {acc['missing_count']} "
         f"missing, {len(acc['duplicates'])} duplicated, {len(acc['status_mismatch'])} status mismatches, "
         f"{acc['records_unseen_by_client']} records the client never saw (<= "
         f"{acc['cut_by_gateway_kill']} cut by the kill)"),
        ("audit verify after the kill",
         at_kill["rc"] == 0 and bool(torn) == bool(ev.get("torn_tail_dropped_on_restart")),
         f"rc {at_kill['rc']}; {torn[0] if torn else 'no torn tail (the kill fell between writes)'}; "
         f"dropped on restart: {ev.get('torn_tail_dropped_on_restart')}"),
        ("audit verify at the end", final["rc"] == 0 and "chain intact" in final["report"],
         f"rc {final['rc']}; {'; '.join(final['report'])}"),
        ("private requests stayed local", stayed,
         f"{pv['private_records']} private records, {len(pv['private_records_touching_remote'])} touched "
         f"the remote rung, canary seen {canary} times, {len(acc['private_misclassified'])} not "
         "classified private"),
        ("the tripwire was live", provider_requests > 0 and pv["private_records"] > 0,
         f"the provider saw {provider_requests} requests"),
        ("gateway RSS and fds flat", bool(gw_steady and gw_steady["flat"]), str(gw_steady)),
        ("worker RSS and fds flat", worker_steady is None or bool(worker_steady["flat"]),
         str(worker_steady or "no incarnation lived 6 samples")),
        ("gateway fds at rest",
         (end.get("gateway_fds") or 0) <= (start.get("gateway_fds") or 0) + FD_SLACK,
         f"{start.get('gateway_fds')} after the restart -> {end.get('gateway_fds')} at the end"),
        ("no asyncio task left behind", end.get("tasks", 1 << 30) <= start.get("tasks", -1),
         f"{start.get('tasks')} at rest after the restart -> {end.get('tasks')} at rest at the end "
         f"(first start: {gen0_tasks}, peak under load {peak})"),
        ("workers killed and restarted",
         sum(kills) > 0 and restarts >= kills[1] and final_status == 200,
         f"{kills} kills (before, after the gateway restart), {restarts} restarts after it, "
         f"final request {final_status}"),
        ("gateway killed once, no orphan, clean stop",
         ev.get("orphans_after_kill") == [] and ev.get("gateway_exit") == 0,
         f"orphans {ev.get('orphans_after_kill')}, exit {ev.get('gateway_exit')}"),
        ("no traceback or unhandled error in the gateway logs", not _log_findings(soak),
         str(_log_findings(soak)[:5])),
    ]  # fmt: skip
    passed = all(ok for _, ok, _ in checks)
    lines = [
        f"soak: {soak.duration / 60:g} min, {len(outcomes)} requests, {ev['flaps']} provider flaps, "
        f"{sum(ev['worker_kills'])} worker kills, 1 gateway kill: {'PASSED' if passed else 'FAILED'}",
        *(f"  [{'ok' if ok else 'FAIL'}] {name}: {detail}" for name, ok, detail in checks),
        f"  tolerance: RSS +{RSS_GROWTH:.0%} + {RSS_SLACK_KIB // 1024} MiB, fds +{FD_SLACK}",
    ]
    return {
        "passed": passed, "minutes": soak.duration / 60,
        "checks": [{"name": n, "ok": ok, "detail": d} for n, ok, d in checks],
        "accounting": acc, "statuses": st, "privacy": pv, "idle": idle, "events": ev,
        "gateway_steady": gw_steady, "worker_steady": worker_steady, "verify_final": final, "lines": lines,
    }  # fmt: skip


def _log_findings(soak: Soak) -> list[str]:
    found = []
    for log in sorted(soak.workdir.glob("gateway-*.log")):
        for line in log.read_text(errors="replace").splitlines():
            if "Traceback" in line or "unhandled" in line:
                found.append(f"{log.name}: {line[:200]}")
    return found
