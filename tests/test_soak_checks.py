"""The soak's verdicts (bench/soak_checks.py) on made-up outcomes and records: each check can fail."""

from __future__ import annotations

from typing import Any

from bench.soak_checks import Sample, accounting, privacy, statuses, steady
from bench.soak_traffic import Outcome


def rec(rid: str, status: int = 200, cls: str = "public", attempts: Any = ()) -> dict[str, Any]:
    return {"id": rid, "status": status, "privacy": {"class": cls}, "attempts": list(attempts)}


def test_every_answered_request_with_one_record_passes() -> None:
    outs = [
        Outcome("chat_local", False, status=200, rid="a"),
        Outcome("chat_local", False, status=429, rid="b"),
    ]
    acc = accounting(outs, [rec("a"), rec("b", 429)])
    assert acc["missing_count"] == 0 and not acc["duplicates"] and not acc["status_mismatch"]


def test_a_missing_a_duplicated_and_a_mismatched_record_are_found() -> None:
    outs = [Outcome("chat_local", False, status=200, rid=r) for r in "ab"]
    outs.append(Outcome("chat_local", False, status=503, rid="c"))
    acc = accounting(outs, [rec("b"), rec("b"), rec("c", 502)])
    assert acc["missing"] == ["a"] and acc["duplicates"] == ["b"] and acc["status_mismatch"] == ["c"]


def test_a_stream_left_before_the_kill_may_go_unrecorded_but_not_after_it() -> None:
    before = Outcome("leave_local", False, fate="left", status=200, rid="x", gen=0)
    after = Outcome("leave_local", False, fate="left", status=200, rid="y", gen=1)
    acc = accounting([before, after], [])
    assert acc["left_before_the_kill_unrecorded"] == 1 and acc["missing"] == ["y"]


def test_only_503_and_504_are_documented_5xx() -> None:
    outs = [Outcome("chat_local", False, status=s, rid=str(s)) for s in (503, 504, 502)]
    st = statuses(outs, [rec("500", 500)])
    assert st["undocumented_5xx_count"] == 2


def test_a_private_record_that_reached_the_remote_rung_is_found() -> None:
    sent = {"remote": True, "outcome": "error"}
    refused = {"remote": True, "outcome": "refused"}
    pv = privacy(
        [], [rec("a", cls="private", attempts=[sent]), rec("b", cls="private", attempts=[refused])], 0, 1
    )
    assert pv["private_records_touching_remote"] == ["a"]


def test_growth_past_the_tolerance_is_not_flat() -> None:
    flat = [Sample(t, 1, 1, 100_000, 20) for t in range(30)]
    assert steady(flat) is not None and steady(flat)["flat"]  # type: ignore[index]
    leaking = [Sample(t, 1, 1, 100_000 + t * 2_000, 20 + t) for t in range(30)]
    assert not steady(leaking)["flat"]  # type: ignore[index]
