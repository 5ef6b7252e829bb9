"""`localroute report`: the stats API's totals and per-model breakdown, read from an audit log, so it
works after the fact and on a log copied from another machine."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import cast

from localroute.observe.stats import summarize
from localroute.protocol.records import RequestRecord, Stats


def read_records(path: Path) -> Iterator[RequestRecord]:
    """Every whole record of an audit log; a torn last line (a crash mid-write) is skipped.
    `localroute audit verify` is the tool that judges the chain; a report only reads it. A record is
    not validated: one from an older log may lack fields, and `summarize` counts those as zero."""
    with path.open("rb") as fh:
        for raw in fh:
            if not raw.endswith(b"\n"):
                return
            try:
                rec = json.loads(raw)
            except ValueError:
                continue
            if isinstance(rec, dict):
                yield cast(RequestRecord, rec)


def build(paths: Path | Sequence[Path], since: datetime | None, now: datetime) -> Stats:
    """The summary of one log, or of several merged (one per gateway replica), in time order."""
    logs = [paths] if isinstance(paths, Path) else list(paths)
    return summarize(itertools.chain.from_iterable(read_records(p) for p in logs), since, now)


def _usd(x: float) -> str:
    return f"${x:,.6f}" if abs(x) < 1 else f"${x:,.2f}"


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{x:,.0f}"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f}%"


def _table(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]


def format_report(s: Stats) -> str:
    """The summary as text: totals, then one row per model that answered."""
    t = s["totals"]
    span = f"since {s['since']}" if s["since"] else "all records"
    lines = [
        f"localroute report ({span}, until {s['until']})",
        f"requests {t['requests']} (ok {t['ok']}, errors {t['errors']}); "
        f"served locally {t['local_share'] * 100:.1f}%; escalation rate {t['escalation_rate'] * 100:.1f}%",
        f"cost {_usd(t['cost_usd'])} vs baseline {_usd(t['baseline_usd'])}: saved {_usd(t['saved_usd'])} "
        f"({_pct(t['savings_pct'])})",
        f"latency p50 {_ms(t['latency_ms']['p50'])} ms, p95 {_ms(t['latency_ms']['p95'])} ms; "
        f"tokens {t['tokens']['prompt']} in / {t['tokens']['completion']} out",
    ]
    if s["escalations"]:
        lines.append("escalations: " + ", ".join(f"{k} {v}" for k, v in s["escalations"].items()))
    if s["models"]:
        head = "MODEL TIER WHERE REQUESTS ESCALATED COST BASELINE SAVED P50_ms P95_ms"
        rows: list[tuple[str, ...]] = [tuple(head.split())]
        for m in s["models"]:
            rows.append((
                m["model"], "-" if m["tier"] is None else str(m["tier"]), "local" if m["local"] else "remote",
                str(m["requests"]), str(m["escalated"]), _usd(m["cost_usd"]), _usd(m["baseline_usd"]),
                _pct(m["savings_pct"]), _ms(m["latency_ms"]["p50"]), _ms(m["latency_ms"]["p95"]),
            ))  # fmt: skip
        lines += ["", *_table(rows)]
    return "\n".join(lines)
