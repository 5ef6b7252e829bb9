"""The hash-chained audit log: appends, restarts, and `localroute audit verify` on good and damaged logs
(run as the real CLI, as an operator would)."""

from __future__ import annotations

import json
import logging
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from localroute.privacy.audit import GENESIS, AuditLog, record_hash, verify
from tests.conftest import ROOT

LOCAL_OK = {"model": "smollm2-135m", "outcome": "ok", "reason": None, "ms": 12.5, "remote": False}
LOCAL_UNSURE = {"model": "smollm2-135m", "outcome": "escalated", "reason": "low_confidence", "ms": 9.0,
                "remote": False}  # fmt: skip
REMOTE_OK = {"model": "frontier", "outcome": "ok", "reason": None, "ms": 80.0, "remote": True}
REMOTE_ERROR = {"model": "frontier", "outcome": "error", "reason": "remote_unavailable", "ms": 5.0,
                "remote": True}  # fmt: skip
REMOTE_REFUSED = {"model": "frontier", "outcome": "refused", "reason": "private_request_unservable",
                  "ms": 0.1, "remote": True}  # fmt: skip


def record(
    n: int, cls: str = "public", reason: str = "public-default", attempts: Any = (LOCAL_OK,)
) -> dict[str, Any]:
    return {
        "ts": f"2026-01-01T00:00:{n:02d}.000+00:00",
        "id": f"req-{n:020d}",
        "privacy": {"class": cls, "reason": reason, "kinds": []},
        "status": 200,
        "error": None,
        "latency_ms": 10.0 + n,
        "attempts": list(attempts),
        "tokens": {"prompt": 10, "completion": 5},
    }


# Two public records (one answered remotely), two private ones answered locally (one with a remote
# rung refused by the egress guard), one public escalation.
GOOD = [
    record(1),
    record(2, attempts=(LOCAL_UNSURE, REMOTE_OK)),
    record(3, "private", "header"),
    record(4, "private", "pii", attempts=(LOCAL_OK, REMOTE_REFUSED)),
    record(5, attempts=(REMOTE_OK,)),
]


def write_log(path: Path, records: list[dict[str, Any]]) -> list[str]:
    log = AuditLog(path)
    hashes = [log.append(r) for r in records]
    log.close()
    return hashes


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines(keepends=True)


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "LOCALROUTE_AUDIT_PATH"}
    return subprocess.run(
        [sys.executable, "-m", "localroute", "audit", "verify", *args],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=60, check=False,
    )  # fmt: skip


def counts(out: str) -> tuple[int, int, int]:
    """(checked, private, private that touched a remote rung) from the report."""
    got = {}
    for line in out.splitlines():
        label, _, value = line.rpartition(": ")
        if value.isdigit():
            got[label] = int(value)
    return (
        got["records checked"],
        got["private records"],
        got["private records that touched a remote rung"],
    )


# -- writing ----------------------------------------------------------------------------------------------


def test_records_are_chained(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "audit.jsonl"
    hashes = write_log(path, GOOD)
    recs = [json.loads(line) for line in lines(path)]
    assert len(recs) == len(GOOD) and all(line.endswith("\n") for line in lines(path))
    assert [r["prev"] for r in recs] == [GENESIS, *hashes[:-1]]
    assert [r["hash"] for r in recs] == hashes == [record_hash(r) for r in recs]
    assert [{k: v for k, v in r.items() if k not in ("prev", "hash")} for r in recs] == GOOD
    assert stat.S_IMODE(path.stat().st_mode) == 0o600  # the log is the operator's alone
    v = verify(path)
    assert v.ok and (v.records, v.private, v.private_remote, v.broken_at) == (5, 2, 0, None)


def test_each_record_is_on_disk_as_soon_as_it_is_appended(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path)
    try:
        for n in range(1, 4):
            log.append(record(n))
            assert len(lines(path)) == n  # flushed per record, not when closed
    finally:
        log.close()


def test_a_restart_continues_the_chain(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    before = write_log(path, GOOD[:2])
    after = write_log(path, GOOD[2:])  # a new process opens the same file
    recs = [json.loads(line) for line in lines(path)]
    assert recs[2]["prev"] == before[-1]
    assert [r["hash"] for r in recs] == before + after
    v = verify(path)
    assert v.ok and v.records == 5


def test_a_restart_after_a_torn_tail_drops_it_and_continues(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "audit.jsonl"
    hashes = write_log(path, GOOD[:3])
    text = path.read_text()
    path.write_text(text[: len(text) - len(lines(path)[-1]) // 2])  # a crash in the middle of a write
    torn = verify(path)
    assert torn.ok and torn.torn_tail_at == 3 and torn.records == 2
    with caplog.at_level(logging.WARNING, logger="localroute.audit"):
        write_log(path, GOOD[3:4])
    assert "torn" in caplog.text
    recs = [json.loads(line) for line in lines(path)]  # every line is whole again
    assert len(recs) == 3 and recs[2]["prev"] == hashes[1]  # the chain goes on from the last whole record
    v = verify(path)
    assert v.ok and v.records == 3


# -- verify, through the CLI ------------------------------------------------------------------------------


def test_verify_a_good_log(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    write_log(path, GOOD)
    done = cli(str(path))
    assert done.returncode == 0, done.stdout + done.stderr
    assert counts(done.stdout) == (5, 2, 0)
    assert "chain intact" in done.stdout and done.stderr == ""


def test_verify_an_empty_log(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    path.touch()
    done = cli(str(path))
    assert done.returncode == 0 and counts(done.stdout) == (0, 0, 0)


def tamper(path: Path, index: int, **changes: Any) -> None:
    """Change fields of one record in place, keeping it valid JSON (and its stale hash)."""
    all_lines = lines(path)
    rec = json.loads(all_lines[index])
    rec.update(changes)
    all_lines[index] = json.dumps(rec, sort_keys=True, separators=(",", ":")) + "\n"
    path.write_text("".join(all_lines))


@pytest.mark.parametrize(
    ("index", "changes"),
    [
        (2, {"status": 500}),
        (2, {"privacy": {"class": "public", "reason": "public-default", "kinds": []}}),  # hide a private one
        (1, {"attempts": [LOCAL_OK]}),  # hide a remote attempt
        (4, {"latency_ms": 1.0}),  # the last record
    ],
    ids=["middle-status", "middle-privacy", "attempts", "last"],
)
def test_verify_finds_an_edited_record(tmp_path: Path, index: int, changes: dict[str, Any]) -> None:
    path = tmp_path / "audit.jsonl"
    write_log(path, GOOD)
    tamper(path, index, **changes)
    done = cli(str(path))
    assert done.returncode == 1, done.stdout
    assert f"chain BROKEN at line {index + 1}:" in done.stdout and "edited" in done.stdout
    assert counts(done.stdout)[0] == index  # the records before it were checked


def test_verify_finds_an_edited_record_whose_hash_was_recomputed(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    write_log(path, GOOD)
    rec = json.loads(lines(path)[2])
    rec["privacy"]["class"] = "public"
    rec["hash"] = record_hash(rec)
    tamper(path, 2, **rec)
    done = cli(str(path))
    assert done.returncode == 1
    assert "chain BROKEN at line 4:" in done.stdout  # the next record no longer follows it


@pytest.mark.parametrize("index", [0, 2, 3], ids=["first", "middle", "before-last"])
def test_verify_finds_a_deleted_record(tmp_path: Path, index: int) -> None:
    path = tmp_path / "audit.jsonl"
    write_log(path, GOOD)
    all_lines = lines(path)
    del all_lines[index]
    path.write_text("".join(all_lines))
    done = cli(str(path))
    assert done.returncode == 1, done.stdout
    assert f"chain BROKEN at line {index + 1}:" in done.stdout and "deleted" in done.stdout


def test_verify_finds_reordered_records(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    write_log(path, GOOD)
    all_lines = lines(path)
    all_lines[1], all_lines[2] = all_lines[2], all_lines[1]
    path.write_text("".join(all_lines))
    done = cli(str(path))
    assert done.returncode == 1 and "chain BROKEN at line 2:" in done.stdout


def test_verify_reports_a_torn_tail_as_a_crash_not_as_tampering(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    write_log(path, GOOD)
    text = path.read_text()
    cut = len(lines(path)[-1]) // 2
    path.write_text(text[: len(text) - cut])  # SIGKILL in the middle of the last write
    done = cli(str(path))
    assert done.returncode == 0, done.stdout  # a crash is not tampering
    assert "chain intact" in done.stdout and "BROKEN" not in done.stdout
    assert f"torn tail at line 5: {len(lines(path)[-1])} bytes without a line end" in done.stdout
    assert counts(done.stdout) == (4, 2, 0)  # every whole record before it was still checked
    assert "Traceback" not in done.stderr


def test_verify_still_fails_an_edit_before_a_torn_tail(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    write_log(path, GOOD)
    all_lines = lines(path)
    all_lines[1] = all_lines[1].replace('"status":200', '"status":201')
    all_lines[-1] = all_lines[-1][: len(all_lines[-1]) // 2]
    path.write_text("".join(all_lines))
    done = cli(str(path))
    assert done.returncode == 1, done.stdout
    assert "chain BROKEN at line 2: content does not match its hash (edited)" in done.stdout


@pytest.mark.parametrize(
    "tail",
    ["not a record", '{"id": "req-forged", "prev": "x", "hash": "y"}'],
    ids=["junk", "whole-record-off-chain"],
)
def test_a_last_line_without_line_end_that_is_not_a_cut_record_breaks_the_chain(
    tmp_path: Path, tail: str
) -> None:
    path = tmp_path / "audit.jsonl"
    write_log(path, GOOD)
    path.write_text(path.read_text() + tail)  # appended by hand, not cut by a crash
    done = cli(str(path))
    assert done.returncode == 1, done.stdout
    assert "chain BROKEN at line 6:" in done.stdout and "torn tail" not in done.stdout


def test_verify_finds_a_line_that_is_not_a_record(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    write_log(path, GOOD)
    all_lines = lines(path)
    all_lines.insert(2, "not json\n")
    path.write_text("".join(all_lines))
    done = cli(str(path))
    assert done.returncode == 1 and "chain BROKEN at line 3: not valid JSON" in done.stdout


@pytest.mark.parametrize(
    ("attempts", "touched"),
    [
        ((LOCAL_UNSURE, REMOTE_OK), 1),
        ((REMOTE_ERROR,), 1),  # sent, and failed: it left the machine all the same
        ((LOCAL_OK, REMOTE_REFUSED), 0),  # the egress guard stopped it: nothing was sent
    ],
    ids=["remote-ok", "remote-error", "remote-refused"],
)
def test_verify_counts_private_records_that_touched_a_remote_rung(
    tmp_path: Path, attempts: tuple[dict[str, Any], ...], touched: int
) -> None:
    path = tmp_path / "audit.jsonl"
    write_log(path, [*GOOD[:3], record(9, "private", "key", attempts=attempts), *GOOD[3:]])
    done = cli(str(path))
    assert counts(done.stdout) == (6, 3, touched)
    assert "chain intact" in done.stdout  # the chain is fine: the leak itself fails the check
    assert done.returncode == (1 if touched else 0), done.stdout


def test_verify_a_missing_file(tmp_path: Path) -> None:
    done = cli(str(tmp_path / "nope.jsonl"))
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.count("\n") == 1 and "no audit log at" in done.stderr
    assert "Traceback" not in done.stderr


def test_verify_defaults_to_the_configured_path(tmp_path: Path) -> None:
    (tmp_path / "models.toml").write_text(
        '[[models]]\nname = "frontier"\nengine = "remote"\nbase_url = "http://127.0.0.1:9/v1"\n'
        'model = "m"\n\n[privacy]\naudit_path = "logs/audit.jsonl"\n'
    )
    write_log(tmp_path / "logs" / "audit.jsonl", GOOD[:3])
    done = cli("--config", str(tmp_path / "models.toml"))
    assert done.returncode == 0, done.stdout + done.stderr
    assert counts(done.stdout) == (3, 1, 0)
