"""`localroute status`: a running gateway's /health as a table a person can read."""

from __future__ import annotations

from typing import Any


def _cell(value: object, suffix: str = "") -> str:
    return "-" if value is None else f"{value}{suffix}"


def format_status(health: dict[str, Any], url: str) -> str:
    """A running gateway's /health as a table a person can read."""
    lines = [f"localroute at {url}: {health.get('status', '?')}"]
    res = health.get("resources")
    if isinstance(res, dict):
        gpus = res.get("gpus") or []
        gpu = ", ".join(f"{g['name']} ({g['free_mib']}/{g['total_mib']} MiB free)" for g in gpus) or "none"
        lines += [
            f"RAM {res['ram_available_mib']} of {res['ram_total_mib']} MiB available; "
            f"disk {res['disk_free_mib']} MiB free; GPUs: {gpu}",
            f"memory budget {res['budget_mib']} MiB ({res['memory_budget']}), "
            f"{res['reserved_mib']} MiB reserved by loaded models; on_over_budget = {res['on_over_budget']}; "
            f"{res['evictions']} eviction(s)",
        ]
    head = ("MODEL", "ENGINE", "STATE", "PID", "RSS MiB", "EST MiB", "LAST USE", "LOAD s", "SERVED")
    rows = [head]
    for name, e in (health.get("engines") or {}).items():
        ago = e.get("last_used_s_ago")
        rows.append((
            name, _cell(e.get("engine")), _cell(e.get("state")), _cell(e.get("pid")),
            _cell(e.get("rss_mib")), _cell(e.get("estimated_mib")),
            "never" if ago is None and "last_used_s_ago" in e else _cell(ago, "s ago"),
            _cell(e.get("load_seconds")), _cell(e.get("served")),
        ))  # fmt: skip
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(head))]
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    for name, e in (health.get("engines") or {}).items():  # a rung served by engine servers elsewhere
        for ep in e.get("endpoints") or []:
            trust = {True: "trusted", False: "untrusted"}.get(ep.get("trusted"), "not reached yet")
            lines.append(
                f"  {name} -> {ep['url']}: {ep['state']}, circuit {ep['circuit']}, {ep['outstanding']} "
                f"outstanding, {ep['served']} served, {ep['failures']} failures, peer {ep['peer']} ({trust})"
            )
    return "\n".join(lines)
